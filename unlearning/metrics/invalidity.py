"""Invalidity: the mass of p_G on the redaction set Omega, estimated as the fraction of
generated samples a check puts in Omega (Kong & Chaudhuri's headline number)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from unlearning.errors import LetheError


class Invalidity:
    """``check(images) -> bool tensor (N,)``, True where a sample is in Omega.

    The check is a validity rule (True = invalid) or a thresholded classifier; it is called
    under ``torch.inference_mode``. ``compute()`` -> ``{"invalidity", "count", "samples"}``.
    """

    def __init__(self, check: Callable[[torch.Tensor], torch.Tensor]):
        self.check = check
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.samples = 0

    def update(self, images: torch.Tensor) -> None:
        with torch.inference_mode():
            flags = torch.as_tensor(self.check(images))
        if flags.shape != (images.shape[0],):
            raise ValueError(f"check must return one flag per image, got shape {tuple(flags.shape)} "
                             f"for {images.shape[0]} images")
        self.count += int(flags.bool().sum().item())
        self.samples += images.shape[0]

    def compute(self) -> dict[str, Any]:
        if self.samples == 0:
            raise LetheError("invalidity needs at least one sample")
        return {"invalidity": self.count / self.samples, "count": self.count, "samples": self.samples}
