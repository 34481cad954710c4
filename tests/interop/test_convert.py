"""The official judge checkpoint (`videomae.pt`): restricted torch-zip reader, conversion to a judge dir,
parity of every loss term with the official task (fixture `videomae_perceptual`), named errors."""
import collections
import functools
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from configs import grpo as grpo_cfg, videomae as mae_cfg
from tests.conftest import FIXTURES
from autogaze_jax.interop.common import CheckpointError, read_safetensors
from autogaze_jax.interop.torch_pickle import UnsafeCheckpointError, read_torch_state_dict
from autogaze_jax.interop.videomae import (PERCEPTUAL_CONFIG, TASK_OVERRIDES, convert_task_checkpoint)
from autogaze_jax.judge.load import JudgeTermsError, check_loss_terms, load_judge
from autogaze_jax.judge.losses import frame_losses, reconstruction_task
from autogaze_jax.judge.perceptual import features as perceptual_features, to_input as perceptual_to_input
from autogaze_jax.train.registry import ALGORITHMS
from autogaze_jax.train.state import ConfigError

DIR = os.path.join(FIXTURES, "videomae_perceptual")
PT = os.path.join(DIR, "videomae.pt")
TINY = os.path.join(FIXTURES, "videomae_tiny")
NETS = {"dinov2_reg": os.path.join(DIR, "dinov2_reg_tiny"), "siglip2": os.path.join(DIR, "siglip2_tiny")}
INDEX = json.load(open(os.path.join(DIR, "index.json")))


# ---------------------------------------------------------------- a torch.save writer for crafted files
class _Global:
  """A global the written pickle names (written as a GLOBAL opcode, never imported)."""

  def __init__(self, module, name):
    self.module, self.name = module, name

  def __call__(self, *args):   # the pickler wants a callable in a reduce tuple; never called
    raise AssertionError("not callable")


class _Storage:
  def __init__(self, key, stype, numel):
    self.pid = ("storage", _Global("torch", stype), key, "cpu", numel)


class _Tensor:
  def __init__(self, storage, offset, size, stride):
    self.args = (storage, offset, tuple(size), tuple(stride), False, collections.OrderedDict())

  def __reduce__(self):
    return _Global("torch._utils", "_rebuild_tensor_v2"), self.args


class _Writer(pickle._Pickler):   # the pure-python pickler: its dispatch table can take _Global
  dispatch = dict(pickle._Pickler.dispatch)
  dispatch[_Global] = lambda self, g: self.write(f"c{g.module}\n{g.name}\n".encode())

  def persistent_id(self, obj):
    return obj.pid if isinstance(obj, _Storage) else None


_STYPE = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage", np.dtype(np.float16): "HalfStorage"}


def write_pt(path, obj, records=(), root="archive", byteorder="little"):
  """A zip-format torch checkpoint of `obj` (may hold _Tensor/_Storage) with raw `records` {key: bytes}."""
  buf = io.BytesIO()
  _Writer(buf, protocol=2).dump(obj)
  with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
    zf.writestr(f"{root}/data.pkl", buf.getvalue())
    zf.writestr(f"{root}/byteorder", byteorder)
    for key, raw in dict(records).items():
      zf.writestr(f"{root}/data/{key}", raw)


