"""Immutable named folders of files with a sha256 manifest: the one way the registry keeps
versions, classifiers (and any other kind of folder, such as a domain's).

A folder is written complete or not at all: its files are written into a private
temporary folder, checksummed and fsynced, then published:

* locally (the default): ``<root>/<name>/`` appears in one ``rename`` of the finished
  temporary folder, manifest included;
* with object storage (``LETHE_REGISTRY_URL``): the files are uploaded first, then the
  manifest object, so no reader ever sees a folder whose files are not all stored. The
  local ``<root>`` is then a cache: a folder is downloaded into a temporary folder, every
  file checked against the manifest's sha256, and renamed into place. What was cached
  stays readable while the object storage is down.

A folder's files never change; its manifest's other fields (a version's status and
metrics) may be rewritten, and a name may be published again when the caller allows it
(``replace``: a classifier uploaded anew). A *private* kind (a job's uploads) keeps its
files in object storage under the folder rather than by checksum beside every other
folder's, so that it can be deleted, bytes and all (``delete``, ``sweep``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ContextManager

from unlearning.errors import IntegrityError, LetheError
from unlearning.names import is_name
from unlearning.store.files import (
    MANIFEST, TMP_PREFIX, TRASH_PREFIX, fsync_path, manifest_text, remove_stale, verify_files, write_text_atomic,
)
from unlearning.store.objects import NameTakenError, ObjectStore, StorageUnavailableError

log = logging.getLogger("unlearning.store")

PUBLISH_ATTEMPTS = 50


class Folders:
    """The folders of one ``kind`` (``versions``, ``classifiers``, ...) under ``root``;
    ``lock()`` is the registry's cross-process lock; ``remote`` the object storage, if any;
    ``private``: each folder's files are its own in the object storage (see the module)."""

    def __init__(self, root: Path, kind: str, lock: Callable[[], ContextManager], remote: ObjectStore | None = None,
                 *, create: bool = True, private: bool = False):
        self.root = root
        self.kind = kind
        self.lock = lock
        self.remote = remote
        self.private = private
        if create:  # otherwise made by the first folder written into it
            root.mkdir(parents=True, exist_ok=True)

    # --------------------------------------------------------------------------- writing

    def staging(self) -> Path:
        """A new private temporary folder to write a folder's files into."""
        tmp = self.root / f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        return tmp

    def publish(self, staged: Path, files: dict[str, str], make: Callable[[], tuple[str, dict[str, Any]]],
                *, replace: bool = False) -> dict[str, Any]:
        """Publish ``staged`` (its ``files`` already checksummed) under the name ``make()``
        returns with its manifest; ``make`` runs under the lock, and again when another
        instance took that name first. Without ``replace`` the name must be new. A private
        folder's name is its caller's (``make`` gives the same one every time): its files
        are stored under it."""
        if self.remote is not None:  # the files before the manifest: never half-visible
            self.remote.upload_blobs(staged, files, private=(self.kind, make()[0]) if self.private else None)
        for _ in range(PUBLISH_ATTEMPTS):
            with self.lock():
                remove_stale(self.root)
                self._restore_trash()
                name, manifest = make()
                text = manifest_text(manifest)
                if not replace and (self.root / name).exists() and self.remote is None:
                    raise LetheError(f"{self.kind}/{name} already exists")
                if self.remote is not None:
                    try:
                        self.remote.put_manifest(self.kind, name, text, exclusive=not replace)
                    except NameTakenError:
                        continue  # another instance published that name first: ask for the next one
                self._install(staged, name, text)
                return manifest
        raise LetheError(f"could not find a free name for a new {self.kind} folder after {PUBLISH_ATTEMPTS} tries")

    def _install(self, staged: Path, name: str, text: str) -> None:
        """Rename a complete folder into place (replacing what was there). Lock held."""
        write_text_atomic(staged / MANIFEST, text)
        fsync_path(staged)
        final = self.root / name
        trash = None
        if final.exists():
            trash = self.root / f"{TRASH_PREFIX}{uuid.uuid4().hex}-{name}"
            os.rename(final, trash)
        os.rename(staged, final)
        fsync_path(self.root)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)

    def _restore_trash(self) -> None:
        """A replace interrupted between its two renames: put the old folder back if the
        new one never arrived, otherwise drop it. Call with the lock held."""
        for entry in self.root.glob(f"{TRASH_PREFIX}*"):
            name = entry.name[len(TRASH_PREFIX) + 33 :]
            target = self.root / name
            if name and not target.exists():
                os.rename(entry, target)
            else:
                shutil.rmtree(entry, ignore_errors=True)

    def rewrite_manifest(self, name: str, manifest: dict[str, Any]) -> None:
        """Replace a published folder's manifest (same files). Call with the lock held."""
        text = manifest_text(manifest)
        if self.remote is not None:
            self.remote.put_manifest(self.kind, name, text, exclusive=False)
        if (self.root / name).is_dir():
            write_text_atomic(self.root / name / MANIFEST, text)

    # --------------------------------------------------------------------------- reading

    def names(self) -> list[str]:
        """Every published folder's name (the cached ones when the object storage is down)."""
        if self.remote is not None:
            try:
                return sorted(self.remote.manifests(self.kind))
            except StorageUnavailableError as exc:
                log.warning("listing the cached %s only: %s", self.kind, exc)
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if not p.name.startswith(".") and p.is_dir())

    def manifests(self) -> dict[str, str]:
        """name -> manifest text of every published folder (cached ones, when down)."""
        if self.remote is not None:
            try:
                listed = self.remote.manifests(self.kind)
                found = {name: self.remote.manifest(self.kind, name, etag) for name, etag in listed.items()}
                return {name: text for name, text in found.items() if text is not None}
            except StorageUnavailableError as exc:
                log.warning("listing the cached %s only: %s", self.kind, exc)
        found: dict[str, str] = {}
        for entry in (self.root.iterdir() if self.root.is_dir() else []):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            with contextlib.suppress(OSError, UnicodeDecodeError):
                found[entry.name] = (entry / MANIFEST).read_text()
        return found

    def manifest(self, name: str) -> str | None:
        """The manifest text of ``name``; None when there is no such folder. From the object
        storage when there is one (its cached copy while it cannot be reached)."""
        cached = self.root / name / MANIFEST
        if self.remote is not None:
            try:
                return self.remote.manifest(self.kind, name)
            except StorageUnavailableError:
                if not cached.is_file():
                    raise
                log.warning("%s/%s: the object storage cannot be reached; using the cached manifest", self.kind, name)
        try:
            return cached.read_text() if cached.is_file() else None
        except OSError:
            return None

    def local(self, name: str, files: dict[str, str], text: str | None = None) -> Path:
        """The local folder holding ``name``'s ``files``; with object storage, downloaded
        (every file checked against its checksum) when not cached or cached stale."""
        folder = self.root / name
        if self.remote is None or self._cached(folder, files):
            return folder
        staged = self.staging()
        try:
            for rel, digest in sorted(files.items()):
                target = staged / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                self.remote.download(digest, target, f"{self.kind}/{name}/{rel}", rel=rel,
                                     private=(self.kind, name) if self.private else None)
            text = text if text is not None else self.manifest(name) or "{}"
            with self.lock():
                if not self._cached(folder, files):
                    self._install(staged, name, text)
        finally:
            if staged.exists():
                shutil.rmtree(staged, ignore_errors=True)
        log.info("downloaded %s/%s (%d files)", self.kind, name, len(files))
        return folder

    def delete(self, name: str) -> bool:
        """Delete a private folder: this node's copy, then the published one (manifest,
        then files). True when either existed. Only for private kinds: the others' files
        may be shared."""
        if not self.private:
            raise LetheError(f"{self.kind} folders are never deleted")
        if not is_name(name):  # never a path, a parent or a staging folder
            return False
        folder = self.root / name
        removed = False
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)
            removed = True
        if self.remote is not None:
            removed = self.remote.delete_folder(self.kind, name) or removed
        return removed

    def sweep(self, kept: set[str], older_than_s: float, *, remote: bool) -> list[str]:
        """Delete the private folders (and leftover staging folders) not in ``kept`` that
        are older than ``older_than_s``, here and, with ``remote`` (when ``kept`` names
        every folder any instance sharing the object storage keeps), there; their names."""
        if not self.private:
            raise LetheError(f"{self.kind} folders are never deleted")
        removed: list[str] = []
        now = time.time()
        for folder in (self.root.iterdir() if self.root.is_dir() else []):
            if folder.name in kept or not folder.is_dir() or folder.is_symlink():
                continue
            try:
                if now - folder.stat().st_mtime < older_than_s:
                    continue
            except OSError:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
        if self.remote is not None and remote:
            for name, age in self.remote.ages(self.kind).items():
                if name not in kept and age >= older_than_s and is_name(name):
                    self.remote.delete_folder(self.kind, name)
                    if name not in removed:
                        removed.append(name)
        return removed

    def drop_cached(self, name: str) -> None:
        """Forget a cached copy (it failed its checksums): the next ``local`` downloads it."""
        if self.remote is None:
            return
        with self.lock():
            folder = self.root / name
            if folder.exists():
                trash = self.root / f"{TRASH_PREFIX}{uuid.uuid4().hex}-{name}"
                os.rename(folder, trash)
                shutil.rmtree(trash, ignore_errors=True)

    @staticmethod
    def _cached(folder: Path, files: dict[str, str]) -> bool:
        try:
            cached = json.loads((folder / MANIFEST).read_text()).get("files")
        except (OSError, ValueError, AttributeError):
            return False
        return cached == files and all((folder / rel).is_file() for rel in files)


def check_cached(folders: Folders, name: str, files: dict[str, str], label: str,
                 only: list[str] | None = None) -> Path:
    """The local copy of ``name`` with the checksums of its files (``only`` these, if given)
    verified; a cached copy that fails is downloaded once more before IntegrityError names
    the file."""
    checked = files if only is None else {rel: files[rel] for rel in only}
    folder = folders.local(name, files)
    try:
        verify_files(folder, checked, label)
    except IntegrityError:
        if folders.remote is None:
            raise
        log.warning("%s: the cached copy failed its checksums; downloading it again", label)
        folders.drop_cached(name)
        folder = folders.local(name, files)
        verify_files(folder, checked, label)
    return folder
