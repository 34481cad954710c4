"""Checkpoint interop with the official PyTorch release (safetensors only): `gaze`, `videomae`, `siglip`;
shared reading/writing in `common`."""
