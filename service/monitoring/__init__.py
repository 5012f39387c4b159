"""Prometheus metrics (``metrics``) and the uncertainty drift monitor (``drift``)."""
