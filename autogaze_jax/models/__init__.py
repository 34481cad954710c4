"""Flax NNX modules, used functionally (nnx.split once, pure jitted functions over the param pytree)."""
