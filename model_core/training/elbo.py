"""The training objective.

Per minibatch of B examples from a training set of N examples:

    loss = (1/B) Σ_i w_i · NLL(y_i | x_i, θ̃) + β · KL(q ‖ p) / N

with θ̃ one reparameterised posterior draw (``sample`` mode), w_i optional class weights and β = 1 by
default. Summed over an epoch this is the negative ELBO divided by N (the KL weighted per example).
Ensembles stack members on a leading axis and add their independent losses.
"""

from __future__ import annotations

from torch import Tensor, nn

from model_core.models.spec import Likelihood
from model_core.predict import gaussian_scale


def nll_terms(outputs: Tensor, target: Tensor, likelihood: Likelihood) -> Tensor:
    """Per-example NLL; ``outputs`` (..., N, out), target (N,) (standardised for regression)."""
    if likelihood is Likelihood.BERNOULLI:
        y = target.to(outputs.dtype).expand(outputs.shape[:-1])
        return nn.functional.binary_cross_entropy_with_logits(outputs[..., 0], y, reduction="none")
    if likelihood is Likelihood.CATEGORICAL:
        flat = outputs.reshape(-1, outputs.shape[-1])
        y = target.long().expand(outputs.shape[:-1]).reshape(-1)
        return nn.functional.cross_entropy(flat, y, reduction="none").view(outputs.shape[:-1])
    mu = outputs[..., 0]
    sigma = gaussian_scale(outputs[..., 1])
    return nn.functional.gaussian_nll_loss(
        mu, target.expand(mu.shape), sigma * sigma, full=True, reduction="none"
    )


def elbo_loss(
    outputs: Tensor,
    target: Tensor,
    likelihood: Likelihood,
    kl: Tensor,
    n_train: int,
    beta: float = 1.0,
    weights: Tensor | None = None,
    normalizer: float | None = None,
) -> tuple[Tensor, Tensor]:
    """(loss, mean NLL) for one minibatch; see the module docstring for the formula.

    ``normalizer`` divides the summed NLL (default: the number of examples here). Under data-parallel
    training each rank sees a shard of the global batch and uses ``global_batch / world_size``, so the
    average DDP takes over ranks is exactly the single-process loss.
    """
    nll = nll_terms(outputs, target, likelihood)
    if weights is not None:
        nll = nll * weights
    denom = float(nll.shape[-1]) if normalizer is None else normalizer
    data_term = nll.sum(-1).sum() / max(denom, 1.0)  # summed over ensemble members if any
    return data_term + beta * kl / n_train, nll.mean().detach() if nll.numel() else nll.sum().detach()
