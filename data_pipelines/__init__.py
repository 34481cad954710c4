"""Data pipelines for autogaze-jax.

Modules (numpy/PIL/PyAV only, no model code, no JAX except `pipeline.to_global`/`normalize_on_device`):
  ops.py        clip ops: official frame sampling, padding, resize+center crop, normalised views,
                augmentation, repair/skip stat keys
  sources.py    `VideoFolderSource` (PyAV decode, counted bad-input handling, label join) and
                `ArrayRecordSource` (tfds.data_source, no TensorFlow); `decode_clip`
  labels.py     official `gazing_labels.json` read/write/validate; official and fixed-capacity collation
  synthetic.py  embedded default dataset (procedural mp4s, cached by parameter hash)
  pipeline.py   grain graph (host shard, per-epoch shuffle, batching, workers), checkpointable
                `DataIterator`, `to_global` device placement, `make_source` by config string
  tfds_builder/ ArrayRecord builder (local or Apache Beam); CLI: `python -m launch.build_dataset`

Item (one clip) / batch formats are documented in `sources.py` and `pipeline.py`.
"""
