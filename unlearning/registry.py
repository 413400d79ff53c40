"""The model registry on disk, under LETHE_HOME.

Layout::

    registry.lock                      exclusive fcntl lock: id allocation, renames, updates
    versions/<model>-v<N>/             one folder per version, immutable files + manifest.json
    versions/.tmp-<pid>-<hex>/         a version being written (never listed; removed if stale)
    active/<model>.json                {"version", "activated_at"}: the version served for <model>
    classifiers/<name>/                classifier.safetensors + classifier.json (format "torch")
                                       or classifier.onnx (format "onnx"), and manifest.json
    domains/<name>/                    a domain: its judge, data splits, cached reference
                                       statistics (and the data itself when copied in), and
                                       manifest.json (``unlearning.domains``)

Every file a version or classifier holds is listed in its manifest with its sha256, and is
checked against it before anything is loaded or activated. Folders appear by one atomic
``rename`` of a finished temporary folder, and pointers/manifests are replaced with
``os.replace``, so a crash never leaves a half-written version or pointer visible.
Weights are safetensors, models are rebuilt from JSON configs, uploaded classifiers are
ONNX (protobuf): nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from unlearning.processes import pid_alive
from unlearning.errors import ConflictError, IntegrityError, LetheError, NotFoundError
from unlearning.names import NAME as _NAME, VERSION as _VERSION, check_name as _check_name, is_version, shown
from unlearning.runtime import lethe_home

if TYPE_CHECKING:  # torch only where models are loaded or saved: bookkeeping needs none
    from torch import nn

log = logging.getLogger(__name__)

Status = Literal["candidate", "promoted", "rejected"]
ClassifierFormat = Literal["torch", "onnx"]

MANIFEST = "manifest.json"
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"
_CHUNK = 1 << 20


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


GENERATOR = "generator"
INPAINTER = "inpainter"  # an image-to-image model's component (and its ONNX file's stem)


class VersionManifest(BaseModel):
    """What ``versions/<version>/manifest.json`` holds."""

    version: str
    model: str
    parent: str | None = None
    created_at: str = Field(description="ISO 8601, UTC")
    status: Status = "candidate"
    spec: dict[str, Any] | None = Field(None, description="the forget spec that produced it")
    metrics: dict[str, Any] = Field(default_factory=dict)
    reason: str | None = Field(None, description="why it was rejected")
    dataset: str | None = None
    classifier: str | None = Field(None, description="name of the domain's guide classifier")
    domain: str | None = Field(None, description="the domain (dataset, guide, judge) the model belongs to")
    job: str | None = Field(None, description="id of the service job that made it")
    files: dict[str, str] = Field(default_factory=dict, description="file name -> sha256 hex")

    @property
    def image_to_image(self) -> bool:
        """An image-to-image model (served at /inpaint), not a generator."""
        return f"{INPAINTER}.onnx" in self.files

    @property
    def onnx_file(self) -> str:
        return f"{INPAINTER if self.image_to_image else GENERATOR}.onnx"

    @property
    def domain_name(self) -> str | None:
        """The domain; versions made before domains existed name only their dataset."""
        return self.domain or self.dataset


class ClassifierManifest(BaseModel):
    """What ``classifiers/<name>/manifest.json`` holds."""

    name: str
    created_at: str
    format: ClassifierFormat = "torch"
    metrics: dict[str, Any] = Field(default_factory=dict)
    labels: list[str] | None = None
    domain: str | None = Field(None, description="the domain whose guide this classifier is")
    files: dict[str, str] = Field(default_factory=dict, description="file name -> sha256 hex")


class DomainManifest(BaseModel):
    """What ``domains/<name>/manifest.json`` holds (``unlearning.domains`` builds it)."""

    name: str
    created_at: str
    labels: list[str] = Field(description="class names; index = label")
    image_shape: tuple[int, int, int] = Field(description="(channels, height, width)")
    builtin: str | None = Field(None, description="the built-in domain whose data it reads, if any")
    references: dict[str, str] = Field(
        default_factory=dict, description="files read in place (not copied in): absolute path -> sha256 hex")
    guide: str = Field(description="the guide classifier (in classifiers/): what specs name")
    sizes: dict[str, int] = Field(default_factory=dict, description="train, held_out, guide, judge images")
    metrics: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict, description="file name -> sha256 hex")


# ---------------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_path(path: Path) -> None:
    """fsync a file or a directory (so a rename inside it is durable)."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, payload: dict[str, Any]) -> None:
    """Write temp file in the same folder, fsync, ``os.replace``, fsync the folder."""
    tmp = path.with_name(f"{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "w") as fh:
            json.dump(payload, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_path(path.parent)



def _is_stale_tmp(name: str) -> bool:
    """``.tmp-<pid>-...`` whose writer is gone (this host). Unparseable names are stale."""
    match = re.match(rf"^{re.escape(_TMP_PREFIX)}(\d+)-", name)
    return match is None or not pid_alive(int(match.group(1)))


def _remove_stale(parent: Path) -> None:
    """Remove temporary leftovers of crashed writers. Call with the registry lock held."""
    if not parent.is_dir():
        return
    for entry in parent.iterdir():
        if entry.name.startswith(_TMP_PREFIX) and _is_stale_tmp(entry.name):
            log.warning("removing %s left by an interrupted write", entry)
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


def _hash_and_sync(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative POSIX names), each fsynced."""
    files: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_symlink():
            raise LetheError(f"{rel}: symbolic links cannot be stored in the registry")
        if path.is_dir():
            _fsync_path(path)
            continue
        if rel == MANIFEST:
            raise LetheError(f"'{MANIFEST}' is written by the registry; do not write it yourself")
        _fsync_path(path)
        files[rel] = sha256_file(path)
    return files


def _verify_files(folder: Path, files: dict[str, str], label: str) -> None:
    """Recompute every checksum; IntegrityError names the first file that does not match."""
    root = folder.resolve()
    for rel, expected in sorted(files.items()):
        path = (folder / rel).resolve()
        if root not in path.parents:
            raise IntegrityError(f"{label}/{rel}: manifest names a file outside its folder")
        if not path.is_file():
            raise IntegrityError(f"{label}/{rel}: missing (listed in the manifest, not on disk)")
        if sha256_file(path) != expected:
            raise IntegrityError(
                f"{label}/{rel}: checksum mismatch (file changed or corrupted on disk)"
            )


def _known(names: list[str], limit: int = 8) -> str:
    if not names:
        return "none yet"
    shown = ", ".join(names[-limit:])
    return shown if len(names) <= limit else f"... {shown} ({len(names)} in all)"


# --------------------------------------------------------------------------------- registry


class Registry:
    """Versions of named generators, the active pointer per generator, and classifiers."""

    def __init__(self, home: Path | None = None):
        self.home = Path(home).expanduser() if home is not None else lethe_home()
        self.versions_dir = self.home / "versions"
        self.active_dir = self.home / "active"
        self.classifiers_dir = self.home / "classifiers"
        self.domains_dir = self.home / "domains"
        for folder in (self.versions_dir, self.active_dir, self.classifiers_dir, self.domains_dir):
            folder.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Registry({str(self.home)!r})"

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive lock across processes *and* threads (flock on a fresh open file)."""
        with open(self.home / "registry.lock", "a+") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    # ---------------------------------------------------------------------------- versions

    def _version_numbers(self, model: str) -> list[int]:
        numbers = []
        for entry in self.versions_dir.iterdir():
            match = _VERSION.match(entry.name)
            if match and match.group("model") == model and not entry.name.startswith("."):
                numbers.append(int(match.group("n")))
        return numbers

    def create_version(
        self,
        model: str,
        write_files: Callable[[Path], None],
        *,
        parent: str | None = None,
        spec: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        status: Status = "candidate",
        reason: str | None = None,
        dataset: str | None = None,
        classifier: str | None = None,
        domain: str | None = None,
        job: str | None = None,
        new_model: bool = False,
    ) -> VersionManifest:
        """Store a new version of ``model``: ``write_files(folder)`` writes its files into a
        private temporary folder; they are checksummed and fsynced, then the folder appears
        as ``versions/<model>-v<N>`` in one rename. If ``write_files`` raises, nothing
        appears and the exception propagates. ``new_model``: it must be the model's first
        version (ConflictError, checked under the lock, if another one got there first)."""
        _check_name(model, "model")
        if parent is not None:
            self.get(parent)
        tmp = self.versions_dir / f"{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        tmp.mkdir()
        try:
            write_files(tmp)
            files = _hash_and_sync(tmp)
            with self._locked():
                _remove_stale(self.versions_dir)
                if new_model and (self._version_numbers(model) or self._pointer(model).exists()):
                    raise ConflictError(f"model name {model!r} is taken; choose another name")
                number = 1 + max(self._version_numbers(model), default=0)
                manifest = VersionManifest(
                    version=f"{model}-v{number}",
                    model=model,
                    parent=parent,
                    created_at=_now(),
                    status=status,
                    spec=spec,
                    metrics=dict(metrics or {}),
                    reason=reason,
                    dataset=dataset,
                    classifier=classifier,
                    domain=domain,
                    job=job,
                    files=files,
                )
                _write_json_atomic(tmp / MANIFEST, manifest.model_dump(mode="json"))
                _fsync_path(tmp)
                os.rename(tmp, self.versions_dir / manifest.version)
                _fsync_path(self.versions_dir)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("registered %s (%d files)", manifest.version, len(files))
        return manifest

    def version_dir(self, version: str) -> Path:
        """The folder of an existing version (NotFoundError otherwise)."""
        self.get(version)
        return self.versions_dir / version

    def _known_versions(self, model: str | None = None) -> list[str]:
        return [m.version for m in self.list_versions(model)]

    def get(self, version: str) -> VersionManifest:
        """The manifest of ``version``; NotFoundError names it and lists known versions."""
        # the name rule first: a name that breaks it never becomes a path
        path = self.versions_dir / version if is_version(version) else None
        if path is None or not (path / MANIFEST).is_file():
            model = None
            if path is not None and (match := _VERSION.match(version)):
                model = match.group("model")
            known = self._known_versions(model) or self._known_versions()
            what = "not found" if path is not None else "not found (not a version name: <model>-v<N>)"
            raise NotFoundError(f"version {shown(version)} {what}; known versions: {_known(known)}")
        try:
            manifest = VersionManifest.model_validate_json((path / MANIFEST).read_text())
        except (ValidationError, ValueError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"{version}/{MANIFEST}: unreadable manifest ({exc})") from None
        if manifest.version != version:
            raise IntegrityError(
                f"{version}/{MANIFEST}: manifest describes {manifest.version!r}, not {version!r}"
            )
        return manifest

    def list_versions(self, model: str | None = None) -> list[VersionManifest]:
        """Every readable version (of ``model``, if given), oldest first. Temporary folders
        and folders without a valid manifest are skipped (the latter with a warning)."""
        found: list[tuple[str, int, VersionManifest]] = []
        for entry in self.versions_dir.iterdir():
            match = _VERSION.match(entry.name)
            if entry.name.startswith(".") or not match or not entry.is_dir():
                continue
            if model is not None and match.group("model") != model:
                continue
            try:
                manifest = VersionManifest.model_validate_json((entry / MANIFEST).read_text())
            except (OSError, ValidationError, ValueError, UnicodeDecodeError) as exc:
                log.warning("skipping %s: no valid %s (%s)", entry, MANIFEST, exc)
                continue
            found.append((manifest.created_at, int(match.group("n")), manifest))
        found.sort(key=lambda item: (item[0], item[1]))
        return [manifest for _, _, manifest in found]

    def verify(self, version: str) -> VersionManifest:
        """Recompute every checksum of ``version``; IntegrityError names a bad/missing file."""
        manifest = self.get(version)
        _verify_files(self.versions_dir / version, manifest.files, version)
        return manifest

    def update(
        self,
        version: str,
        *,
        status: Status | None = None,
        metrics: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> VersionManifest:
        """Change status / reason, and merge ``metrics`` into the stored metrics. The files
        and their checksums never change. Rewritten atomically, under the registry lock."""
        with self._locked():
            manifest = self.get(version)
            changes: dict[str, Any] = {}
            if status is not None:
                changes["status"] = status
            if reason is not None:
                changes["reason"] = reason
            if metrics is not None:
                changes["metrics"] = {**manifest.metrics, **metrics}
            updated = VersionManifest.model_validate({**manifest.model_dump(), **changes})
            _write_json_atomic(self.versions_dir / version / MANIFEST, updated.model_dump(mode="json"))
        return updated

    def file_path(self, version: str, filename: str, *, verify: bool = True) -> Path:
        """Path of one file of a version (e.g. ``generator.onnx``), checksum-checked."""
        manifest = self.get(version)
        if filename not in manifest.files:
            raise NotFoundError(
                f"version {version!r} has no file {filename!r}; it has: {', '.join(sorted(manifest.files))}"
            )
        if verify:
            _verify_files(self.versions_dir / version, {filename: manifest.files[filename]}, version)
        return self.versions_dir / version / filename

    def load_component(self, version: str, stem: str) -> nn.Module:
        """Verify every file of ``version``, then rebuild ``<stem>.safetensors``/``.json``."""
        manifest = self.verify(version)
        needed = [f"{stem}.safetensors", f"{stem}.json"]
        if any(name not in manifest.files for name in needed):
            raise NotFoundError(
                f"version {version!r} has no component {stem!r}; it has: {', '.join(sorted(manifest.files))}"
            )
        from unlearning.models.io import load_model

        return load_model(self.versions_dir / version, stem)

    def load_generator(self, version: str) -> nn.Module:
        return self.load_component(version, "generator")

    def load_discriminator(self, version: str) -> nn.Module:
        return self.load_component(version, "discriminator")

    def load_inpainter(self, version: str) -> nn.Module:
        return self.load_component(version, INPAINTER)

    # ------------------------------------------------------------------------------ active

    def _pointer(self, model: str) -> Path:
        return self.active_dir / f"{_check_name(model, 'model')}.json"

    def active(self, model: str) -> str | None:
        """The version served for ``model``, or None if none was activated."""
        path = self._pointer(model)
        if not path.is_file():
            return None
        try:
            version = json.loads(path.read_text())["version"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"active/{path.name}: unreadable pointer ({exc})") from None
        if not isinstance(version, str):
            raise IntegrityError(f"active/{path.name}: pointer names no version")
        return version

    def activate(self, version: str, *, force: bool = False) -> VersionManifest:
        """Point ``<model>`` at ``version`` (atomically). Its files are verified first; a
        rejected version is refused unless ``force``."""
        manifest = self.verify(version)
        if manifest.status == "rejected" and not force:
            why = f": {manifest.reason}" if manifest.reason else ""
            raise LetheError(
                f"version {version!r} was rejected{why}; refusing to activate it "
                "(force it if you really mean to serve it)"
            )
        with self._locked():
            _remove_stale(self.active_dir)
            _write_json_atomic(
                self._pointer(manifest.model), {"version": version, "activated_at": _now()}
            )
        log.info("activated %s for %s", version, manifest.model)
        return manifest

    def models(self) -> list[str]:
        """Names of generators that have versions or an active pointer."""
        names = {m.model for m in self.list_versions()}
        names |= {p.stem for p in self.active_dir.glob("*.json") if not p.name.startswith(".")}
        return sorted(names)

    # ------------------------------------------------------------------------- classifiers

    def _store_folder(
        self,
        parent: Path,
        name: str,
        what: str,
        write_files: Callable[[Path], None],
        make_manifest: Callable[[dict[str, str]], BaseModel],
        *,
        replace: bool,
        check: Callable[[Path], None] | None = None,
    ) -> BaseModel:
        """Store a named immutable folder (a classifier, a domain) under ``parent``:
        ``write_files`` fills a private temporary folder, ``check`` may refuse it, its files
        are checksummed into ``make_manifest(files)``, and it appears in one rename (an old
        folder of that name, with ``replace``, is swapped out under the lock)."""
        _check_name(name, what)
        final = parent / name
        if final.exists() and not replace:
            raise LetheError(f"{what} {name!r} already exists; pass replace=True to replace it")
        tmp = parent / f"{_TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex}"
        tmp.mkdir()
        trash: Path | None = None
        try:
            write_files(tmp)
            if check is not None:
                check(tmp)
            manifest = make_manifest(_hash_and_sync(tmp))
            _write_json_atomic(tmp / MANIFEST, manifest.model_dump(mode="json"))
            _fsync_path(tmp)
            with self._locked():
                _remove_stale(parent)
                self._restore_trash(parent)
                if final.exists():
                    if not replace:
                        raise LetheError(f"{what} {name!r} already exists; pass replace=True to replace it")
                    trash = parent / f"{_TRASH_PREFIX}{uuid.uuid4().hex}-{name}"
                    os.rename(final, trash)
                os.rename(tmp, final)
                _fsync_path(parent)
                if trash is not None:
                    shutil.rmtree(trash, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return manifest

    def _store_classifier(
        self,
        name: str,
        write_files: Callable[[Path], None],
        *,
        fmt: ClassifierFormat,
        metrics: dict[str, Any],
        labels: list[str] | None,
        replace: bool,
        domain: str | None = None,
        check: Callable[[Path], None] | None = None,
    ) -> ClassifierManifest:
        def manifest(files: dict[str, str]) -> ClassifierManifest:
            return ClassifierManifest(name=name, created_at=_now(), format=fmt, metrics=dict(metrics or {}),
                                      labels=list(labels) if labels else None, domain=domain, files=files)

        return self._store_folder(self.classifiers_dir, name, "classifier", write_files, manifest,  # type: ignore[return-value]
                                  replace=replace, check=check)

    def _restore_trash(self, parent: Path) -> None:
        """A replace interrupted between its two renames: put the old folder back if the
        new one never arrived, otherwise drop it. Call with the lock held."""
        for entry in parent.glob(f"{_TRASH_PREFIX}*"):
            name = entry.name[len(_TRASH_PREFIX) + 33 :]
            target = parent / name
            if name and not target.exists():
                os.rename(entry, target)
            else:
                shutil.rmtree(entry, ignore_errors=True)

    def register_classifier(
        self,
        name: str,
        classifier_module: nn.Module,
        metrics: dict[str, Any],
        *,
        labels: list[str] | None = None,
        replace: bool = False,
        domain: str | None = None,
    ) -> ClassifierManifest:
        """Store a PyTorch classifier (a model ``save_model`` knows) under ``name``; ``domain``
        names the domain it guides."""
        from unlearning.models.io import save_model

        if labels is None:
            config_labels = getattr(getattr(classifier_module, "config", None), "labels", None)
            labels = list(config_labels) if config_labels else None
        return self._store_classifier(
            name,
            lambda folder: save_model(classifier_module, folder, "classifier"),
            fmt="torch", metrics=metrics, labels=labels, replace=replace, domain=domain,
        )

    def register_onnx_classifier(
        self,
        name: str,
        source: Path | bytes,
        metrics: dict[str, Any] | None = None,
        *,
        labels: list[str] | None = None,
        replace: bool = False,
    ) -> ClassifierManifest:
        """Store an uploaded ONNX classifier (a path or the file's bytes) as
        ``classifier.onnx``. It must be self-contained (no external data) and convertible
        by onnx2torch, which is checked now rather than at first use."""

        def write(folder: Path) -> None:
            target = folder / "classifier.onnx"
            if isinstance(source, (bytes, bytearray)):
                target.write_bytes(bytes(source))
            else:
                if not Path(source).is_file():
                    raise NotFoundError(f"ONNX classifier file {str(source)!r} does not exist")
                shutil.copyfile(source, target)

        return self._store_classifier(
            name, write, fmt="onnx", metrics=metrics or {}, labels=labels, replace=replace,
            check=lambda folder: onnx_classifier_module(folder / "classifier.onnx", f"{name}/classifier.onnx"),
        )

    def _get_classifier(self, name: str) -> ClassifierManifest:
        if not isinstance(name, str) or not _NAME.match(name) or not (self.classifiers_dir / name / MANIFEST).is_file():
            known = [m.name for m in self.list_classifiers()]
            raise NotFoundError(f"classifier {shown(name)} not found; known classifiers: {_known(known)}")
        path = self.classifiers_dir / name / MANIFEST
        try:
            return ClassifierManifest.model_validate_json(path.read_text())
        except (ValidationError, ValueError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"classifiers/{name}/{MANIFEST}: unreadable manifest ({exc})") from None

    def get_classifier(self, name: str) -> ClassifierManifest:
        return self._get_classifier(name)

    def verify_classifier(self, name: str) -> ClassifierManifest:
        manifest = self._get_classifier(name)
        _verify_files(self.classifiers_dir / name, manifest.files, f"classifiers/{name}")
        return manifest

    def load_classifier(self, name: str) -> nn.Module:
        """Verified classifier in eval mode: rebuilt from safetensors, or converted from
        ONNX with onnx2torch (that module has no ``.features``/``.config``)."""
        manifest = self.verify_classifier(name)
        folder = self.classifiers_dir / name
        if manifest.format == "onnx":
            return onnx_classifier_module(folder / "classifier.onnx", f"classifiers/{name}/classifier.onnx")
        from unlearning.models.io import load_model

        return load_model(folder, "classifier")

    def list_classifiers(self) -> list[ClassifierManifest]:
        return self._list_folders(self.classifiers_dir, ClassifierManifest)  # type: ignore[return-value]

    @staticmethod
    def _list_folders(parent: Path, schema: type[BaseModel]) -> list[BaseModel]:
        found = []
        for entry in sorted(parent.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            try:
                found.append(schema.model_validate_json((entry / MANIFEST).read_text()))
            except (OSError, ValidationError, ValueError, UnicodeDecodeError) as exc:
                log.warning("skipping %s: no valid %s (%s)", entry, MANIFEST, exc)
        return found

    # ----------------------------------------------------------------------------- domains

    def register_domain(
        self, name: str, write_files: Callable[[Path], None], fields: dict[str, Any], *, replace: bool = False,
    ) -> DomainManifest:
        """Store a domain's folder: ``write_files`` writes its judge, splits and statistics;
        ``fields`` are the manifest's other fields (``unlearning.domains`` builds them)."""
        return self._store_folder(  # type: ignore[return-value]
            self.domains_dir, name, "domain", write_files,
            lambda files: DomainManifest(name=name, created_at=_now(), files=files, **fields), replace=replace,
        )

    def get_domain(self, name: str) -> DomainManifest:
        path = self.domains_dir / name / MANIFEST if isinstance(name, str) and _NAME.match(name) else None
        if path is None or not path.is_file():
            known = [m.name for m in self.list_domains()]
            raise NotFoundError(f"domain {name!r} not found; known domains: {_known(known)}")
        try:
            return DomainManifest.model_validate_json(path.read_text())
        except (ValidationError, ValueError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"domains/{name}/{MANIFEST}: unreadable manifest ({exc})") from None

    def verify_domain(self, name: str) -> DomainManifest:
        """The manifest, every stored file checked, and every referenced file too."""
        manifest = self.get_domain(name)
        _verify_files(self.domains_dir / name, manifest.files, f"domains/{name}")
        for path, expected in sorted(manifest.references.items()):
            if not Path(path).is_file():
                raise IntegrityError(f"domain {name!r} reads {path}, which is missing")
            if sha256_file(Path(path)) != expected:
                raise IntegrityError(f"domain {name!r} reads {path}, which changed since the domain was registered")
        return manifest

    def domain_dir(self, name: str) -> Path:
        self.get_domain(name)
        return self.domains_dir / name

    def list_domains(self) -> list[DomainManifest]:
        return self._list_folders(self.domains_dir, DomainManifest)  # type: ignore[return-value]


def onnx_classifier_module(path: Path, label: str) -> nn.Module:
    """Load an ONNX file without following external-data references (an upload must not
    make us read other files) and convert it to a torch module."""
    import onnx
    from onnx import external_data_helper

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise LetheError(f"{label}: not a readable ONNX model ({exc})") from None
    if any(external_data_helper.uses_external_data(t) for t in proto.graph.initializer):
        raise LetheError(f"{label}: ONNX models with external data files are not accepted")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise LetheError(f"{label}: invalid ONNX model ({exc})") from None
    try:
        from onnx2torch import convert

        return convert(proto).eval()
    except Exception as exc:  # NotImplementedError for unsupported operators/attributes
        raise LetheError(f"{label}: cannot be converted to PyTorch by onnx2torch ({exc})") from None
