"""Low-rank Bayesian neural networks: layers, the Monte Carlo sampling op, training, metrics, checkpoints."""

__version__ = "0.1.0"
