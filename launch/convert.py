"""Convert the official trainer's VideoMAE task checkpoint (`videomae.pt`) into a judge dir.

  python -m launch.convert --videomae_pt=FILE --config=CONFIG_JSON_OR_DIR --out=DIR
                           [--dinov2=HF_DIR] [--siglip2=HF_DIR]
                           [--loss_type=l1+dinov2_reg+siglip2] [--loss_weights=1+0.3+0.3]

Every input is a local path or a hub id ('org/name', 'org/name@revision') fetched through huggingface_hub's
cache (HF_HOME, HF_HUB_OFFLINE honoured): e.g. --videomae_pt=bfshi/VideoMAE_AutoGaze (its videomae.pt),
--config=facebook/vit-mae-large, --dinov2=facebook/dinov2-with-registers-base,
--siglip2=google/siglip2-base-patch16-224. A local path of the same name wins.

FILE: `torch.save` of the whole DDP-wrapped task (keys `module.mae.*`), read without torch by a
restricted unpickler (tensors only). --config: the backbone's config.json (the official recipe uses
`facebook/vit-mae-large`'s), to which the task's overrides (scales 32+64+112+224, scale/time
embeddings, 256 frames, causal, the loss terms) are applied. DIR gets config.json + model.safetensors
with `vit.*`, `decoder.*` and the perceptual nets `dinov2_reg.*` / `siglip2.*` bundled: pass it as the
judge checkpoint (`judge.load.load_judge`, `--config.videomae.checkpoint`).

--dinov2 / --siglip2: HF dirs of the perceptual nets. Their config.json sizes the net (default: the
released base nets); their model.safetensors is bundled only when the .pt has no tensors for that net
(as in the official task, the checkpoint's weights win). Every missing, unexpected or mis-shaped tensor
and a .pt without the `module.` prefix is an error; nothing is loaded partially.
"""
from __future__ import annotations

from absl import app, flags

_PT = flags.DEFINE_string("videomae_pt", None, "official task checkpoint (torch zip, keys module.mae.*): a file, "
                          "a dir holding videomae.pt, or a hub id (bfshi/VideoMAE_AutoGaze)")
_CONFIG = flags.DEFINE_string("config", None, "ViT-MAE config.json, or a dir holding one (e.g. facebook/vit-mae-large)")
_OUT = flags.DEFINE_string("out", None, "output judge dir (config.json + model.safetensors)")
_DINOV2 = flags.DEFINE_string("dinov2", None, "HF dir of the DINOv2-with-registers net (config.json [+ weights])")
_SIGLIP2 = flags.DEFINE_string("siglip2", None, "HF dir of the SigLIP2 vision net (config.json [+ weights])")
_LOSS_TYPE = flags.DEFINE_string("loss_type", "l1+dinov2_reg+siglip2", "loss terms of the task (official recipe's)")
_LOSS_WEIGHTS = flags.DEFINE_string("loss_weights", "1+0.3+0.3", "one weight per loss term")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if not (_PT.value and _CONFIG.value and _OUT.value):
    raise app.UsageError("--videomae_pt, --config and --out are required")
  from launch.runtime import init_runtime
  init_runtime()
  from launch.wiring import convert_judge
  counts = convert_judge(_PT.value, _CONFIG.value, _OUT.value, _DINOV2.value, _SIGLIP2.value, _LOSS_TYPE.value,
                   _LOSS_WEIGHTS.value)
  print(f"wrote {_OUT.value}/config.json and {_OUT.value}/model.safetensors "
        f"({sum(v for v in counts.values() if isinstance(v, int))} tensors)")
  for part in ("vit", "decoder", "dinov2_reg", "siglip2"):
    if part in counts:
      src = counts.get(part + "_source")
      print(f"  {part}: {counts[part]} tensors" + (f" from {src}" if src else ""))
    else:
      print(f"  {part}: none (its loss term is off)")


if __name__ == "__main__":
  app.run(main)
