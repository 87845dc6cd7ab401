"""Training: the one loop, its arguments, the Trainer subclass, callbacks, checkpoints."""
