"""Training: the ELBO and the trainer (the service never imports this package)."""

from model_core.training.elbo import elbo_loss, nll_terms
from model_core.training.trainer import TrainConfig, TrainResult, fit, seed_everything

__all__ = ["TrainConfig", "TrainResult", "elbo_loss", "fit", "nll_terms", "seed_everything"]
