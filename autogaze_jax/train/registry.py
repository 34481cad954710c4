"""The closed set of trainable algorithms, by the name `config.algorithm` uses."""
from __future__ import annotations

from autogaze_jax.train.algorithm import Algorithm
from autogaze_jax.train.grpo import GRPO
from autogaze_jax.train.judge import JudgeTraining
from autogaze_jax.train.ntp import NTP

ALGORITHMS: dict[str, Algorithm] = {"ntp": NTP(), "grpo": GRPO(), "videomae": JudgeTraining()}
