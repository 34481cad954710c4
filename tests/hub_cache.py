"""An offline huggingface_hub cache laid out by hand from our fixtures, for tests of hub ids.

`hf_home` points HF_HOME at tmp_path and sets HF_HUB_OFFLINE=1 (no test touches a network);
`cache_repo` puts files into HF_HOME/hub/models--org--name/{refs/<ref>, snapshots/<sha>/...}, the layout
huggingface_hub reads (what `hf download` leaves behind).
"""
import os
import shutil

import pytest

SHA_MAIN, SHA_V0 = "a" * 40, "b" * 40


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
  home = tmp_path / "hf"
  monkeypatch.setenv("HF_HOME", str(home))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.delenv("HF_HUB_CACHE", raising=False)
  return home


def cache_repo(home, repo_id, files, sha=SHA_MAIN, refs=("main",)):
  """Put `files` ({name in repo: source path}) into the hub cache as snapshot `sha`, named by `refs`."""
  base = home / "hub" / ("models--" + repo_id.replace("/", "--"))
  snap = base / "snapshots" / sha
  snap.mkdir(parents=True, exist_ok=True)
  for name, src in files.items():
    shutil.copy(src, snap / name)
  (base / "refs").mkdir(exist_ok=True)
  for r in refs:
    (base / "refs" / r).write_text(sha)
  return str(snap)


def dir_files(d, names=None):
  return {n: os.path.join(d, n) for n in (names or os.listdir(d)) if os.path.isfile(os.path.join(d, n))}
