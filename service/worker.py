"""The job worker: a separate process that runs queued redaction jobs one at a time.

Training never runs inside a serving worker. This process claims the oldest queued job
from the SQLite store, runs ``unlearning.jobs.run_redaction`` (the CLI's code) with
callbacks that record progress, heartbeats and poll for cancellation, and ends the job
in a final state. On start it first fails every job whose worker died (``recover``), so
after a crash every job tells the truth. ``run_redaction`` writes a version only once it
is complete, so a job killed at any point leaves no half-written version.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.job_store import JobFinishedError, JobRecord, JobStore, this_worker
from unlearning.errors import CancelledError, LetheError

if TYPE_CHECKING:
    from unlearning.registry import Registry

log = logging.getLogger("lethe.worker")

HEARTBEAT_S = 5.0
PROGRESS_EVERY_S = 0.5
CANCEL_POLL_S = 1.0


class _JobCallbacks:
    """Progress -> store (throttled, with the job's state), cancellation <- store."""

    def __init__(self, store: JobStore, job_id: str):
        self.store = store
        self.job_id = job_id
        self._last_progress = 0.0
        self._last_cancel_check = 0.0
        self._cancelled = False

    def progress(self, fraction: float, info: dict[str, Any]) -> None:
        now = time.monotonic()
        stage = info.get("stage")
        # per-step updates are throttled; epoch summaries (with the invalidity estimate) never
        if now - self._last_progress < PROGRESS_EVERY_S and fraction < 1.0 and "invalidity" not in info:
            return
        self._last_progress = now
        state = "validating" if stage in ("validating", "done") else "running"
        try:
            self.store.report_progress(self.job_id, fraction, info, state=state)
        except JobFinishedError:
            self._cancelled = True  # ended behind our back (recovered as failed): stop

    def cancelled(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._last_cancel_check >= CANCEL_POLL_S:
            self._last_cancel_check = now
            self._cancelled = self.store.cancel_requested(self.job_id)
        return self._cancelled


def _summary(outcome) -> dict[str, Any]:
    return {
        "version": outcome.version, "parent": outcome.parent, "status": outcome.status,
        "method": outcome.method, "activated": outcome.activated, "reason": outcome.reason,
        "gates": [g.model_dump() for g in outcome.gates], "before": outcome.before, "after": outcome.after,
        "history": outcome.history, "stats": outcome.stats, "duration_s": outcome.duration_s,
    }


def run_job(store: JobStore, job: JobRecord, home: Path) -> JobRecord:
    """Run one claimed job to a final state (never raises for a job's own failure)."""
    from unlearning.jobs import run_redaction
    from unlearning.methods import Callbacks
    from unlearning.registry import Registry
    from service.metrics import metrics

    started = time.monotonic()
    stop_beat = threading.Event()

    def beat() -> None:
        while not stop_beat.wait(HEARTBEAT_S):
            try:
                store.heartbeat(job.id)
            except Exception:
                log.exception("heartbeat for job %s failed", job.id)

    threading.Thread(target=beat, name="lethe-heartbeat", daemon=True).start()
    hooks = _JobCallbacks(store, job.id)
    method = str(job.spec.get("method", "auto"))
    try:
        outcome = run_redaction(
            job.spec, registry=Registry(home), parent=job.parent,
            uploads_dir=Path(job.uploads_dir) if job.uploads_dir else None,
            report_dir=home / "reports" / "jobs" / job.id,
            callbacks=Callbacks(progress=hooks.progress, cancelled=hooks.cancelled), job_id=job.id,
        )
        method = outcome.method
        # the outcome and its audit entry (version, parent, whether it became active) in one transaction
        record = store.finish(job.id, outcome.status, version=outcome.version, result=_summary(outcome),
                              reason=outcome.reason, detail={
                                  "activated": outcome.activated, "method": outcome.method,
                                  "worker": this_worker(), "duration_s": round(outcome.duration_s, 3)})
    except CancelledError:
        record = _finish_quietly(store, job.id, "cancelled", None, method)
    except LetheError as exc:
        record = _finish_quietly(store, job.id, "failed", str(exc), method)
    except MemoryError:
        record = _finish_quietly(store, job.id, "failed", "out of memory", method)
    except OSError as exc:  # a full disk, a vanished upload
        record = _finish_quietly(store, job.id, "failed", f"{type(exc).__name__}: {exc}", method)
    except Exception as exc:
        log.exception("job %s crashed", job.id)
        record = _finish_quietly(store, job.id, "failed", f"internal error: {type(exc).__name__}: {exc}", method)
    finally:
        stop_beat.set()
    m = metrics()
    m.jobs.labels(method, record.state).inc()
    m.job_duration.observe(time.monotonic() - started)
    return record


def _finish_quietly(store: JobStore, job_id: str, state: str, reason: str | None,
                    method: str | None = None) -> JobRecord:
    detail = {"worker": this_worker(), **({"method": method} if method else {})}
    try:
        return store.finish(job_id, state, reason=reason, detail=detail)  # type: ignore[arg-type]
    except JobFinishedError:
        return store.get(job_id)


def _stored_by(registry: Registry, job_id: str) -> tuple[str, str] | None:
    """The version (and its status) a dead job stored before it could finish, if any."""
    found = [m for m in registry.list_versions() if m.job == job_id]
    return (found[-1].version, found[-1].status) if found else None


def serve_jobs(home: Path, *, poll_s: float = 1.0, once: bool = False) -> None:
    """Recover, then take queued jobs one at a time until SIGTERM/SIGINT."""
    from unlearning.registry import Registry

    store = JobStore(home / "jobs.sqlite")
    registry = Registry(home)
    failed = store.recover(stored=lambda job_id: _stored_by(registry, job_id))
    if failed:
        log.warning("failed %d job(s) interrupted by a previous crash: %s", len(failed), ", ".join(failed))

    import torch

    from unlearning.runtime import pick_device

    stopping = threading.Event()

    def stop(signum, frame) -> None:
        log.info("job worker stopping (signal %d); a running job is cancelled", signum)
        stopping.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(max(1, torch.get_num_threads()))
    log.info("job worker %s ready on %s (jobs in %s)", this_worker(), device, store.path)
    while not stopping.is_set():
        try:
            job = store.claim_next(this_worker())
        except LetheError as exc:
            log.error("cannot claim jobs: %s", exc)
            job = None
        if job is None:
            if once:
                return
            stopping.wait(poll_s)
            continue
        log.info("job %s: %s", job.id, job.spec_name)
        try:
            record = run_job(store, job, home)
        except KeyboardInterrupt:
            _finish_quietly(store, job.id, "failed", "interrupted: the job worker was stopped")
            raise
        log.info("job %s ended %s%s", job.id, record.state, f": {record.reason}" if record.reason else "")
        if once:
            return


def main() -> int:
    import os

    from unlearning.runtime import lethe_home

    logging.basicConfig(level=os.environ.get("LETHE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s [%(levelname)s] [job-worker] %(message)s")
    try:
        serve_jobs(lethe_home())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
