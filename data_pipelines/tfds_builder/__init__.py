"""tensorflow-datasets builder packing clips (+ optional gaze labels) into ArrayRecord shards.

Read back with `tfds.data_source("autogaze_videos", data_dir=OUT)` (no TensorFlow needed) or
`data_pipelines.sources.ArrayRecordSource(OUT)`. See `builder.py`.
"""
from data_pipelines.tfds_builder.builder import (DATASET_NAME, AutogazeVideos, NoReadableVideos, StaleDataset, build,
                                                  path_index_file, read_path_index)

__all__ = ["DATASET_NAME", "AutogazeVideos", "NoReadableVideos", "StaleDataset", "build", "path_index_file",
           "read_path_index"]
