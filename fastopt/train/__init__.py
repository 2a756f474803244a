"""Training: the Trainer and its callbacks, atomic checkpoints, data loading, plots."""
