"""Optional fused CPU kernels (XLA FFI custom calls), built from source on first use.

`cpu.cached_attention` replaces the rollout's cached attention, `cpu.stem` and `cpu.causal_conv` the
vision encoder's patchify-linear + LayerNorm and causal trunk conv, `cpu.flash_forward` /
`cpu.flash_backward` the training-length masked attention (teacher-forced gaze decoder, VideoMAE judge)
and its gradient, on CPU, where XLA's separate small ops (and its generic convolution) leave much of the
time on the table. Accelerators never use them.
"""
