"""core.atomic_files: a failed write leaves the old file and no temporary; JSON round trip; NaN refused."""
import json
import os

import pytest

from autogaze_jax.core.atomic_files import atomic_write, write_json


def test_failed_write_keeps_the_old_file(tmp_path):
  path = str(tmp_path / "summary.json")
  write_json(path, {"a": 1, "b": [1, 2]})
  assert json.load(open(path)) == {"a": 1, "b": [1, 2]}

  def broken(tmp):
    with open(tmp, "w") as f:
      f.write('{"a": ')          # torn content, then the writer dies
    raise RuntimeError("killed")

  with pytest.raises(RuntimeError):
    atomic_write(path, broken)
  assert json.load(open(path)) == {"a": 1, "b": [1, 2]}
  assert os.listdir(tmp_path) == ["summary.json"]


def test_json_is_sorted_and_refuses_nan(tmp_path):
  path = str(tmp_path / "x.json")
  write_json(path, {"b": 1, "a": 2}, indent=1)
  assert open(path).read() == '{\n "a": 2,\n "b": 1\n}\n'
  with pytest.raises(ValueError):
    write_json(path, {"loss": float("nan")})
  assert json.load(open(path)) == {"a": 2, "b": 1}
