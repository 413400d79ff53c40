"""The service's settings, read once from the environment (every worker reads the same)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, Field

from unlearning.runtime import DEFAULT_INPAINTER, DEFAULT_MODEL

MIB = 1 << 20
DEFAULT_JOB_STALL_S = 120.0  # 24 missed heartbeats (one per 5 s): the job's process is hung, not busy
DEFAULT_MAX_QUEUED_JOBS = 20  # a job trains for minutes: 20 queued is hours of work


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r} is not a number") from None


class Settings(BaseModel):
    home: Path = Field(description="LETHE_HOME: registry, jobs, uploads, reports")
    model: str = Field(DEFAULT_MODEL, description="LETHE_MODEL: the generator served when a request names none")
    inpainter_model: str = Field(DEFAULT_INPAINTER, description="LETHE_INPAINTER_MODEL: /inpaint's default model")
    admin_token: str | None = Field(None, description="LETHE_ADMIN_TOKEN; admin routes answer 401 without it")
    max_upload_bytes: int = Field(description="LETHE_MAX_UPLOAD_MB: largest admin request body (413 above)")
    max_request_bytes: int = Field(description="largest sampling request body (413 above)")
    monitor_share: float = Field(description="LETHE_MONITOR_SHARE: share of served images the monitor checks")
    swap_poll_s: float = Field(description="LETHE_SWAP_POLL_S: how often each worker reads the active pointer")
    swap_retry_s: float = Field(description="LETHE_SWAP_RETRY_S: how soon a version that would not load is retried")
    threads: int = Field(description="LETHE_THREADS: ONNX Runtime / torch threads per worker")
    job_stall_s: float = Field(description="LETHE_JOB_STALL_S: a job whose process sends no heartbeat "
                                           "this long is killed and fails")
    max_queued_jobs: int = Field(description="LETHE_MAX_QUEUED_JOBS: a submit beyond this many queued jobs is 429")

    @classmethod
    def from_env(cls) -> "Settings":
        from unlearning.runtime import lethe_home

        workers = max(1, int(_env_float("LETHE_WORKERS", 1)))
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        share = _env_float("LETHE_MONITOR_SHARE", 0.05)
        if not 0.0 <= share <= 1.0:
            raise SystemExit(f"LETHE_MONITOR_SHARE must be in [0, 1], got {share}")
        stall_s = _env_float("LETHE_JOB_STALL_S", DEFAULT_JOB_STALL_S)
        if stall_s <= 0:
            raise SystemExit(f"LETHE_JOB_STALL_S must be a positive number of seconds, got {stall_s:g}")
        max_queued = _env_float("LETHE_MAX_QUEUED_JOBS", DEFAULT_MAX_QUEUED_JOBS)
        if max_queued < 1 or max_queued != int(max_queued):
            raise SystemExit(f"LETHE_MAX_QUEUED_JOBS must be a whole number of at least 1, got {max_queued:g}")
        return cls(
            home=lethe_home(),
            model=os.environ.get("LETHE_MODEL", DEFAULT_MODEL),
            inpainter_model=os.environ.get("LETHE_INPAINTER_MODEL", DEFAULT_INPAINTER),
            admin_token=os.environ.get("LETHE_ADMIN_TOKEN") or None,
            max_upload_bytes=int(_env_float("LETHE_MAX_UPLOAD_MB", 64) * MIB),
            max_request_bytes=1 * MIB,
            monitor_share=share,
            swap_poll_s=_env_float("LETHE_SWAP_POLL_S", 0.25),
            swap_retry_s=_env_float("LETHE_SWAP_RETRY_S", 30.0),
            # split the cores between workers: oversubscribed threads are many times slower
            threads=max(1, int(_env_float("LETHE_THREADS", max(1, cores // workers)))),
            job_stall_s=stall_s,
            max_queued_jobs=int(max_queued),
        )
