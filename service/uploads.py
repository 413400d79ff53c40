"""What happens to a job's uploads (``LETHE_HOME/uploads/<hex>/``) once it ends.

A job that ends rejected, failed or cancelled made no version that is served, so its
uploads are deleted when it ends: the job's row keeps the spec (file names included), its
audit entries keep the spec's hash, and its report was written while it ran. A promoted
job's uploads stay: its version is served, and the online monitor judges what it serves
with them (uploaded negatives, an uploaded ONNX classifier). ``sweep`` removes, when the
job worker starts, what a crash left behind: folders no queued, running, validating or
promoted job refers to, and staging folders of requests that never finished.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

from unlearning.store import JobRecord, JobStore

log = logging.getLogger(__name__)

DELETED_WHEN = frozenset({"rejected", "failed", "cancelled"})
KEPT_STATES = ("queued", "running", "validating", "promoted")
SWEEP_AGE_S = 600.0  # older than any request can take (the traffic timeout is 120 s)


def _inside(folder: Path, root: Path) -> bool:
    return folder.parent.resolve() == root.resolve() and not folder.is_symlink()


def remove_ended(job: JobRecord, root: Path) -> bool:
    """Delete ``job``'s uploads if it ended without a served version; True if deleted."""
    if job.state not in DELETED_WHEN or not job.uploads_dir:
        return False
    folder = Path(job.uploads_dir)
    if not folder.is_dir() or not _inside(folder, root):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    log.info("job %s %s: deleted its uploads", job.id, job.state)
    return True


def sweep(store: JobStore, root: Path, *, older_than_s: float = SWEEP_AGE_S) -> list[str]:
    """Remove upload folders no kept job refers to (older than ``older_than_s``: a submit
    renames its folder into place just before it stores the job); returns their names."""
    if not root.is_dir():
        return []
    kept = {Path(job.uploads_dir).name for job in store.list(limit=1_000_000, states=list(KEPT_STATES))
            if job.uploads_dir}
    removed = []
    now = time.time()
    for folder in root.iterdir():
        if folder.name in kept or not folder.is_dir() or folder.is_symlink():
            continue
        try:
            if now - folder.stat().st_mtime < older_than_s:
                continue
        except OSError:
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder.name)
    if removed:
        log.info("deleted %d upload folder(s) no job keeps", len(removed))
    return removed
