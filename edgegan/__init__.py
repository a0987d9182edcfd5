"""edgegan: federated edge-cloud learning of generative models.

Algorithm core (data, nn, gan, barycenter, adapt, tdgan, eval, baselines) imports no
networking, Ray or Flower; the runtime, simulator, Flower apps and monitoring call into it.
"""

__version__ = "0.1.0"

from edgegan.errors import EdgeganError

__all__ = ["EdgeganError", "__version__"]
