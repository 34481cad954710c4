"""Data pipelines for autogaze-jax.

Modules (numpy/PIL/PyAV only, no model code; `training.py` reads the training config):
  ops.py        clip ops: official frame sampling, padding, resize+center crop, normalised views,
                augmentation, repair/skip stat keys
  sources.py    `VideoFolderSource` (PyAV decode, counted bad-input handling, label join) and
                `ArrayRecordSource` (tfds.data_source, no TensorFlow); `decode_clip`
  labels.py     official `gazing_labels.json` read/write/validate; official and fixed-capacity collation
  synthetic.py  embedded default dataset (procedural mp4s, cached by parameter hash)
  pipeline.py   grain graph (host shard, per-epoch shuffle, batching, workers), checkpointable
                `DataIterator`, `make_source` by config string
  training.py   the trainer's input from `config.data`: source, toy labels, iterator, validation clip
  tfds_builder/ ArrayRecord builder (local or Apache Beam); CLI: `python -m launch.build_dataset`

Item (one clip) / batch formats are documented in `sources.py` and `pipeline.py`.
"""
