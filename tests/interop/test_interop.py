"""Official checkpoint format: load, save, round trip, and clear errors on bad checkpoints."""
import json
import os
import shutil

import jax
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from autogaze_jax import AutoGaze
from autogaze_jax.interop.common import (CONV2D_OIHW, CheckpointError, layernorm_rows, params_to_tensors,
                                        tensors_to_params, torch_shapes, weight_bias_rows)
from tests.conftest import FIXTURES

TINY = os.path.join(FIXTURES, "gaze_tiny")


def _tensors(path):
  with safe_open(path, "np") as f:
    return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_load_save_load_bit_exact(tmp_path):
  a = AutoGaze.from_pretrained(TINY)
  a.save_pretrained(tmp_path)
  ref, ref_meta = _tensors(os.path.join(TINY, "model.safetensors"))
  got, meta = _tensors(os.path.join(tmp_path, "model.safetensors"))
  assert meta == ref_meta == {"format": "pt"}
  assert sorted(got) == sorted(ref)
  for k in ref:
    assert got[k].dtype == ref[k].dtype == np.float32 and got[k].shape == ref[k].shape, k
    np.testing.assert_array_equal(got[k], ref[k], err_msg=k)
  # safetensors lays tensors out deterministically, so the file is byte-identical to the official one.
  assert open(os.path.join(tmp_path, "model.safetensors"), "rb").read() == open(
      os.path.join(TINY, "model.safetensors"), "rb").read()
  assert json.load(open(tmp_path / "config.json")) == json.load(open(os.path.join(TINY, "config.json")))
  assert json.load(open(tmp_path / "preprocessor_config.json")) == json.load(
      open(os.path.join(TINY, "preprocessor_config.json")))
  b = AutoGaze.from_pretrained(tmp_path)
  for x, y in zip(jax_leaves(a.params), jax_leaves(b.params)):
    np.testing.assert_array_equal(x, y)


def jax_leaves(params):
  return [np.asarray(x) for x in jax.tree.leaves(params)]


def test_fresh_model_exports_official_names(tmp_path):
  cfg = AutoGaze.from_pretrained(TINY).cfg.replace(raw_json="")
  m = AutoGaze(cfg, seed=1)
  m.save_pretrained(tmp_path)
  got, meta = _tensors(os.path.join(tmp_path, "model.safetensors"))
  ref, _ = _tensors(os.path.join(TINY, "model.safetensors"))
  assert meta == {"format": "pt"}
  assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in ref.items()}
  saved = json.load(open(tmp_path / "config.json"))
  official = json.load(open(os.path.join(TINY, "config.json")))
  # Every field that determines the architecture equals the official file's.
  for sub in ("vision_model_config", "connector_config"):
    for k in ("hidden_dim", "out_dim", "depth", "kernel_size", "num_tokens"):
      if k in official["gaze_model_config"][sub]:
        assert saved["gaze_model_config"][sub][k] == official["gaze_model_config"][sub][k], (sub, k)
  for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "head_dim", "intermediate_size",
            "vocab_size", "eos_token_id", "num_multi_token_pred", "rms_norm_eps", "rope_scaling", "rope_theta"):
    assert saved["gaze_model_config"]["gaze_decoder_config"][k] == official["gaze_model_config"]["gaze_decoder_config"][k], k
  assert saved["scales"] == official["scales"] and saved["model_type"] == "autogaze"


def _copy(tmp_path):
  d = tmp_path / "ckpt"
  shutil.copytree(TINY, d)
  os.chmod(d, 0o755)
  for f in os.listdir(d):
    os.chmod(d / f, 0o644)
  return d


def test_missing_config(tmp_path):
  d = _copy(tmp_path)
  os.remove(d / "config.json")
  with pytest.raises(CheckpointError, match="has no config.json"):
    AutoGaze.from_pretrained(d)


def test_missing_dir(tmp_path):
  with pytest.raises(CheckpointError, match="does not exist"):
    AutoGaze.from_pretrained(tmp_path / "nope")


