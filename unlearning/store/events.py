"""Audit entries for version events that happen outside a service job: an activation (over
HTTP or from the CLI) and an offline ``lethe redact``. Job changes record their own entries
inside the job store's transactions. The event has happened by the time it is recorded, so
a failure to record it is logged, never raised."""

from __future__ import annotations

import logging
import os
from typing import Any

from unlearning.store.queue import JobQueue as JobStore
from unlearning.store.records import AuditAction

log = logging.getLogger(__name__)  # unlearning.store.events

_PAST = {"activate": "was activated", "promoted": "was promoted", "rejected": "was rejected"}


def cli_actor() -> str:
    """Who an audit entry written by the CLI names: the local user."""
    return f"cli:{os.environ.get('USER') or os.getuid()}"


def record_version_event(store: JobStore, action: AuditAction, manifest, actor: str,
                         detail: dict[str, Any]) -> bool:
    """Append ``action`` about ``manifest``'s version (its model, parent, spec name and
    hash). Returns whether it was written."""
    try:
        spec_name = spec_digest = None
        if manifest.spec:
            from unlearning.spec import load_spec, spec_hash

            spec_name = manifest.spec.get("name")
            try:
                spec_digest = spec_hash(load_spec(manifest.spec))
            except Exception:  # a spec an older Lethe wrote: record the rest
                spec_digest = None
        store.record(action, actor, model=manifest.model, version=manifest.version, parent=manifest.parent,
                     spec_name=spec_name, spec_hash=spec_digest, detail=detail)
        return True
    except Exception as exc:
        log.warning("%s %s by %s, but the audit entry could not be written: %s",
                    manifest.version, _PAST.get(action, action), actor, exc)
        return False


def record_activation(store: JobStore, manifest, actor: str, *, previous: str | None, force: bool) -> bool:
    """The ``activate`` entry for a version that is now active."""
    return record_version_event(store, "activate", manifest, actor,
                                {"previous": previous, "force": force, "status": manifest.status})
