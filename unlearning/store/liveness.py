"""Is a job's worker alive? On its own host a worker is a pid that must exist and have
started before the claim (a restarted container often reuses the dead worker's pid);
from anywhere else (another host, another instance) only its heartbeat's age can tell."""

from __future__ import annotations

import os
import socket
from datetime import datetime, timezone
from pathlib import Path

from unlearning.processes import pid_alive
from unlearning.store.records import age_s

# A local pid counts as the claimer only if its process started before the claim (plus this
# much slack for clock granularity).
_START_SLACK_S = 2.0


def this_worker() -> str:
    """``host:pid`` of this process: the worker name ``recover`` knows how to check."""
    return f"{socket.gethostname()}:{os.getpid()}"


def parse_worker(worker: str | None) -> tuple[str, int] | None:
    if not worker or ":" not in worker:
        return None
    host, _, pid = worker.rpartition(":")
    return (host, int(pid)) if pid.isdigit() else None


def process_started(pid: int) -> float | None:
    """Wall-clock start of a local process (Linux ``/proc``), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2 :].split()[19])  # field 22: starttime
        boot = next(
            int(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def local_claimer_alive(pid: int, started_at: str | None) -> bool:
    if not pid_alive(pid):
        return False
    process_start = process_started(pid)
    claimed = age_s(started_at)
    if process_start is None or claimed is None:
        return True  # cannot tell a reused pid: trust it
    claimed_at = datetime.now(timezone.utc).timestamp() - claimed
    return process_start <= claimed_at + _START_SLACK_S


def worker_gone(worker: str | None, started_at: str | None, last_sign: str | None, *,
                stale_after_s: float, by_heartbeat_only: bool = False) -> tuple[bool, str]:
    """(gone, why) for the worker of an active job. ``last_sign``: its heartbeat (or claim)."""
    name = worker or "unknown worker"
    parsed = parse_worker(worker)
    if not by_heartbeat_only and parsed is not None and parsed[0] == socket.gethostname():
        return not local_claimer_alive(parsed[1], started_at), f"the job worker stopped ({name})"
    age = age_s(last_sign)
    why = f"the job worker ({name}) stopped sending heartbeats" + (f" {age:.0f} s ago" if age is not None else "")
    return age is None or age > stale_after_s, why
