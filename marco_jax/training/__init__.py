"""The train loop, its step and optimiser, config checks, checkpoints of runs and warm starts."""
