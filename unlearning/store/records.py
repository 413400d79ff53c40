"""What the store keeps, as the rest of Lethe sees it: job and audit records, their states,
the store's errors, and the JSON rules both back ends share (nothing is pickled)."""

from __future__ import annotations

import contextlib
import json
import math
from datetime import datetime, timezone
from typing import Any, Iterable, Literal, NamedTuple, get_args

from pydantic import BaseModel, Field

from unlearning.errors import LetheError

JobState = Literal["queued", "running", "validating", "promoted", "rejected", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = get_args(JobState)
ACTIVE_STATES: frozenset[str] = frozenset({"running", "validating"})
FINAL_STATES: frozenset[str] = frozenset({"promoted", "rejected", "failed", "cancelled"})

# what an audit entry records: admin actions, then the outcomes the job worker produces
AuditAction = Literal["submit", "cancel", "activate", "promoted", "rejected", "failed", "cancelled"]
AUDIT_ACTIONS: tuple[str, ...] = get_args(AuditAction)
AUDIT_MAX_LIMIT = 1000
WORKER_ACTOR = "job-worker"


class JobStoreError(LetheError):
    """The job database cannot be opened, read or reached (corrupted, newer schema, down)."""


class JobStoreBusyError(JobStoreError):
    """The job database stayed locked by another process for longer than the busy timeout."""


class StoreUnavailableError(JobStoreError):
    """The database server cannot be reached right now (restarting, network): try again."""


class QueueFullError(LetheError):
    """As many jobs are queued as the limit allows (``submit``'s ``max_queued``)."""


class JobFinishedError(LetheError):
    """The job already ended (promoted, rejected, failed or cancelled): it cannot change."""


class StoredVersion(NamedTuple):
    """What a job that died had already stored: its version, that version's status, and
    whether it is the active version of its model."""

    version: str
    status: str
    active: bool


class JobRecord(BaseModel):
    """One job, as stored (and as the admin API shows it)."""

    id: str = Field(description="uuid4 hex")
    state: JobState
    spec: dict[str, Any]
    spec_hash: str
    spec_name: str | None = None
    parent: str | None = Field(None, description="the version the job starts from")
    actor: str | None = Field(None, description="who submitted it")
    uploads_dir: str | None = None
    created_at: str = Field(description="ISO 8601, UTC")
    updated_at: str
    started_at: str | None = None
    finished_at: str | None = None
    progress: float = Field(0.0, ge=0.0, le=1.0)
    progress_info: dict[str, Any] = Field(
        default_factory=dict, description="stage, epoch, current invalidity estimate, ..."
    )
    cancel_requested: bool = False
    worker: str | None = Field(None, description="'host:pid' of the worker running it")
    heartbeat_at: str | None = None
    version: str | None = Field(None, description="the version the job produced")
    result: dict[str, Any] | None = Field(None, description="the job outcome")
    reason: str | None = Field(None, description="why it was not promoted")

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def silent_for_s(self) -> float | None:
        """Seconds since its worker last showed life (a heartbeat, or the claim)."""
        return age_s(self.heartbeat_at or self.started_at)


class AuditEntry(BaseModel):
    """One entry of the audit trail, as stored (and as ``GET /admin/audit`` shows it)."""

    seq: int = Field(description="position in the log, increasing")
    time: str = Field(description="ISO 8601, UTC")
    actor: str = Field(description="'token:<fingerprint>' for the admin API, 'job-worker' for job outcomes")
    action: AuditAction
    job_id: str | None = None
    model: str | None = None
    spec_name: str | None = None
    spec_hash: str | None = None
    version: str | None = Field(None, description="the version produced or activated")
    parent: str | None = Field(None, description="the version a job starts from, or the activated version's parent")
    detail: dict[str, Any] = Field(default_factory=dict, description="method, reason, previous active version, ...")


def after_storing(why: str, left: StoredVersion) -> tuple[str, str]:
    """(state, reason) of a job that died after storing ``left``."""
    if left.status == "promoted" and left.active:  # it did all it set out to; only the record is missing
        return "promoted", f"recovered: {why} after {left.version} was stored and activated, before the job recorded it"
    if left.status == "promoted":
        return "failed", (f"interrupted: {why} after storing {left.version}, which passed its gates, and before "
                          f"activating it; to serve it: POST /admin/models/{left.version}/activate")
    return "failed", f"interrupted: {why} after storing {left.version} as {left.status}; restart the job to try again"


# ---------------------------------------------------------------------------------- helpers


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def age_s(timestamp: str | None) -> float | None:
    if not timestamp:
        return None
    try:
        then = datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if then.tzinfo is None:
        then = then.replace(tzinfo=timezone.utc)
    return (datetime.now(timezone.utc) - then).total_seconds()


def finite(value: Any) -> Any:
    """Non-finite floats -> None, numpy/torch scalars and arrays -> Python values."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    for convert in ("item", "tolist"):  # numpy / torch scalars and small arrays
        method = getattr(value, convert, None)
        if callable(method):
            with contextlib.suppress(Exception):
                return finite(method())
    raise TypeError(f"{type(value).__name__} cannot be stored as JSON")


def dumps_plain(value: dict[str, Any], what: str) -> str:
    """JSON of a user document (the spec): refused, not altered, when it is not plain JSON."""
    if not isinstance(value, dict):
        raise LetheError(f"{what} must be a JSON object, not {type(value).__name__}")
    try:
        return json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise LetheError(f"{what} is not plain JSON ({exc})") from None


def dumps(value: dict[str, Any] | None) -> str | None:
    return None if value is None else json.dumps(finite(value), sort_keys=True, allow_nan=False)


def detail_json(detail: dict[str, Any] | None) -> str:
    """An audit entry's detail as JSON; never fails (odd values are written as text)."""
    try:
        return dumps(dict(detail or {})) or "{}"
    except (TypeError, ValueError):
        return json.dumps({str(k): repr(v) for k, v in (detail or {}).items()}, sort_keys=True)


def whole(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f"of at least {low}"
        raise LetheError(f"{name} must be a whole number {bounds}, not {value!r}")
    return value


def check_states(states: Iterable[str] | None) -> list[str] | None:
    if states is None:
        return None
    if isinstance(states, str):
        states = [states]
    chosen = list(states)
    unknown = [s for s in chosen if s not in JOB_STATES]
    if unknown:
        raise LetheError(
            f"unknown job state(s) {', '.join(map(repr, unknown))}; states are: {', '.join(JOB_STATES)}"
        )
    return chosen
