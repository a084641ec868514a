"""Training: losses, augmentation, batches, EMA and the training loop."""
