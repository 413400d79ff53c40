"""A job's progress, mapped from each stage's own [0, 1] onto its slice of the job's."""

from __future__ import annotations

from typing import Any

from unlearning.methods import Callbacks


def stage(callbacks: Callbacks, name: str, start: float, end: float) -> Callbacks:
    """Map a sub-task's progress onto [start, end] of the job's, tagged with its stage."""

    def progress(fraction: float, info: dict[str, Any]) -> None:
        callbacks.progress(start + (end - start) * fraction, {"stage": name, **info})

    return Callbacks(progress=progress, cancelled=callbacks.cancelled)
