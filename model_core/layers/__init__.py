"""Layers with one interface: ``forward`` by mode, ``predictive`` for S samples, ``kl`` as a sum."""

from model_core.layers.base import BayesianModule, Mode, PredictiveContext
from model_core.layers.deterministic import DeterministicLinear, MCDropout
from model_core.layers.lowrank import LowRankBayesLinear
from model_core.layers.meanfield import MeanFieldLinear
from model_core.layers.rank1 import Rank1BayesLinear

__all__ = [
    "BayesianModule",
    "DeterministicLinear",
    "LowRankBayesLinear",
    "MCDropout",
    "MeanFieldLinear",
    "Mode",
    "PredictiveContext",
    "Rank1BayesLinear",
]
