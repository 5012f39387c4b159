"""Method name -> model builder. The training CLI, checkpoint loader and service all build through here."""

from __future__ import annotations

from collections.abc import Callable

from model_core.layers.base import BayesianModule
from model_core.models.ensemble import Ensemble
from model_core.models.lstm import BayesLSTM, LSTMEnsemble
from model_core.models.mlp import BayesMLP
from model_core.models.spec import ArchitectureSpec, Method
from model_core.models.transformer import BayesTransformer, TransformerEnsemble

Builder = Callable[[ArchitectureSpec], BayesianModule]

BUILDERS: dict[tuple[str, Method], Builder] = {}


def register(kind: str, *methods: Method) -> Callable[[Builder], Builder]:
    def deco(fn: Builder) -> Builder:
        for method in methods:
            BUILDERS[(kind, method)] = fn
        return fn

    return deco


register(
    "mlp", Method.LOWRANK, Method.LRSVD, Method.BBB, Method.RANK1, Method.DETERMINISTIC, Method.MCDROPOUT
)(BayesMLP)
register("mlp", Method.ENSEMBLE, Method.LOWRANK_ENS)(Ensemble)
register(
    "lstm", Method.LOWRANK, Method.LRSVD, Method.BBB, Method.RANK1, Method.DETERMINISTIC, Method.MCDROPOUT
)(BayesLSTM)
register("lstm", Method.ENSEMBLE, Method.LOWRANK_ENS)(LSTMEnsemble)
register(
    "transformer",
    Method.LOWRANK,
    Method.LRSVD,
    Method.BBB,
    Method.RANK1,
    Method.DETERMINISTIC,
    Method.MCDROPOUT,
)(BayesTransformer)
register("transformer", Method.ENSEMBLE, Method.LOWRANK_ENS)(TransformerEnsemble)


class UnknownArchitectureError(ValueError):
    pass


def build_model(spec: ArchitectureSpec | dict) -> BayesianModule:
    """Build the (untrained) module tree an architecture spec describes."""
    if isinstance(spec, dict):
        spec = ArchitectureSpec.model_validate(spec)
    try:
        builder = BUILDERS[(spec.kind, spec.method)]
    except KeyError:
        known = sorted({k for k, _ in BUILDERS})
        raise UnknownArchitectureError(
            f"no builder for kind {spec.kind!r} with method {spec.method.value!r} (kinds: {known})"
        ) from None
    return builder(spec)
