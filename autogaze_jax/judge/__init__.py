"""The frozen reconstruction judge: block-causal VideoMAE config + model, perceptual feature nets\n(DINOv2-reg, SigLIP2), reconstruction losses and rewards, and the one judge loader."""
