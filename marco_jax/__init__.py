"""marco_jax: train, evaluate and serve the MARCO crystallization-outcome classifier in JAX."""

__version__ = "0.1.0"
