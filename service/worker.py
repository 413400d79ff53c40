"""The job worker: a separate process that runs queued redaction jobs one at a time.

Training never runs inside a serving worker. This process claims the oldest queued job
from the job store (SQLite, or PostgreSQL shared by several instances) and runs it in a fresh process of its own (``run_job_isolated``),
which runs ``unlearning.jobs.run_redaction`` (the CLI's code) with callbacks that record
progress, heartbeats and poll for cancellation, and ends the job in a final state. When
the job's process exits, everything training allocated (host memory, a CUDA context and
its cache) goes back to the system, and a job that kills its interpreter (a native crash,
the OOM killer) fails alone. On start the worker first fails every job whose worker died
(``recover``), so after a crash every job tells the truth; while idle it also ends a job
whose heartbeats stopped for longer than the stall limit, whichever worker claimed it (a
job worker on another host that died with its job), so the one-job lock is never held
for ever. ``run_redaction`` writes a version only once it is complete, so a job killed
at any point leaves no half-written version. The database may go away for a while (a
restart): progress and heartbeats are dropped until it is back, and a job's outcome is
written once it is.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.settings import DEFAULT_JOB_STALL_S
from service.uploads import remove_ended, sweep as sweep_uploads
from unlearning.errors import CancelledError, LetheError
from unlearning.store import (
    FINAL_STATES, JobFinishedError, JobRecord, JobStore, JobStoreBusyError, JobStoreError, StoredVersion,
    StoreUnavailableError, open_store, this_worker,
)
from unlearning.store.records import after_storing

if TYPE_CHECKING:
    from unlearning.registry import Registry

log = logging.getLogger("lethe.worker")

HEARTBEAT_S = 5.0
WATCH_EVERY_S = 1.0
PROGRESS_EVERY_S = 0.5
CANCEL_POLL_S = 1.0
STORE_RETRY_S = 600.0  # how long an outcome waits for the database to come back
RECOVER_EVERY_S = 5.0
# another worker's job is ended this long after the stall limit, so that its own worker,
# if alive, kills its process first (a job ended by someone else must not go on to promote)
FOREIGN_STALL_GRACE_S = 3 * HEARTBEAT_S
ENDED_ELSEWHERE_GRACE_S = 10.0


def until_reachable(call, what: str, timeout_s: float = STORE_RETRY_S):
    """``call()``, retried every second while the database cannot be reached or is busy."""
    deadline = time.monotonic() + timeout_s
    warned = False
    while True:
        try:
            return call()
        except (StoreUnavailableError, JobStoreBusyError) as exc:
            if time.monotonic() > deadline:
                raise
            if not warned:
                log.warning("%s: %s; retrying until it is back", what, exc)
                warned = True
            time.sleep(1.0)
VALIDATION_STAGES = frozenset({"validating", "attack", "done"})


class _JobCallbacks:
    """Progress -> store (throttled, with the job's state), cancellation <- store."""

    def __init__(self, store: JobStore, job_id: str):
        self.store = store
        self.job_id = job_id
        self._last_progress = 0.0
        self._last_cancel_check = 0.0
        self._cancelled = False
        self._away = False  # the last progress report could not be written
        self._validating = False

    def progress(self, fraction: float, info: dict[str, Any]) -> None:
        now = time.monotonic()
        stage = info.get("stage")
        # per-step updates are throttled; epoch summaries (with the invalidity estimate) never
        if now - self._last_progress < PROGRESS_EVERY_S and fraction < 1.0 and "invalidity" not in info:
            return
        self._last_progress = now
        # validating covers every stage after training (the gates' sampling, the attack check,
        # done); the store never moves a validating job back to running either
        self._validating = self._validating or stage in VALIDATION_STAGES
        state = "validating" if self._validating else "running"
        try:
            self.store.report_progress(self.job_id, fraction, info, state=state)
        except JobFinishedError:
            self._cancelled = True  # ended behind our back (recovered as failed): stop
        except JobStoreError as exc:  # the database is away: training goes on, progress shows later
            if not self._away:
                log.warning("progress of job %s not recorded until the database is back: %s", self.job_id, exc)
            self._away = True
            return
        self._away = False

    def cancelled(self) -> bool:
        now = time.monotonic()
        if not self._cancelled and now - self._last_cancel_check >= CANCEL_POLL_S:
            self._last_cancel_check = now
            try:
                self._cancelled = self.store.cancel_requested(self.job_id)
            except JobStoreError:
                pass  # the database is away: asked again at the next check
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
    started = time.monotonic()
    stop_beat = threading.Event()

    def beat() -> None:
        while True:
            try:
                store.heartbeat(job.id)
            except JobStoreError as exc:
                log.warning("heartbeat for job %s not recorded: %s", job.id, exc)
            except Exception:
                log.exception("heartbeat for job %s failed", job.id)
            if stop_beat.wait(HEARTBEAT_S):
                return

    # beating before the slow imports (torch): the job worker kills a silent job's process
    threading.Thread(target=beat, name="lethe-heartbeat", daemon=True).start()
    from unlearning.jobs import run_redaction
    from unlearning.methods import Callbacks
    from unlearning.registry import Registry
    from service.metrics import metrics

    hooks = _JobCallbacks(store, job.id)
    method = str(job.spec.get("method", "auto"))
    registry = Registry(home)
    try:
        outcome = run_redaction(
            job.spec, registry=registry, parent=job.parent,
            uploads_dir=registry.uploads(job.uploads_dir) if job.uploads_dir else None,
            report_dir=home / "reports" / "jobs" / job.id,
            callbacks=Callbacks(progress=hooks.progress, cancelled=hooks.cancelled), job_id=job.id,
        )
        method = outcome.method
        try:  # with object storage, every instance can then show the report
            registry.share_report(job.id)
        except LetheError as exc:
            log.warning("the report of job %s stays on this node only: %s", job.id, exc)
        # the outcome and its audit entry (version, parent, whether it became active) in one transaction
        record = until_reachable(lambda: store.finish(
            job.id, outcome.status, version=outcome.version, result=_summary(outcome), reason=outcome.reason,
            detail={"activated": outcome.activated, "method": outcome.method, "worker": job.worker or this_worker(),
                    "duration_s": round(outcome.duration_s, 3)}), f"the outcome of job {job.id}")
    except CancelledError:
        record = _finish_quietly(store, job.id, "cancelled", None, method, job.worker)
    except LetheError as exc:
        record = _finish_failed(store, registry, job, str(exc), method)
    except MemoryError:
        record = _finish_failed(store, registry, job, "out of memory", method)
    except OSError as exc:  # a full disk, a vanished upload
        record = _finish_failed(store, registry, job, f"{type(exc).__name__}: {exc}", method)
    except Exception as exc:
        log.exception("job %s crashed", job.id)
        record = _finish_failed(store, registry, job, f"internal error: {type(exc).__name__}: {exc}", method)
    finally:
        stop_beat.set()
    m = metrics()
    m.jobs.labels(method, record.state).inc()
    m.job_duration.observe(time.monotonic() - started)
    return record


def _finish_quietly(store: JobStore, job_id: str, state: str, reason: str | None,
                    method: str | None = None, worker: str | None = None, version: str | None = None) -> JobRecord:
    detail = {"worker": worker or this_worker(), **({"method": method} if method else {})}
    try:
        return until_reachable(lambda: store.finish(job_id, state, reason=reason, version=version,  # type: ignore[arg-type]
                                                    detail=detail), f"the outcome of job {job_id}")
    except JobFinishedError:
        return until_reachable(lambda: store.get(job_id), f"job {job_id}")


def _finish_failed(store: JobStore, registry: Registry, job: JobRecord, reason: str, method: str) -> JobRecord:
    """A job that failed after storing its version (e.g. the pointer could not be moved)
    names that version and what to do with it, as recovery does."""
    left = _stored_by(registry, job.id)
    if left is None:
        return _finish_quietly(store, job.id, "failed", reason, method, job.worker)
    state, why = after_storing(f"the job failed ({reason})", left)
    return _finish_quietly(store, job.id, state, why, method, job.worker, version=left.version)


# ------------------------------------------------------------------ one process per job


def run_job_isolated(store: JobStore, job: JobRecord, home: Path, *,
                     stall_s: float = DEFAULT_JOB_STALL_S) -> JobRecord:
    """Run one claimed job in a fresh process (``python -m service.worker --job ID``) and
    return its final record. If that process dies without ending the job, or sends no
    heartbeat for ``stall_s`` and is killed, the job fails saying why (or ends cancelled,
    if that was asked for; or records the version it stored, as ``recover`` does). A
    KeyboardInterrupt (SIGTERM, SIGINT) kills the job's process first, then fails the job."""
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "service.worker", "--job", job.id, "--worker-pid", str(os.getpid())],
            env=dict(os.environ, LETHE_HOME=str(home)),
        )
    except OSError as exc:  # out of processes or memory
        return _finish_quietly(store, job.id, "failed", f"the job's process could not start: {exc}",
                               worker=job.worker)
    try:
        killed_because = _wait_watching(child, store, job.id, stall_s)
    except KeyboardInterrupt:
        child.kill()  # first: a job must not promote after it was reported failed
        child.wait()
        _finish_quietly(store, job.id, "failed", "interrupted: the job worker was stopped", worker=job.worker)
        raise
    record = until_reachable(lambda: store.get(job.id), f"job {job.id}")
    if record.state not in FINAL_STATES:
        from service.metrics import metrics
        from unlearning.registry import Registry

        why = killed_because or _how_it_died(child.returncode)
        stored = _stored_by(Registry(home), job.id)
        try:
            record = until_reachable(lambda: store.end_interrupted(job.id, why, stored=stored), f"job {job.id}")
        except JobFinishedError:
            record = until_reachable(lambda: store.get(job.id), f"job {job.id}")
        metrics().jobs.labels(str(job.spec.get("method", "auto")), record.state).inc()
    return record


