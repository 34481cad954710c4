"""Greedy gaze labels for NTP: frozen VideoMAE -> gazing_labels.json (+ greedy_meta.json).

  python -m launch.label --config=configs/greedy_labels.py --workdir=runs/labels \
      --config.data.src=/data/InternVid_res448_250K --config.videomae.checkpoint=/ckpt/videomae
  python -m launch.label --config=configs/greedy_labels.py:smoke --workdir=runs/labels_smoke   # minutes on CPU
  python -m launch.label --config=configs/greedy_labels.py:variant=exact --workdir=...         # exact greedy

Re-running with the same --workdir resumes (each clip is labelled once). Multi-host: every process
labels its strided share; the last to finish merges. NTP then reads `<workdir>/gazing_labels.json`
(`--config.data.labels=...`), also on an ArrayRecord build (joined at read time by video path).

Defaults: tau 0.5, budget 198, min_tokens 1. Variant `default` = stochastic greedy with
64 random candidates and 4 patches per round (exact losses recorded for every prefix): the cheap setting
meant for 250K clips; `exact`, `random` (k=1), `c2f` (coarse-to-fine) and `chunked` (all candidates,
k=4) are the others (`benchmarks/greedy.py` and `greedy.variant_report` compare them).
  smoke      tiny random-init VideoMAE, 4 embedded clips, 2 frames, budget 3 (plumbing only).
"""
from configs import common

VARIANTS = {  # candidates, num_candidates, k_per_step
    "default": ("random", 64, 4),
    "exact": ("all", 64, 1),
    "random": ("random", 64, 1),
    "c2f": ("coarse_to_fine", 64, 1),
    "chunked": ("all", 64, 4),
}


def get_config(arg=None):
  a = common.parse_arg(arg, smoke=False, variant="default")
  if a.variant not in VARIANTS:
    raise ValueError(f"variant {a.variant!r}: choose from {sorted(VARIANTS)}")
  cand, m, k = VARIANTS[a.variant]
  c = common.mlc.ConfigDict()
  c.mesh = common.mesh_config()
  c.videomae = common.mlc.ConfigDict({
      "checkpoint": "",          # official-format dir; '' = a random init of `size` (plumbing only, warned)
      "size": "tiny" if a.smoke else "default",   # tiny | small | default (judge.load.SIZES)
      "loss_type": "",           # '' = the judge's own terms; e.g. 'l1' to score without the perceptual nets
      "dtype": "float32",        # compute dtype of the judge (recorded in greedy_meta.json)
      "seed": 0,
  })
  c.data = common.mlc.ConfigDict({
      "src": "",                 # '' = embedded synthetic dataset; else a video folder root or ArrayRecord dir
      "source": "auto",          # auto | synthetic | folder | arrayrecord
      "split": "train",
      "synthetic_num_clips": 200, "seed": 0, "cache_dir": "",
      "num_frames": 16,          # official labels need 16; fewer only for smoke runs
      "max_clips": 0,            # 0 = all
      "clips_per_batch": 4,      # clips searched in lock-step (batch axis = clips x candidates)
  })
  c.greedy = common.mlc.ConfigDict({
      "tau": 0.5, "budget": 198, "min_tokens": 1,
      "candidates": cand, "num_candidates": m, "c2f_top": 8, "k_per_step": k,
      "patience": 0, "eps": 0.0, "slot_bucket": 64, "candidate_chunk": 0, "seed": 0,
  })
  c.log_every = 1
  if a.smoke:
    c.data.synthetic_num_clips = 40
    c.data.max_clips = 4
    c.data.num_frames = 2
    c.data.clips_per_batch = 2
    c.greedy.budget = 3
    c.greedy.num_candidates = 16
    c.greedy.k_per_step = min(k, 2)
    c.greedy.slot_bucket = 16
  return c
