"""What a job hands back (and the service stores): the new version, its status, the gates
and every measurement before and after."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel


class Gate(BaseModel):
    name: str
    value: float | None
    limit: float
    passed: bool
    detail: str = ""


class JobOutcome(BaseModel):
    version: str
    parent: str
    status: Literal["promoted", "rejected"]
    activated: bool
    method: str
    reason: str | None
    gates: list[Gate]
    before: dict[str, Any]
    after: dict[str, Any]
    history: list[dict[str, Any]]
    stats: dict[str, Any]
    duration_s: float
    report_dir: str | None = None
