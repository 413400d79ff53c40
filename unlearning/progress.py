"""Progress bars for long CLI work: method callbacks drawn with tqdm."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

from unlearning.methods.base import Callbacks

_KEYS = ("stage", "epoch", "invalidity", "fid", "model")


@contextmanager
def progress_bar(description: str, enabled: bool = True) -> Iterator[Callbacks]:
    """Callbacks whose progress(fraction, info) moves a 0-100 % bar and shows key numbers."""
    bar = tqdm(total=100, desc=description, unit="%", disable=not enabled, file=sys.stderr, mininterval=0.5,
               bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")

    def progress(fraction: float, info: dict[str, Any]) -> None:
        shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in info.items() if k in _KEYS}
        if shown:
            bar.set_postfix(shown, refresh=False)
        step = round(100 * min(max(fraction, 0.0), 1.0)) - bar.n
        if step > 0:
            bar.update(step)  # tqdm redraws at most every mininterval

    try:
        yield Callbacks(progress=progress)
    finally:
        bar.close()
