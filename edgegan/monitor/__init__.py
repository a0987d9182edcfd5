"""Prometheus metrics, all declared in :mod:`edgegan.monitor.metrics`."""
