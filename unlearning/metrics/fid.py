"""Frechet distance between Gaussian fits of feature sets (Heusel et al.), on a pluggable
feature extractor (see ``extractors.py``; METHODS.md section 5: always report which one).

    FID = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2))

Statistics stream in float64 as (sum, outer-product sum, count); the covariance is the
unbiased one (divides by N - 1), as in pytorch-fid (``np.cov``) and torchmetrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from unlearning.errors import LetheError
from unlearning.metrics.base import run_frozen
from unlearning.runtime import inference_rows, seeded_sample


def _as_float64(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float64)
    return torch.from_numpy(np.asarray(x, dtype=np.float64))


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """``||mu1 - mu2||^2 + Tr(s1 + s2 - 2 sqrtm(s1 s2))`` in float64 (tensors or arrays).

    Tr sqrtm(s1 s2) is computed as the sum of sqrt(eigenvalues) of the symmetric PSD matrix
    s1^(1/2) s2 s1^(1/2) (same spectrum as s1 s2), both via ``eigh`` with negative round-off
    eigenvalues clamped to 0. Chosen over torchmetrics' ``_compute_fid`` (``eigvals`` of the
    non-symmetric s1 s2): same result on well-conditioned inputs, but no complex round-off
    on the rank-deficient covariances that ReLU classifier features produce.
    """
    mu1, mu2 = _as_float64(mu1).reshape(-1), _as_float64(mu2).reshape(-1)
    s1, s2 = _as_float64(sigma1), _as_float64(sigma2)
    d = mu1.shape[0]
    if mu2.shape[0] != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise LetheError(f"feature statistics do not match: means {mu1.shape[0]} vs {mu2.shape[0]}, "
                         f"covariances {tuple(s1.shape)} vs {tuple(s2.shape)}")
    # NumPy's LAPACK: torch's eigh on CPU can stall for ~1 s on a 128x128 matrix when its
    # thread pool competes with other work; NumPy's takes milliseconds.
    mu1_, mu2_, s1_, s2_ = (t.numpy() for t in (mu1, mu2, s1, s2))
    s1_ = (s1_ + s1_.T) / 2
    s2_ = (s2_ + s2_.T) / 2
    w, v = np.linalg.eigh(s1_)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = root1 @ s2_ @ root1
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    value = np.square(mu1_ - mu2_).sum() + np.trace(s1_) + np.trace(s2_) - 2 * trace_sqrt
    return float(value)


class FeatureStats:
    """Streaming mean and covariance of feature vectors, float64.

    Holds ``sum`` (D,), ``outer_sum`` (D, D) and ``count``; they live on the device of the
    first features given (``mean``/``cov`` come back on CPU). ``extractor`` names the
    feature space, so statistics from different extractors are never compared.
    """

    def __init__(self, num_features: int | None = None, extractor: str | None = None):
        self.extractor = extractor
        self.num_features = num_features
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self._sum: torch.Tensor | None = None
        self._outer: torch.Tensor | None = None
        if self.num_features is not None:
            self._sum = torch.zeros(self.num_features, dtype=torch.float64)
            self._outer = torch.zeros(self.num_features, self.num_features, dtype=torch.float64)

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of features (N, D) (or (N, ...) flattened)."""
        with torch.inference_mode():  # always: the sums never mix inference and normal tensors
            self._update(features)

    def _update(self, features: torch.Tensor) -> None:
        f = features.detach().reshape(features.shape[0], -1).to(torch.float64)
        if self._sum is None:
            self.num_features = f.shape[1]
            self._sum = torch.zeros(f.shape[1], dtype=torch.float64, device=f.device)
            self._outer = torch.zeros(f.shape[1], f.shape[1], dtype=torch.float64, device=f.device)
        if f.shape[1] != self.num_features:
            raise LetheError(f"features have {f.shape[1]} dimensions, these statistics {self.num_features}")
        if self._sum.device != f.device and self.count == 0:
            self._sum, self._outer = self._sum.to(f.device), self._outer.to(f.device)
        self._sum += f.sum(dim=0).to(self._sum.device)
        self._outer += (f.T @ f).to(self._outer.device)
        self.count += f.shape[0]

    @property
    def mean(self) -> torch.Tensor:
        if self.count < 1:
            raise LetheError("no features accumulated yet")
        return (self._sum / self.count).cpu()

    @property
    def cov(self) -> torch.Tensor:
        """Unbiased covariance: (sum x x^T - N mu mu^T) / (N - 1)."""
        if self.count < 2:
            raise LetheError(f"a covariance needs at least 2 samples, got {self.count}")
        total = self._sum.cpu()
        outer = self._outer.cpu()
        return (outer - torch.outer(total, total) / self.count) / (self.count - 1)

    def save(self, path: str | Path) -> Path:
        """Write ``sum``, ``outer_sum``, ``count`` (and ``extractor``) to an .npz file at ``path``."""
        if self._sum is None:
            raise LetheError("no features accumulated yet")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {"sum": self._sum.cpu().numpy(), "outer_sum": self._outer.cpu().numpy(),
                  "count": np.asarray(self.count, dtype=np.int64),
                  "extractor": np.asarray(self.extractor or "", dtype=np.str_)}
        with open(path, "wb") as handle:  # a handle, so numpy does not append ".npz"
            np.savez(handle, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        path = Path(path)
        if not path.is_file():
            raise LetheError(f"feature statistics file {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as data:
                total = torch.from_numpy(data["sum"].astype(np.float64))
                outer = torch.from_numpy(data["outer_sum"].astype(np.float64))
                count = int(data["count"])
                extractor = str(data["extractor"]) if "extractor" in data.files else ""
        except (KeyError, ValueError, OSError) as exc:
            raise LetheError(f"{path}: not a feature statistics file ({exc})") from None
        d = total.shape[0] if total.ndim == 1 else -1
        if d < 1 or outer.shape != (d, d) or count < 0:
            raise LetheError(f"{path}: inconsistent feature statistics")
        stats = cls(num_features=d, extractor=extractor or None)
        stats._sum, stats._outer, stats.count = total, outer, count
        return stats


def _extract(extractor: nn.Module, images: torch.Tensor) -> torch.Tensor:
    return run_frozen(extractor, images).reshape(images.shape[0], -1)


# A reference tensor larger than this is sampled down (seeded): 20,000 images estimate a
# 128-feature mean and covariance well, and a job builds two references from the training
# data outside Omega (on Fashion-MNIST's 54,000 that was 50 s of a 2-minute job). The
# digits' 1,797 are all used.
MAX_REFERENCE_IMAGES = 20_000
REFERENCE_SEED = 0


def reference_stats(
    extractor: nn.Module,
    images: torch.Tensor | Iterable[torch.Tensor],
    batch_size: int | None = None,
    extractor_name: str | None = None,
    max_images: int | None = None,
) -> FeatureStats:
    """Feature statistics of reference images (a tensor, split into ``batch_size`` batches,
    by default ``runtime.inference_rows`` of its shape, or an iterable of batches), e.g. the
    training samples outside Omega. A tensor of more than ``max_images`` (default
    ``MAX_REFERENCE_IMAGES``) contributes a seeded sample of that many."""
    if isinstance(images, torch.Tensor):
        images = seeded_sample(images, MAX_REFERENCE_IMAGES if max_images is None else max_images, REFERENCE_SEED)
    batches = images.split(batch_size or inference_rows(images.shape)) if isinstance(images, torch.Tensor) \
        else images
    stats = FeatureStats(extractor=extractor_name)
    for batch in batches:
        stats.update(_extract(extractor, batch))
    return stats


class FID:
    """FID of generated images against fixed reference statistics, in ``extractor``'s space.

    ``compute()`` -> ``{"fid": float, "extractor": name, "samples": n}``.
    """

    def __init__(self, extractor: nn.Module, reference: FeatureStats, extractor_name: str):
        if reference.extractor is not None and reference.extractor != extractor_name:
            raise LetheError(f"reference statistics were computed with '{reference.extractor}', "
                             f"not '{extractor_name}'")
        self.extractor = extractor
        self.reference = reference
        self.extractor_name = extractor_name
        self._ref_mean, self._ref_cov = reference.mean, reference.cov
        self.reset()

    def reset(self) -> None:
        self.stats = FeatureStats(num_features=None, extractor=self.extractor_name)

    def update(self, images: torch.Tensor) -> None:
        self.stats.update(_extract(self.extractor, images))

    def compute(self) -> dict[str, Any]:
        fid = frechet_distance(self.stats.mean, self.stats.cov, self._ref_mean, self._ref_cov)
        return {"fid": fid, "extractor": self.extractor_name, "samples": self.stats.count}
