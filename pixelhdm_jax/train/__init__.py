"""Training: the train state, the pure train step, checkpoints and `train_and_evaluate`."""