def test_truncated_safetensors(tmp_path):
  d = _copy(tmp_path)
  data = open(d / "model.safetensors", "rb").read()
  open(d / "model.safetensors", "wb").write(data[: len(data) // 2])
  with pytest.raises(CheckpointError, match="truncated or corrupt"):
    AutoGaze.from_pretrained(d)


def test_missing_unknown_and_misshaped_tensors(tmp_path):
  d = _copy(tmp_path)
  t, meta = _tensors(d / "model.safetensors")
  name = "gazing_model.gaze_decoder.lm_head.weight"
  bad = dict(t)
  bad.pop(name)
  bad["gazing_model.extra.weight"] = np.zeros(3, np.float32)
  save_file(bad, d / "model.safetensors", metadata=meta)
  with pytest.raises(CheckpointError, match=r"missing \['gazing_model.gaze_decoder.lm_head.weight'\].*extra.weight"):
    AutoGaze.from_pretrained(d)
  bad = dict(t)
  bad[name] = np.zeros((7, 32), np.float32)
  save_file(bad, d / "model.safetensors", metadata=meta)
  with pytest.raises(CheckpointError, match=r"lm_head.weight has shape \(7, 32\).*\(2660, 32\)"):
    AutoGaze.from_pretrained(d)
  bad[name] = t[name].astype(np.float16)
  save_file(bad, d / "model.safetensors", metadata=meta)
  with pytest.raises(CheckpointError, match="lm_head.weight has dtype float16"):
    AutoGaze.from_pretrained(d)
  bad[name] = t[name].copy()
  bad[name][3, 5] = np.nan                                        # one corrupt value: named, never gazed with
  save_file(bad, d / "model.safetensors", metadata=meta)
  with pytest.raises(CheckpointError, match=r"lm_head.weight holds 1 non-finite values"):
    AutoGaze.from_pretrained(d)


def test_rejects_non_pt_metadata(tmp_path):
  d = _copy(tmp_path)
  t, _ = _tensors(d / "model.safetensors")
  save_file(t, d / "model.safetensors", metadata={"format": "flax"})
  with pytest.raises(CheckpointError, match="format 'flax'"):
    AutoGaze.from_pretrained(d)


def test_bad_config_value(tmp_path):
  d = _copy(tmp_path)
  cfg = json.load(open(d / "config.json"))
  cfg["gaze_model_config"]["connector_config"]["hidden_dim"] = 48
  json.dump(cfg, open(d / "config.json", "w"))
  with pytest.raises(CheckpointError, match="equal widths"):
    AutoGaze.from_pretrained(d)


@pytest.mark.parametrize("where,key,value,match", [
    ((), "max_num_frames", -1, r"max_num_frames = -1 is invalid: expected >= 1"),
    ((), "scales", 224, r"scales = \(224,\) is invalid: expected scales whose token counts"),
    ((), "scales", "0+224", r"scales = \(0, 224\) is invalid: expected positive sizes"),
])
def test_config_values_that_would_fail_later_fail_at_load(tmp_path, where, key, value, match):
  d = _copy(tmp_path)
  cfg = json.load(open(d / "config.json"))
  node = cfg
  for k in where:
    node = node[k]
  assert key in node
  node[key] = value
  json.dump(cfg, open(d / "config.json", "w"))
  with pytest.raises(CheckpointError, match=match):
    AutoGaze.from_pretrained(d)


def test_engine_round_trip_and_errors():
  """The shared table engine on a toy table: layouts both ways, and each kind of error it names."""
  table = weight_bias_rows("conv", ("conv",), CONV2D_OIHW) + layernorm_rows("ln", ("ln",))
  sds = lambda *shape: jax.ShapeDtypeStruct(shape, np.float32)  # noqa: E731
  ours = {"conv": {"kernel": sds(3, 3, 2, 4), "bias": sds(4)}, "ln": {"scale": sds(4), "bias": sds(4)}}
  shapes = torch_shapes(table, ours)
  assert shapes[("conv", "kernel")] == (4, 2, 3, 3)
  rng = np.random.default_rng(0)
  theirs = {n: rng.normal(size=shapes[p]).astype(np.float32) for n, p, _ in table}
  params = tensors_to_params(table, theirs, shapes, what="toy")
  np.testing.assert_array_equal(params["conv"]["kernel"], theirs["conv.weight"].transpose(2, 3, 1, 0))
  back = params_to_tensors(table, params, prefix="m.")
  assert list(back) == ["m." + n for n, _, _ in table]
  for n in theirs:
    np.testing.assert_array_equal(back["m." + n], theirs[n])
  with pytest.raises(CheckpointError, match=r"toy tensors .* missing \['m.ln.bias'\], unexpected \['m.x'\]!"):
    tensors_to_params(table, {**{k: v for k, v in theirs.items() if k != "ln.bias"}, "x": theirs["ln.bias"]}, shapes,
                      what="toy", prefix="m.", hint=lambda missing: "!" if missing == ["ln.bias"] else "")
  with pytest.raises(CheckpointError, match=r"tensor ln.bias has shape \(5,\), the config expects \(4,\)"):
    tensors_to_params(table, {**theirs, "ln.bias": np.zeros(5, np.float32)}, shapes, what="toy")
  half = {**theirs, "ln.bias": theirs["ln.bias"].astype(np.float16)}
  with pytest.raises(CheckpointError, match="ln.bias has dtype float16, expected float32"):
    tensors_to_params(table, half, shapes, what="toy")
  assert tensors_to_params(table, half, shapes, what="toy", any_float=True)["ln"]["bias"].dtype == np.float32
  with pytest.raises(CheckpointError, match="ln.bias has dtype int32, expected a float type"):
    tensors_to_params(table, {**theirs, "ln.bias": np.zeros(4, np.int32)}, shapes, what="toy", any_float=True)
