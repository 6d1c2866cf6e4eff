"""The network: MARCO's Inception-v3 in Flax NNX, its per-layer depth tables, the released model's
variables by name, and the one inference function every stage uses."""
