"""Checkpoint interop with the official PyTorch release (safetensors only)."""
from autogaze_jax.interop.hf import (CheckpointError, default_official_config, default_preprocessor_config,
                                     official_to_params, params_to_official, read_config, read_safetensors,
                                     write_checkpoint)

__all__ = ["CheckpointError", "default_official_config", "default_preprocessor_config", "official_to_params",
           "params_to_official", "read_config", "read_safetensors", "write_checkpoint"]
