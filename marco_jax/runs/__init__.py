"""A run's directory as every stage reads it: config.json, its checkpoints and the lock."""