def _wait_watching(child: subprocess.Popen, store: JobStore, job_id: str, stall_s: float) -> str | None:
    """Wait for a job's process to exit. One that sends no heartbeat for ``stall_s`` (hung
    inside native code, stopped, deadlocked) would hold the one-job-at-a-time lock for
    ever: it is killed, and the reason returned. One whose job was ended by someone else
    (another worker found it silent) is killed too, after a grace: it must not go on."""
    ended_at: float | None = None
    while True:
        try:
            child.wait(timeout=WATCH_EVERY_S)
            return None
        except subprocess.TimeoutExpired:
            pass
        try:
            record = store.get(job_id)
        except LetheError:
            continue  # the database is busy: look again next time
        silent = record.silent_for_s
        if record.final:
            ended_at = ended_at or time.monotonic()
            if time.monotonic() - ended_at > ENDED_ELSEWHERE_GRACE_S:
                child.kill()
                child.wait()
                return None
            continue
        if silent is None or silent <= stall_s:
            continue
        child.kill()
        child.wait()
        return (f"the job's process sent no heartbeat for {silent:.0f} s (hung?) and was killed; "
                f"the limit is LETHE_JOB_STALL_S={stall_s:g}")


def _how_it_died(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the out-of-memory killer?)" if exitcode == -signal.SIGKILL else ""
        return f"the job's process was killed by {name}{hint}"
    return f"the job's process exited with status {exitcode} before ending the job"


