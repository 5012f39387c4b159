"""Runtimes: how a loaded checkpoint turns a batch into predictive summaries (see ``base.Runtime``)."""

from service.runtime.base import Outputs, Runtime, RuntimeLoadError

__all__ = ["Outputs", "Runtime", "RuntimeLoadError"]
