"""Training: the plan a config makes, pure jitted steps, the loop, checkpoints, locks,
metrics, evaluation."""