def _job_process(home: Path, job_id: str, worker_pid: int) -> None:
    """A job's own process: run the job, then exit (and free what it took)."""
    _die_with(worker_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the job worker decides when a job stops
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    store = open_store(home)
    job = until_reachable(lambda: store.get(job_id), f"job {job_id}")
    if job.state in FINAL_STATES:
        return  # ended (cancelled, recovered) before this process started
    from unlearning.runtime import pick_device

    log.info("job %s runs in process %d on %s", job_id, os.getpid(), pick_device())
    run_job(store, job, home)


def _die_with(worker_pid: int) -> None:
    """Never outlive the job worker: recovery would fail the job while it still trained.
    Linux kills this process when its parent dies (PR_SET_PDEATHSIG); where that is not
    available, a thread watches the parent."""
    try:
        armed = ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL) == 0  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        armed = False
    if os.getppid() != worker_pid:
        os._exit(1)  # the worker died before this process could watch it

    def watch() -> None:
        while os.getppid() == worker_pid:
            time.sleep(1.0)
        os._exit(1)

    if not armed:
        threading.Thread(target=watch, name="lethe-parent-watch", daemon=True).start()


def _configure_logging() -> None:
    logging.basicConfig(level=os.environ.get("LETHE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s [%(levelname)s] [job-worker] %(message)s")


def _stored_by(registry: Registry, job_id: str) -> StoredVersion | None:
    """What a dead job stored before it could finish, if anything (None when the registry
    cannot tell: the job then fails as interrupted, and recovery goes on)."""
    try:
        found = [m for m in registry.list_versions() if m.job == job_id]
        if not found:
            return None
        manifest = found[-1]
        return StoredVersion(manifest.version, manifest.status, registry.active(manifest.model) == manifest.version)
    except LetheError as exc:
        log.warning("cannot tell what job %s stored: %s", job_id, exc)
        return None


def serve_jobs(home: Path, *, poll_s: float = 1.0, once: bool = False, stall_s: float = DEFAULT_JOB_STALL_S) -> None:
    """Recover, then take queued jobs one at a time, each in its own process, until
    SIGTERM/SIGINT. This process never imports torch: it stays small between jobs."""
    from unlearning.registry import Registry

    store = open_store(home)
    registry = Registry(home)
    ended = until_reachable(lambda: store.recover(stored=lambda job_id: _stored_by(registry, job_id)),
                            "recovering interrupted jobs")
    if ended:
        log.warning("ended %d job(s) interrupted by a previous crash: %s", len(ended), ", ".join(ended))
    for job_id in ended:
        _remove_uploads(store, registry, job_id)
    try:
        sweep_uploads(store, registry)  # what a crash left: of jobs that ended, of unfinished requests
    except LetheError as exc:
        log.warning("cannot look for leftover uploads now: %s", exc)
    last_recover = time.monotonic()
    unreachable = False

    stopping = threading.Event()

    def stop(signum, frame) -> None:
        log.info("job worker stopping (signal %d); a running job is stopped and fails as interrupted", signum)
        stopping.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    log.info("job worker %s ready; each job runs in a process of its own (jobs in %s)", this_worker(), store.where)
    while not stopping.is_set():
        try:
            job = store.claim_next(this_worker())
            if unreachable:
                log.info("the job database is back")
            unreachable = False
        except LetheError as exc:
            if not unreachable:
                log.error("cannot claim jobs: %s", exc)
            unreachable = isinstance(exc, JobStoreError)
            job = None
        if job is None:
            if once:
                return
            if not unreachable and time.monotonic() - last_recover > RECOVER_EVERY_S:
                last_recover = time.monotonic()
                _end_silent_jobs(store, registry, stall_s)
            stopping.wait(poll_s)
            continue
        log.info("job %s: %s", job.id, job.spec_name)
        record = run_job_isolated(store, job, home, stall_s=stall_s)
        log.info("job %s ended %s%s", job.id, record.state, f": {record.reason}" if record.reason else "")
        remove_ended(record, registry)
        if once:
            return


def _end_silent_jobs(store: JobStore, registry: Registry, stall_s: float) -> None:
    """End any active job whose heartbeats stopped well past the stall limit, whoever
    claimed it: its worker died with it (on another host, or killed with its instance),
    and would otherwise hold the one-job lock for ever."""
    try:
        ended = store.recover(stale_after_s=stall_s + FOREIGN_STALL_GRACE_S, by_heartbeat_only=True,
                              stored=lambda job_id: _stored_by(registry, job_id))
    except LetheError as exc:
        log.warning("cannot look for silent jobs: %s", exc)
        return
    if ended:
        log.warning("ended %d job(s) whose worker stopped sending heartbeats: %s", len(ended), ", ".join(ended))
    for job_id in ended:
        _remove_uploads(store, registry, job_id)


def _remove_uploads(store: JobStore, registry: Registry, job_id: str) -> None:
    """Delete the uploads of a job that ``recover`` ended (when it ended unserved)."""
    try:
        remove_ended(store.get(job_id), registry)
    except LetheError as exc:  # the database went away again: the next start's sweep removes them
        log.warning("the uploads of job %s stay for now: %s", job_id, exc)


def main(argv: list[str] | None = None) -> int:
    import argparse

    from unlearning.runtime import lethe_home

    parser = argparse.ArgumentParser(prog="python -m service.worker", description="Lethe's job worker")
    parser.add_argument("--job", help="run this claimed job in this process, then exit (the worker does this)")
    parser.add_argument("--worker-pid", type=int, help="with --job: the job worker to die with")
    args = parser.parse_args(argv)
    _configure_logging()
    if args.job:
        _job_process(lethe_home(), args.job, args.worker_pid or os.getppid())
        return 0
    from service.settings import Settings

    try:
        serve_jobs(lethe_home(), stall_s=Settings.from_env().job_stall_s)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