def write_state_dict(path, tensors):
  """{name: contiguous numpy array} -> a torch.save-style file, one storage per tensor."""
  obj, records = collections.OrderedDict(), {}
  for i, (k, a) in enumerate(tensors.items()):
    a = np.ascontiguousarray(a)
    strides = tuple(s // a.itemsize for s in a.strides)
    obj[k] = _Tensor(_Storage(str(i), _STYPE[a.dtype], a.size), 0, a.shape, strides)
    records[str(i)] = a.tobytes()
  write_pt(path, obj, records)


# ---------------------------------------------------------------- reader
@functools.lru_cache(maxsize=None)
def _official():
  return read_torch_state_dict(PT)


def test_reader_reads_the_official_file_as_index_lists():
  t = _official()
  keys = INDEX["videomae_pt"]["keys"]
  assert len(t) == INDEX["videomae_pt"]["num_keys"] == 276
  assert [k for k, _, _ in keys] == list(t)                        # names, in state_dict order
  for k, shape, dtype in keys:
    assert list(t[k].shape) == shape and t[k].dtype.name == dtype, k
  # the same values as the source weights (bitwise)
  for prefix, path in (("module.mae.", os.path.join(TINY, "model.safetensors")),
                       ("module.mae.dinov2_reg.", os.path.join(NETS["dinov2_reg"], "model.safetensors")),
                       ("module.mae.siglip2.", os.path.join(NETS["siglip2"], "model.safetensors"))):
    for k, a in load_file(path).items():
      np.testing.assert_array_equal(t[prefix + k], a, err_msg=k)


def test_reader_strides_offsets_shared_storage_dtypes(tmp_path):
  base = np.arange(12, dtype=np.float32)
  ints = np.arange(5, dtype=np.int64) - 2
  st, si = _Storage("0", "FloatStorage", 12), _Storage("7", "LongStorage", 5)
  obj = collections.OrderedDict(
      whole=_Tensor(st, 0, (3, 4), (4, 1)),
      transposed=_Tensor(st, 0, (4, 3), (1, 4)),          # a non-contiguous view of the same storage
      tail=_Tensor(st, 6, (2, 3), (3, 1)),                 # storage offset
      scalar=_Tensor(st, 11, (), ()),
      empty=_Tensor(st, 0, (0, 4), (4, 1)),
      ints=_Tensor(si, 1, (3,), (1,)))
  write_pt(tmp_path / "a.pt", obj, {"0": base.tobytes(), "7": ints.tobytes()}, root="some_other_name")
  t = read_torch_state_dict(str(tmp_path / "a.pt"))
  np.testing.assert_array_equal(t["whole"], base.reshape(3, 4))
  np.testing.assert_array_equal(t["transposed"], base.reshape(3, 4).T)
  np.testing.assert_array_equal(t["tail"], base[6:].reshape(2, 3))
  assert t["scalar"].shape == () and t["scalar"] == 11 and t["empty"].shape == (0, 4)
  np.testing.assert_array_equal(t["ints"], ints[1:4])
  assert t["ints"].dtype == np.int64 and t["transposed"].flags.writeable and t["whole"].base is None
  # bfloat16 storages come back as float32, exactly
  bf = np.array([1.0, -2.5, 0.15625, 3.0e38], np.float32)
  write_pt(tmp_path / "bf.pt", {"x": _Tensor(_Storage("0", "BFloat16Storage", 4), 0, (4,), (1,))},
           {"0": (bf.view(np.uint32) >> 16).astype("<u2").tobytes()})
  got = read_torch_state_dict(str(tmp_path / "bf.pt"))["x"]
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, (bf.view(np.uint32) & 0xFFFF0000).view(np.float32))
  # big-endian archives
  write_pt(tmp_path / "b.pt", {"x": _Tensor(st, 0, (12,), (1,))}, {"0": base.astype(">f4").tobytes()},
           byteorder="big")
  np.testing.assert_array_equal(read_torch_state_dict(str(tmp_path / "b.pt"))["x"], base)


def test_reader_refuses_non_tensor_globals(tmp_path):
  marker = tmp_path / "pwned"

  class Evil:
    def __reduce__(self):
      return os.system, (f"touch {marker}",)

  path = tmp_path / "evil.pt"
  with zipfile.ZipFile(path, "w") as zf:            # a real pickle of os.system, protocol 2
    zf.writestr("evil/data.pkl", pickle.dumps({"w": Evil()}, protocol=2))
  with pytest.raises(UnsafeCheckpointError, match=r"global (posix|nt|os)\.system"):
    read_torch_state_dict(str(path))
  assert not marker.exists()
  for module, name in (("builtins", "eval"), ("torch.nn", "Linear"), ("torch", "load"), ("numpy", "array")):
    write_pt(tmp_path / "g.pt", {"w": (_Global(module, name), "x")})
    with pytest.raises(UnsafeCheckpointError, match=rf"global {module}\.{name}\b"):
      read_torch_state_dict(str(tmp_path / "g.pt"))
  assert issubclass(UnsafeCheckpointError, CheckpointError)


