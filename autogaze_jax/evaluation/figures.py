"""matplotlib figures of an evaluation report (`report.evaluate_models`); the Agg backend, PNG files."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _xy(points, key):
  pts = sorted((p["gaze_ratio"], p.get(key), p.get(f"{key}_std"), p.get("gaze_ratio_std")) for p in points
               if p.get(key) is not None)
  return [np.asarray([q[i] if q[i] is not None else np.nan for q in pts], float) for i in range(4)]


def plot_curves(report: dict, path: str) -> str:
  """Judge loss, PSNR and SSIM vs gaze ratio: fixed budget (solid, +-1 std over clips shaded) and stop rule
  (dashed, horizontal bars = per-clip std of the ratio); epsilon and each model's ratio at it."""
  keys = [("loss", "judge loss (lower is better)"), ("psnr", "PSNR of reconstruction (dB)"),
          ("ssim", "SSIM of reconstruction")]
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for m, (name, row) in enumerate(report["models"].items()):
    c = colors[m % len(colors)]
    for ax, (key, label) in zip(axes, keys):
      x, y, ys, _ = _xy(row["fixed_budget"], key)
      if not len(x):
        continue
      ax.plot(x, y, "-o", color=c, ms=4, label=f"{name} fixed budget")
      ax.fill_between(x, y - ys, y + ys, color=c, alpha=0.15, lw=0)
      x, y, _, xs = _xy(row["stop_rule"], key)
      ax.errorbar(x, y, xerr=xs, fmt="--s", color=c, ms=4, capsize=2, alpha=0.8, label=f"{name} stop rule")
    r = row.get("ratio_at_epsilon_fixed")
    if r is not None:
      axes[0].plot([r], [report["epsilon"]], "*", color=c, ms=13, mec="k")
  axes[0].axhline(report["epsilon"], color="k", lw=0.8, ls=":")
  axes[0].annotate(f"epsilon = {report['epsilon']:.3g}", (0.98, report["epsilon"]), xycoords=("axes fraction", "data"),
                   ha="right", va="bottom", fontsize=8)
  for ax, (key, label) in zip(axes, keys):
    ax.set_xscale("log")
    ax.set_xlabel("gaze ratio (fraction of the 265 patches per frame)")
    ax.set_ylabel(label)
    ax.grid(alpha=0.3, which="both")
  axes[0].legend(fontsize=7, loc="upper right")
  fig.suptitle(f"Gaze ratio vs reconstruction on {report['num_clips']} held-out clips x {report['num_frames']} frames"
               f" (star: ratio at epsilon)", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path


def plot_analysis(report: dict, path: str) -> str:
  """Gaze ratio per frame index; repeat rate on static vs moving regions; mean detail per scale."""
  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  names = list(report["models"])
  width = 0.8 / max(len(names), 1)
  for m, name in enumerate(names):
    row = report["models"][name]
    axes[0].plot(np.arange(len(row["gaze_ratio_by_frame"])), row["gaze_ratio_by_frame"], "-o", ms=3, label=name)
    rg = row["repeat_gaze"]
    rates = [rg[k]["rate"] if rg[k]["rate"] is not None else np.nan for k in ("static", "moving")]
    axes[1].bar(np.arange(2) + m * width, rates, width, label=name)
    sd = row["scale_vs_detail"]
    scales = sorted(int(s) for s in sd["mean_detail_per_scale"])
    rho = sd["rho"]
    axes[2].plot(scales, [sd["mean_detail_per_scale"][str(s)] for s in scales], "-o", ms=4,
                 label=f"{name} (rho {rho:+.2f})" if rho is not None else name)
  axes[0].set(xlabel="frame index", ylabel="gaze ratio (stop rule at epsilon)", title="redundancy over time")
  axes[1].set_xticks(np.arange(2) + width * (len(names) - 1) / 2, ["static regions", "moving regions"])
  axes[1].set(ylabel="P(gazed at t | gazed at t-1)", title="re-gazing a patch of the previous frame")
  axes[2].set(xlabel="patch scale (px)", ylabel="mean Laplacian variance of gazed patches", title="scale vs detail")
  axes[2].set_xscale("log")
  for ax in axes:
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path
