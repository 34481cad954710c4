"""The downstream gazed ViT (SigLIP-style): config, model on gazed patches, the gaze-then-ViT pipeline."""
