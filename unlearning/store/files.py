"""Files on a local disk written so that a crash never leaves half of one visible:
checksums, fsync, atomic replace, and the cleanup of a crashed writer's leftovers."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from unlearning.errors import IntegrityError, LetheError
from unlearning.processes import pid_alive

log = logging.getLogger("unlearning.store")

MANIFEST = "manifest.json"
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (so a rename inside it is durable)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a temp file in the same folder, fsync, ``os.replace``, fsync the folder."""
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    write_text_atomic(path, manifest_text(payload))


def manifest_text(payload: dict[str, Any]) -> str:
    return json.dumps(payload, indent=2, sort_keys=True)


def is_stale_tmp(name: str) -> bool:
    """``.tmp-<pid>-...`` whose writer is gone (this host). Unparseable names are stale."""
    match = re.match(rf"^{re.escape(TMP_PREFIX)}(\d+)-", name)
    return match is None or not pid_alive(int(match.group(1)))


def remove_stale(parent: Path) -> None:
    """Remove temporary leftovers of crashed writers. Call with the registry lock held."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if entry.name.startswith(TMP_PREFIX) and is_stale_tmp(entry.name):
            log.warning("removing %s left by an interrupted write", entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def hash_and_sync(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative POSIX names), each fsynced."""
    files: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise LetheError(f"{rel}: symbolic links cannot be stored in the registry")
        if path.is_dir():
            fsync_path(path)
            continue
        if rel == MANIFEST:
            raise LetheError(f"'{MANIFEST}' is written by the registry; do not write it yourself")
        fsync_path(path)
        files[rel] = sha256_file(path)
    return files


def verify_files(folder: Path, files: dict[str, str], label: str) -> None:
    """Recompute every checksum; IntegrityError names the first file that does not match."""
    root = folder.resolve()
    for rel, expected in sorted(files.items()):
        path = (folder / rel).resolve()
        if root not in path.parents:
            raise IntegrityError(f"{label}/{rel}: manifest names a file outside its folder")
        if not path.is_file():
            raise IntegrityError(f"{label}/{rel}: missing (listed in the manifest, not on disk)")
        if sha256_file(path) != expected:
            raise IntegrityError(f"{label}/{rel}: checksum mismatch (file changed or corrupted on disk)")
