"""Runtimes: how a loaded checkpoint turns a batch into predictive summaries (see ``base.Runtime``)."""

from service.runtime.base import INTERVAL_KEYS, OUTPUT_KEYS, Outputs, Runtime, RuntimeLoadError

__all__ = ["INTERVAL_KEYS", "OUTPUT_KEYS", "Outputs", "Runtime", "RuntimeLoadError"]
