"""What happens to a job's uploads (``LETHE_HOME/uploads/<hex>/``) once it ends.

A job that ends rejected, failed or cancelled made no version that is served, so its
uploads are deleted when it ends: the job's row keeps the spec (file names included), its
audit entries keep the spec's hash, and its report was written while it ran. A promoted
job's uploads stay: its version is served, and the online monitor judges what it serves
with them (uploaded negatives, an uploaded ONNX classifier). With object storage the
published copy goes too, bytes and all (uploads are private folders: see
``unlearning.store.folders``). ``sweep`` removes, when the job worker starts, what a crash
left behind: folders no queued, running, validating or promoted job refers to, and staging
folders of requests that never finished.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from unlearning.errors import LetheError
from unlearning.store import JobRecord, JobStore

if TYPE_CHECKING:
    from unlearning.registry import Registry

log = logging.getLogger(__name__)

DELETED_WHEN = frozenset({"rejected", "failed", "cancelled"})
KEPT_STATES = ("queued", "running", "validating", "promoted")
SWEEP_AGE_S = 600.0  # older than any request can take (the traffic timeout is 120 s)


def remove_ended(job: JobRecord, registry: Registry) -> bool:
    """Delete ``job``'s uploads if it ended without a served version; True if deleted."""
    if job.state not in DELETED_WHEN or not job.uploads_dir:
        return False
    try:
        if not registry.discard_uploads(job.uploads_dir):
            return False
    except LetheError as exc:  # the object storage is away: the job worker's next sweep deletes them
        log.warning("job %s %s: its uploads stay for now: %s", job.id, job.state, exc)
        return False
    log.info("job %s %s: deleted its uploads", job.id, job.state)
    return True


def sweep(store: JobStore, registry: Registry, *, older_than_s: float = SWEEP_AGE_S) -> list[str]:
    """Remove upload folders no kept job refers to (older than ``older_than_s``: a submit
    renames its folder into place just before it stores the job); returns their names."""
    kept = {Path(job.uploads_dir).name for job in store.list(limit=1_000_000, states=list(KEPT_STATES))
            if job.uploads_dir}
    removed = registry.sweep_uploads(kept, older_than_s)
    if removed:
        log.info("deleted %d upload folder(s) no job keeps", len(removed))
    return removed
