"""Lethe's library: generators, forget specifications, unlearning methods, metrics,
the version registry and the CLI. No web code lives here (that is ``service/``).

Image convention everywhere: float32 tensors in [-1, 1], shape (N, C, H, W).
"""

__version__ = "0.1.0"