def test_reader_named_errors_for_malformed_files(tmp_path):
  st = _Storage("0", "FloatStorage", 4)
  four = np.zeros(4, np.float32).tobytes()
  cases = {
      "out_of_range": ({"x": _Tensor(st, 2, (3,), (1,))}, {"0": four}, "reads element 4 of a storage of 4"),
      "missing_record": ({"x": _Tensor(st, 0, (4,), (1,))}, {}, "storage record archive/data/0 is missing"),
      "short_record": ({"x": _Tensor(st, 0, (4,), (1,))}, {"0": four[:8]}, "has 8 bytes, expected 4 x 4"),
      "not_flat": ({"model": {"x": _Tensor(st, 0, (4,), (1,))}, "epoch": 3}, {"0": four}, "not a flat state dict"),
      "not_a_dict": ([_Tensor(st, 0, (4,), (1,))], {"0": four}, "holds a list, not a state dict"),
  }
  for name, (obj, records, match) in cases.items():
    write_pt(tmp_path / f"{name}.pt", obj, records)
    with pytest.raises(CheckpointError, match=match):
      read_torch_state_dict(str(tmp_path / f"{name}.pt"))
  (tmp_path / "legacy.pt").write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C) + b"rest")
  with pytest.raises(CheckpointError, match="not a zip-format torch checkpoint"):
    read_torch_state_dict(str(tmp_path / "legacy.pt"))
  with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
    zf.writestr("readme.txt", "hi")
  with pytest.raises(CheckpointError, match="not a torch checkpoint"):
    read_torch_state_dict(str(tmp_path / "other.zip"))
  with pytest.raises(CheckpointError, match="missing torch checkpoint"):
    read_torch_state_dict(str(tmp_path / "nope.pt"))


def test_writer_round_trip(tmp_path):
  t = dict(list(_official().items())[:7])
  write_state_dict(tmp_path / "rt.pt", t)
  back = read_torch_state_dict(str(tmp_path / "rt.pt"))
  assert list(back) == list(t)
  for k in t:
    np.testing.assert_array_equal(back[k], t[k])


# ---------------------------------------------------------------- conversion and parity
@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp("judge"))
  counts = convert_task_checkpoint(PT, TINY, out, NETS["dinov2_reg"], NETS["siglip2"])
  return out, counts


def test_convert_writes_the_judge_dir(judge_dir):
  out, counts = judge_dir
  assert {k: v for k, v in counts.items() if isinstance(v, int)} == {"vit": 40, "decoder": 42, "dinov2_reg": 98,
                                                                     "siglip2": 96}
  tensors, meta = read_safetensors(os.path.join(out, "model.safetensors"))
  assert meta == {"format": "pt"} and len(tensors) == 276
  official = _official()
  for k, a in tensors.items():                                     # module.mae. stripped, values bitwise
    np.testing.assert_array_equal(a, official["module.mae." + k], err_msg=k)
  cfg = json.load(open(os.path.join(out, "config.json")))
  assert cfg["loss_type"] == "l1+dinov2_reg+siglip2" and cfg["loss_weights"] == "1+0.3+0.3"
  assert cfg["scales"] == TASK_OVERRIDES["scales"] and cfg["causal"] is True and cfg["hidden_size"] == 32
  for term, src in NETS.items():
    assert json.load(open(os.path.join(out, PERCEPTUAL_CONFIG.format(term)))) == json.load(
        open(os.path.join(src, "config.json")))


_task = jax.jit(reconstruction_task, static_argnums=0)


@functools.lru_cache(maxsize=None)
def _inputs():
  d = np.load(os.path.join(TINY, "inputs.npz"))
  video = np.concatenate([d["video_for_task"], d["video_for_task"][..., ::-1]], 0)  # sample 1 = mirror
  return video, d["gazing_pos"], d["if_padded_gazing"], d["num_gazing_each_frame"]


