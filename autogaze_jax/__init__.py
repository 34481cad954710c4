"""autogaze-jax: AutoGaze ("Attend Before Attention") in JAX/Flax."""
from autogaze_jax.api import AutoGaze
from autogaze_jax.gaze.config import DecoderConfig, GazeConfig, VisionConfig, tiny_config

__version__ = "0.1.0"

__all__ = ["AutoGaze", "GazeConfig", "VisionConfig", "DecoderConfig", "tiny_config"]
