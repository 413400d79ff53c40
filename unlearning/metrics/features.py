"""Visual features measured from pixels alone (no model): the independent judges that
feedback-unlearning tests and benchmarks use, as Morpho-MNIST does in the paper. A method
never sees them; marks are simulated from them."""

from __future__ import annotations

import torch


def slant(images: torch.Tensor) -> torch.Tensor:
    """(N,) shear of the ink, from intensity-weighted second moments: cov(x, y) / var(y)
    with y growing downwards. > 0: the bottom of the stroke lies right of its top (the
    digit leans left, like a backslash); 0: upright. Images in [-1, 1], first channel."""
    ink = ((images[:, 0] + 1) / 2).clamp(0, 1)
    n, h, w = ink.shape
    ys = torch.arange(h, dtype=ink.dtype, device=ink.device)[None, :, None]
    xs = torch.arange(w, dtype=ink.dtype, device=ink.device)[None, None, :]
    mass = ink.sum((1, 2)).clamp_min(1e-6)
    mean_y = (ink * ys).sum((1, 2)) / mass
    mean_x = (ink * xs).sum((1, 2)) / mass
    dy = ys - mean_y[:, None, None]
    dx = xs - mean_x[:, None, None]
    covariance = (ink * dx * dy).sum((1, 2)) / mass
    variance_y = (ink * dy * dy).sum((1, 2)) / mass
    return covariance / variance_y.clamp_min(1e-6)
