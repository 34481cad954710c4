"""Optional fused CPU kernels (XLA FFI custom calls), built from source on first use.

`cpu.decoder_layer` (a whole decoder layer of the rollout around `cpu.cached_attention`) and
`cpu.stem` / `cpu.causal_conv` (the vision encoder's patchify-linear + LayerNorm and causal trunk
conv) replace XLA's ops on CPU, where its separate small ops (and its generic convolution) leave much
of the time on the table. Accelerators never use them.
"""
