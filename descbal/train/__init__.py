"""Training engine: batch sampling, on-device augmentation, optimisation, checkpoints."""
