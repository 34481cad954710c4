"""Optional fused CPU kernels (XLA FFI custom calls), built from source on first use.

`cpu.cached_attention` replaces the rollout's cached attention on CPU, where XLA's separate small ops
leave most of the time on the table. Accelerators never use these kernels.
"""
