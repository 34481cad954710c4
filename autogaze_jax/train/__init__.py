"""Training: state and optimizers, the loop (mesh, checkpoints, resume, metrics), and the algorithms
(NTP, GRPO, judge pretraining), each an implementation of the Algorithm protocol."""
