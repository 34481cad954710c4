"""The AutoGaze gaze model and its teacher-forced pass (official `AutoGazeModel.embed` / `.forward`).

Sequence layout: per frame, the grid^2 vision tokens then that frame's gaze slots;
padded slots are EOS embeddings with attention mask 0; positions = cumsum(mask) - 1.
Multi-token read-out: slot j of a frame (m = j % K) at sequence index p takes its
probability from logit head m at p - (m + 1) and its task-loss prediction from head (m+1) % K at
p - ((m+1) % K). The per-frame slot counts are static, so every index of the layout is a numpy
constant computed once per shape (`SequenceLayout`).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from autogaze_jax.gaze.config import GazeConfig
from autogaze_jax.gaze.decoder import GazeDecoder
from autogaze_jax.gaze.encoder import Connector, VisionEncoder
from autogaze_jax.core.resize import resize_bicubic

PROB_EPS = 1e-8  # log_action_probs = log(p + 1e-8) (official AutoGaze.forward)


@dataclasses.dataclass(frozen=True)
class SequenceLayout:
  """Static index tables of the teacher-forced decoder sequence for given per-frame slot counts."""
  length: int                  # decoder sequence length L
  vision_index: np.ndarray     # (T*P,) sequence index of every vision token, frame-major
  gaze_index: np.ndarray       # (N,) sequence index of every gaze slot
  slot_frame: np.ndarray       # (N,) frame of every slot
  src_index: np.ndarray        # (N,) position whose logits score the slot
  src_head: np.ndarray         # (N,) logit head used
  tl_index: np.ndarray         # (N,) position whose task-loss head predicts "after this slot"
  tl_head: np.ndarray          # (N,)
  sources: np.ndarray          # (S,) sorted union of src_index and tl_index
  src_in_sources: np.ndarray   # (N,) index into `sources` of src_index
  tl_in_sources: np.ndarray    # (N,)


@functools.lru_cache(maxsize=256)
def sequence_layout(frame_tokens: int, k: int, num_gazing_each_frame: tuple[int, ...]) -> SequenceLayout:
  vis, gaze, frame, j_in_frame = [], [], [], []
  pos = 0
  for t, n in enumerate(num_gazing_each_frame):
    vis.extend(range(pos, pos + frame_tokens))
    pos += frame_tokens
    gaze.extend(range(pos, pos + n))
    frame.extend([t] * n)
    j_in_frame.extend(range(n))
    pos += n
  gaze_index = np.asarray(gaze, np.int64)
  m = np.asarray(j_in_frame, np.int64) % k
  src_index, tl_head = gaze_index - (m + 1), (m + 1) % k
  tl_index = gaze_index - tl_head
  sources = np.union1d(src_index, tl_index)
  return SequenceLayout(
      length=pos, vision_index=np.asarray(vis, np.int64), gaze_index=gaze_index,
      slot_frame=np.asarray(frame, np.int64), src_index=src_index, src_head=m, tl_index=tl_index,
      tl_head=tl_head, sources=sources, src_in_sources=np.searchsorted(sources, src_index),
      tl_in_sources=np.searchsorted(sources, tl_index))


class GazeModel(nnx.Module):
  """`gazing_model` of the official checkpoint: vision_model + connector + gaze_decoder."""

  def __init__(self, cfg: GazeConfig, rngs: nnx.Rngs):
    self.cfg = cfg
    self.vision_model = VisionEncoder(cfg, rngs)
    self.connector = Connector(cfg, rngs)
    self.gaze_decoder = GazeDecoder(cfg, rngs)

  def resize_input(self, pixel_values: jax.Array) -> jax.Array:
    """Frames that are not input_img_size square are bicubic-resized (torch kernel), as the official
    model does (non-square inputs are squashed); same-size frames pass through untouched."""
    s = self.cfg.input_img_size
    if pixel_values.shape[-2:] != (s, s):
      pixel_values = resize_bicubic(pixel_values.astype(jnp.float32), s, s)
    return pixel_values

  def embed_video(self, pixel_values: jax.Array, conv_cache=None):
    """(B, T, 3, H, W) processor output -> vision embeddings (B, T, P, D) and the new conv cache."""
    feats, cache = self.vision_model(self.resize_input(pixel_values), conv_cache)
    return self.connector(feats), cache

  def teacher_forced(self, pixel_values, gazing_pos, if_padded_gazing,
                     num_gazing_each_frame: tuple[int, ...], debug: bool = False, vision=None) -> dict:
    """Official teacher-forced pass over given gaze slots.

    pixel_values (B, T, 3, H, W) float; gazing_pos (B, N) global ids (`id + V*t`; the value of
    padded slots is ignored); if_padded_gazing (B, N) bool; num_gazing_each_frame: static tuple of
    T slot counts summing to N. Returns gaze_probs, log_action_probs, task_loss_prediction (B, N)
    float32; with debug=True also the decoder outputs at `layout.sources`, the log-sum-exp of every
    head at every position, and the attention mask / positions fed to the decoder. `vision`: the
    `embed_video` output of pixel_values when the caller already has it (GRPO embeds each video once
    for its whole group), else computed here.
    """
    cfg = self.cfg
    b, t = pixel_values.shape[:2]
    if len(num_gazing_each_frame) != t:
      raise ValueError(f"num_gazing_each_frame has {len(num_gazing_each_frame)} entries for {t} frames")
    if gazing_pos.shape != (b, sum(num_gazing_each_frame)) or if_padded_gazing.shape != gazing_pos.shape:
      raise ValueError(f"gazing_pos {gazing_pos.shape} / if_padded_gazing {if_padded_gazing.shape} must be "
                       f"(B={b}, N={sum(num_gazing_each_frame)})")
    lay = sequence_layout(cfg.num_frame_tokens, cfg.decoder.num_multi_token_pred, tuple(num_gazing_each_frame))
    dec = self.gaze_decoder
    vis = self.embed_video(pixel_values)[0] if vision is None else vision
    d = vis.shape[-1]
    eos = cfg.eos_token_id
    local = gazing_pos - cfg.num_vision_tokens_each_frame * jnp.asarray(lay.slot_frame)[None]
    local = jnp.where(if_padded_gazing, eos, local).astype(jnp.int32)
    x = jnp.zeros((b, lay.length, d), vis.dtype)
    x = x.at[:, lay.vision_index].set(vis.reshape(b, -1, d))
    x = x.at[:, lay.gaze_index].set(dec.embed(local))
    valid = jnp.ones((b, lay.length), bool).at[:, lay.gaze_index].set(local != eos)
    positions = jnp.cumsum(valid.astype(jnp.int32), axis=1) - 1
    if debug:                                               # every row's read-out is reported
      h = dec.hidden(x, positions, valid)
      hs = h[:, lay.sources]                                # (B, S, D)
    else:                                                   # only the source rows are read out
      hs = dec.hidden(x, positions, valid, out_rows=lay.sources)
    logits_s = dec.logits(hs)                               # (B, S, K, V)
    tl_s = dec.task_loss(hs)                                # (B, S, K)
    slot_logits = logits_s[:, lay.src_in_sources, lay.src_head]            # (B, N, V)
    probs = jax.nn.softmax(slot_logits, axis=-1)
    gaze_probs = jnp.take_along_axis(probs, local[..., None], axis=-1)[..., 0]
    out = {
        "gaze_probs": gaze_probs,
        "log_action_probs": jnp.log(gaze_probs + PROB_EPS),
        "task_loss_prediction": tl_s[:, lay.tl_in_sources, lay.tl_head],
    }
    if debug:
      out.update(
          logits_at_sources=logits_s.reshape(b, len(lay.sources), -1), task_loss_head_at_sources=tl_s,
          final_hidden_at_sources=hs.astype(jnp.float32),
          logits_logsumexp_per_head=jax.nn.logsumexp(dec.logits(h), axis=-1),
          decoder_attention_mask=valid.astype(jnp.int32), decoder_position_ids=positions)
    return out