@pytest.mark.parametrize("case", ("case_all_frames", "case_subset"))
def test_converted_judge_matches_official_losses(judge_dir, case):
  out, _ = judge_dir
  judge = load_judge(out)                      # the one loader: nets sized by the dir's <term>_config.json
  ref = dict(np.load(os.path.join(DIR, f"{case}.npz")))
  res = jax.tree.map(np.asarray, _task(judge.graphdef, judge.params, *_inputs(), ref["frame_idx_to_reconstruct"],
                                       judge.perceptual))
  for term in ("l1", "dinov2_reg", "siglip2"):
    np.testing.assert_allclose(res["loss_terms"][term], ref[f"loss_{term}"], rtol=1e-5, atol=1e-5, err_msg=term)
  for k in ("loss_each_reconstruction_frame", "loss_mean", "reward", "reconstruction_loss_each_gazing_token"):
    np.testing.assert_allclose(res[k], ref[k], rtol=1e-5, atol=1e-5, err_msg=k)
  np.testing.assert_allclose(res["reconstruction_loss"], ref["metric_reconstruction_loss"], rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(res["reconstruction_loss_each_gazing_token_mask"],
                                ref["reconstruction_loss_each_gazing_token_mask"])
  for k in ("traj_len_each_reward", "num_non_padded_gazing_at_each_reconstruction_frame"):
    np.testing.assert_array_equal(res[k], ref[k], err_msg=k)
  if "task_losses" in ref:                                         # the training-path call (forward)
    np.testing.assert_allclose(res["reconstruction_loss_each_gazing_token"], ref["task_losses"], rtol=1e-5, atol=1e-5)


def test_load_judge_on_converted_dir_has_both_nets(judge_dir):
  judge = load_judge(judge_dir[0])
  assert set(judge.perceptual) == {"dinov2_reg", "siglip2"} and judge.loss_terms == ["l1", "dinov2_reg", "siglip2"]


def test_load_judge_on_converted_dir_l1_only(tmp_path):
  """With the l1 term only, load_judge takes the converted dir as is and gives the official l1 term."""
  out = str(tmp_path / "j")
  convert_task_checkpoint(PT, TINY, out, NETS["dinov2_reg"], NETS["siglip2"],
                          dict(TASK_OVERRIDES, loss_type="l1", loss_weights="1"))
  judge = load_judge(out)
  assert judge.loss_terms == ["l1"] and judge.perceptual == {}
  ref = np.load(os.path.join(DIR, "case_all_frames.npz"))
  res = _task(judge.graphdef, judge.params, *_inputs(), ref["frame_idx_to_reconstruct"], judge.perceptual)
  np.testing.assert_allclose(np.asarray(res["loss_each_reconstruction_frame"]), ref["loss_l1"], rtol=1e-5, atol=1e-5)


def test_perceptual_weights_from_hf_dirs_when_the_pt_has_none(tmp_path):
  t = {k: a for k, a in _official().items() if not k.startswith(("module.mae.dinov2_reg.", "module.mae.siglip2."))}
  write_state_dict(tmp_path / "v.pt", t)
  out = str(tmp_path / "j")
  counts = convert_task_checkpoint(str(tmp_path / "v.pt"), TINY, out, NETS["dinov2_reg"], NETS["siglip2"])
  assert counts["dinov2_reg"] == 98 and counts["siglip2_source"].endswith("siglip2_tiny/model.safetensors")
  tensors, _ = read_safetensors(os.path.join(out, "model.safetensors"))
  official = _official()
  assert len(tensors) == 276
  for k, a in tensors.items():
    np.testing.assert_array_equal(a, official["module.mae." + k], err_msg=k)
  with pytest.raises(CheckpointError, match="has no dinov2_reg.* tensors and no dinov2_reg HF dir"):
    convert_task_checkpoint(str(tmp_path / "v.pt"), TINY, str(tmp_path / "k"))


# ---------------------------------------------------------------- named errors
def _bad(tmp_path, edit):
  t = dict(_official())
  t = edit(t) or t
  write_state_dict(tmp_path / "bad.pt", t)
  return str(tmp_path / "bad.pt")


def _convert(pt, tmp_path):
  return convert_task_checkpoint(pt, TINY, str(tmp_path / "out"), NETS["dinov2_reg"], NETS["siglip2"])


def test_error_without_module_prefix(tmp_path):
  pt = _bad(tmp_path, lambda t: {k[len("module."):]: a for k, a in t.items()})
  with pytest.raises(CheckpointError, match=r"276 of 276 keys lack the DDP prefix 'module\.'.*would load nothing"):
    _convert(pt, tmp_path)
  assert not os.path.exists(tmp_path / "out")                     # nothing written


def test_error_outside_the_task_model(tmp_path):
  pt = _bad(tmp_path, lambda t: t.update({"module.other.w": np.zeros(2, np.float32)}))
  with pytest.raises(CheckpointError, match=r"outside 'module\.mae\.': \['module\.other\.w'\]"):
    _convert(pt, tmp_path)


_MISSING = ("module.mae.vit.encoder.layer.1.output.dense.bias", "module.mae.dinov2_reg.encoder.layer.4.layer_scale2.lambda1",
            "module.mae.siglip2.vision_model.head.probe", "module.mae.dinov2_reg.embeddings.mask_token")
_EXTRA = ("module.mae.decoder.decoder_layers.2.output.dense.bias", "module.mae.dinov2_reg.encoder.layer.5.norm1.weight",
          "module.mae.siglip2.vision_model.head.extra")
_MIS_SHAPED = ("module.mae.vit.embeddings.time_embed", "module.mae.dinov2_reg.embeddings.position_embeddings",
               "module.mae.siglip2.vision_model.post_layernorm.bias")
_FAULTS = {  # how the state dict is broken -> the error naming the key
    "missing": (lambda t, key: {k: a for k, a in t.items() if k != key}, r"missing [^\]]*'{}'"),
    "extra": (lambda t, key: t.update({key: np.zeros(32, np.float32)}), r"unexpected [^\]]*'{}'"),
    "mis_shaped": (lambda t, key: t.update({key: np.zeros((3, 32), np.float32)}), r"tensor {} has shape \(3, 32\)"),
}


@pytest.mark.parametrize("fault,key", [("missing", k) for k in _MISSING] + [("extra", k) for k in _EXTRA]
                         + [("mis_shaped", k) for k in _MIS_SHAPED])
def test_error_names_the_bad_key(tmp_path, fault, key):
  edit, pattern = _FAULTS[fault]
  pt = _bad(tmp_path, lambda t: edit(t, key))
  with pytest.raises(CheckpointError, match=pattern.format(re.escape(key))):
    _convert(pt, tmp_path)


def test_error_wrong_dtype_and_wrong_net_size(tmp_path):
  pt = _bad(tmp_path, lambda t: t.update({"module.mae.siglip2.vision_model.head.probe":
                                         t["module.mae.siglip2.vision_model.head.probe"].astype(np.float16)}))
  with pytest.raises(CheckpointError, match=r"head\.probe has dtype float16, expected float32"):
    _convert(pt, tmp_path)
  with pytest.raises(CheckpointError, match=r"dinov2_reg tensors do not match its config \(98 given, 224 expected\)"):
    convert_task_checkpoint(PT, TINY, str(tmp_path / "base"))     # no HF dirs: sized as the released base nets


def test_error_unsafe_pickle_through_convert(tmp_path):
  write_pt(tmp_path / "evil.pt", {"module.mae.vit.x": (_Global("builtins", "exec"), ("1",))})
  with pytest.raises(UnsafeCheckpointError, match=r"builtins\.exec"):
    _convert(str(tmp_path / "evil.pt"), tmp_path)


# ---------------------------------------------------------------- CLI
def test_cli_convert(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  run = lambda *a: subprocess.run([sys.executable, "-m", "launch.convert", *a], cwd=root, env=env,  # noqa: E731
                                  capture_output=True, text=True, timeout=300)
  h = run("--help")
  assert "--videomae_pt" in h.stdout and "--dinov2" in h.stdout
  r = run(f"--videomae_pt={PT}", f"--config={TINY}/config.json", f"--out={tmp_path}/j",
          f"--dinov2={NETS['dinov2_reg']}", f"--siglip2={NETS['siglip2']}")
  assert r.returncode == 0, r.stderr[-2000:]
  assert "(276 tensors)" in r.stdout and "vit: 40 tensors" in r.stdout and "siglip2: 96 tensors" in r.stdout
  assert os.path.isfile(tmp_path / "j" / "model.safetensors")
  e = run(f"--videomae_pt={PT}", f"--config={TINY}", f"--out={tmp_path}/k")
  assert e.returncode != 0 and "error: dinov2_reg tensors do not match" in e.stderr
  u = run(f"--videomae_pt={PT}")
  assert u.returncode != 0 and "--config and --out are required" in u.stderr


# ---------------------------------------------------------------- choosing the judge's loss terms
def _without_nets(judge_dir, out):
  """A copy of the converted judge dir whose config still lists the perceptual terms, without their nets."""
  os.makedirs(out)
  tensors, _ = read_safetensors(os.path.join(judge_dir, "model.safetensors"))
  save_file({k: a for k, a in tensors.items() if not k.startswith(("dinov2_reg.", "siglip2."))},
            os.path.join(out, "model.safetensors"), {"format": "pt"})
  shutil.copy(os.path.join(judge_dir, "config.json"), out)
  return out


def test_loss_type_selects_terms_with_their_weights(judge_dir):
  ref = dict(np.load(os.path.join(DIR, "case_all_frames.npz")))
  judge = load_judge(judge_dir[0], loss_type="l1+siglip2")
  assert judge.loss_terms == ["l1", "siglip2"] and set(judge.perceptual) == {"siglip2"}
  res = _task(judge.graphdef, judge.params, *_inputs(), ref["frame_idx_to_reconstruct"], judge.perceptual)
  np.testing.assert_allclose(res["loss_each_reconstruction_frame"], ref["loss_l1"] + 0.3 * ref["loss_siglip2"],
                             rtol=1e-5, atol=1e-5)
  with pytest.raises(JudgeTermsError, match="lpips"):
    load_judge(judge_dir[0], loss_type="l1+lpips")


def test_a_term_without_weights_is_a_named_error(judge_dir, tmp_path):
  out = _without_nets(judge_dir[0], str(tmp_path / "bare"))
  with pytest.raises(JudgeTermsError, match=r"\['dinov2_reg', 'siglip2'\].*loss_type=l1"):
    load_judge(out)
  with pytest.raises(JudgeTermsError, match="dinov2_reg"):
    check_loss_terms(out)                              # the same answer from the headers alone
  x = jnp.zeros((1, 1, 3, 224, 224))
  with pytest.raises(JudgeTermsError, match="'dinov2_reg'"):   # and never a total missing a term
    frame_losses(load_judge(judge_dir[0]).cfg, x, x, {})
  assert check_loss_terms(out, loss_type="l1") == ("l1",) and load_judge(out, loss_type="l1").perceptual == {}
  # in a training config it is a ConfigError naming the key, raised at validation
  c = grpo_cfg.get_config("smoke")
  c.videomae.checkpoint = out
  with pytest.raises(ConfigError, match="config.videomae.loss_type"):
    ALGORITHMS["grpo"].validate(c)
  c.videomae.loss_type = "l1"
  ALGORITHMS["grpo"].validate(c)
  c = mae_cfg.get_config("smoke")
  c.videomae.size, c.videomae.loss_type = "default", ""     # pretraining with perceptual terms, no nets given
  with pytest.raises(ConfigError, match="siglip2"):
    ALGORITHMS["videomae"].validate(c)


def test_perceptual_probe_features_and_dinov2_position_table(judge_dir):
  """The probe image (sample 0, frame 15): what each net receives and the last-4-layer features the loss
  uses, for the target frame and the official reconstruction; DINOv2's 37x37 -> 16x16 antialiased
  bicubic position table (without antialiasing it would be off by up to 0.57)."""
  nets = load_judge(judge_dir[0]).perceptual
  ref = np.load(os.path.join(DIR, "case_all_frames.npz"))
  np.testing.assert_allclose(nets["dinov2_reg"].params["embeddings.position_embeddings"],
                             ref["dinov2_reg_interpolated_pos_embed"], rtol=0, atol=1e-6)
  target = _inputs()[0][0, 15]
  pred = np.load(os.path.join(TINY, "recon_all_frames.npz"))["reconstruction_b0_f15"]
  for term, net in nets.items():
    for kind, img in (("target", target), ("pred", pred)):
      np.testing.assert_allclose(perceptual_to_input(term, jnp.asarray(img)), ref[f"probe_{term}_input_{kind}"],
                                 rtol=0, atol=1e-5, err_msg=f"{term} {kind} input")
      np.testing.assert_allclose(perceptual_features(net, jnp.asarray(img)[None])[0],
                                 ref[f"probe_{term}_features_{kind}"], rtol=1e-4, atol=1e-4, err_msg=f"{term} {kind}")
