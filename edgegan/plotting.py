"""Headless matplotlib for every figure the package writes: the Agg backend is chosen once, when
this module is first imported (callers import it lazily, so a CLI start does not load matplotlib)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

__all__ = ["plt"]
