"""The model registry: versions of named generators, the active pointer per generator,
classifiers and domains.

Layout of LETHE_HOME::

    registry.lock                      exclusive fcntl lock: id allocation, renames, updates
    versions/<model>-v<N>/             one folder per version, immutable files + manifest.json
    versions/.tmp-<pid>-<hex>/         a version being written (never listed; removed if stale)
    active/<model>.json                {"version", "activated_at"}: the version served for <model>
    classifiers/<name>/                classifier.safetensors + classifier.json (format "torch")
                                       or classifier.onnx (format "onnx"), and manifest.json
    domains/<name>/                    a domain: its judge, data splits, cached reference
                                       statistics (and the data itself when copied in), and
                                       manifest.json (``unlearning.domains``)

Versions, classifiers and domains are immutable named folders with a sha256 manifest
(``unlearning.store.folders``): written complete or not at all, every file checked against
its checksum before anything is loaded or activated (a domain's data read in place is
checked against the checksums its manifest records). With
``LETHE_REGISTRY_URL`` they live in S3-compatible object storage and ``versions/``,
``classifiers/`` and ``domains/`` are a verified local cache; with ``LETHE_DATABASE_URL``
the active pointers and version numbers live in PostgreSQL, shared by every instance
(``unlearning.store.pointers``). Weights are safetensors, models are rebuilt from JSON
configs, uploaded classifiers are ONNX (protobuf): nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import shutil
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, ValidationError

from unlearning.errors import ConflictError, IntegrityError, LetheError, NotFoundError
from unlearning.names import NAME as _NAME, VERSION as _VERSION, check_name as _check_name, is_version, shown
from unlearning.runtime import lethe_home
from unlearning.store import database_url, registry_url
from unlearning.store.files import MANIFEST, hash_and_sync, sha256_file
from unlearning.store.folders import Folders, check_cached
from unlearning.store.objects import ObjectStore
from unlearning.store.pointers import DatabasePointers, FilePointers

if TYPE_CHECKING:  # torch only where models are loaded or saved: bookkeeping needs none
    from torch import nn

log = logging.getLogger(__name__)

Status = Literal["candidate", "promoted", "rejected"]
ClassifierFormat = Literal["torch", "onnx"]


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


def _known(names: list[str], limit: int = 8) -> str:
    if not names:
        return "none yet"
    listed = ", ".join(names[-limit:])
    return listed if len(names) <= limit else f"... {listed} ({len(names)} in all)"


_REMOTES: dict[str, ObjectStore] = {}
_REMOTES_LOCK = threading.Lock()


def _remote(url: str | None) -> ObjectStore | None:
    """The process's one ObjectStore per URL (its client and manifest cache are shared)."""
    if not url:
        return None
    with _REMOTES_LOCK:
        if url not in _REMOTES:
            _REMOTES[url] = ObjectStore(url)
        return _REMOTES[url]


# --------------------------------------------------------------------------------- registry


class Registry:
    """Versions of named generators, the active pointer per generator, classifiers and domains.

    ``database_url_`` / ``registry_url_`` default to ``LETHE_DATABASE_URL`` /
    ``LETHE_REGISTRY_URL`` ("" for none); unset, everything lives in ``home`` (default
    LETHE_HOME)."""

    def __init__(self, home: Path | None = None, *, database_url_: str | None = None,
                 registry_url_: str | None = None):
        self.home = Path(home).expanduser() if home is not None else lethe_home()
        self.versions_dir = self.home / "versions"
        self.active_dir = self.home / "active"
        self.classifiers_dir = self.home / "classifiers"
        self.domains_dir = self.home / "domains"
        self.home.mkdir(parents=True, exist_ok=True)
        remote = _remote(registry_url() if registry_url_ is None else registry_url_)
        self.remote = remote
        self._versions = Folders(self.versions_dir, "versions", self._locked, remote)
        self._classifiers = Folders(self.classifiers_dir, "classifiers", self._locked, remote)
        self._domains = Folders(self.domains_dir, "domains", self._locked, remote)
        self._uploads = Folders(self.home / "uploads", "uploads", self._locked, remote, create=False, private=True)
        self._reports = Folders(self.home / "reports" / "jobs", "reports", self._locked, remote, create=False)
        db_url = database_url() if database_url_ is None else database_url_
        if db_url:
            from unlearning.store.postgres import database

            self.pointers: FilePointers | DatabasePointers = DatabasePointers(database(db_url))
        else:
            self.pointers = FilePointers(self.active_dir)

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

    def _next_number(self, model: str) -> int:
        """A version number never used for ``model``: from the database's counter when there
        is one (every instance shares it), else one above every published version (object
        storage then refuses a name taken meanwhile)."""
        seen = [int(m.group("n")) for name in self._versions.names()
                if (m := _VERSION.match(name)) and m.group("model") == model]
        at_least = 1 + max(seen, default=0)
        if isinstance(self.pointers, DatabasePointers):
            return self.pointers.allocate(model, at_least)
        return at_least

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
        private temporary folder; they are checksummed and fsynced, then published as
        ``<model>-v<N>`` complete or not at all (one rename; with object storage, the files
        first and the manifest last). If ``write_files`` raises, nothing appears and the
        exception propagates. ``new_model``: it must be the model's first version
        (ConflictError, decided under the lock and again if another instance published
        first, so two imports of one name on two instances cannot both succeed)."""
        _check_name(model, "model")
        if parent is not None:
            self.get(parent)
        tmp = self._versions.staging()
        try:
            write_files(tmp)
            files = hash_and_sync(tmp)

            def make() -> tuple[str, dict[str, Any]]:
                number = self._next_number(model)
                if new_model and (number != 1 or self.pointers.get(model) is not None):
                    raise ConflictError(f"model name {model!r} is taken; choose another name")
                manifest = VersionManifest(
                    version=f"{model}-v{number}", model=model, parent=parent,
                    created_at=_now(), status=status, spec=spec, metrics=dict(metrics or {}), reason=reason,
                    dataset=dataset, classifier=classifier, domain=domain, job=job, files=files,
                )
                return manifest.version, manifest.model_dump(mode="json")

            published = VersionManifest.model_validate(self._versions.publish(tmp, files, make))
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        log.info("registered %s (%d files)", published.version, len(files))
        return published

    def version_dir(self, version: str) -> Path:
        """The local folder of an existing version (NotFoundError otherwise)."""
        manifest = self.get(version)
        return self._versions.local(version, manifest.files)

    def _known_versions(self, model: str | None = None) -> list[str]:
        return [m.version for m in self.list_versions(model)]

    def get(self, version: str) -> VersionManifest:
        """The manifest of ``version``; NotFoundError names it and lists known versions."""
        # the name rule first: a name that breaks it never becomes a path or an object key
        named = is_version(version)
        text = self._versions.manifest(version) if named else None
        if text is None:
            model = None
            if named and (match := _VERSION.match(version)):
                model = match.group("model")
            known = self._known_versions(model) or self._known_versions()
            what = "not found" if named else "not found (not a version name: <model>-v<N>)"
            raise NotFoundError(f"version {shown(version)} {what}; known versions: {_known(known)}")
        try:
            manifest = VersionManifest.model_validate_json(text)
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
        for name, text in self._versions.manifests().items():
            match = _VERSION.match(name)
            if not match or (model is not None and match.group("model") != model):
                continue
            try:
                manifest = VersionManifest.model_validate_json(text)
            except (ValidationError, ValueError, UnicodeDecodeError) as exc:
                log.warning("skipping %s: no valid %s (%s)", name, MANIFEST, exc)
                continue
            found.append((manifest.created_at, int(match.group("n")), manifest))
        found.sort(key=lambda item: (item[0], item[1]))
        return [manifest for _, _, manifest in found]

    def verify(self, version: str) -> VersionManifest:
        """Recompute every checksum of ``version``; IntegrityError names a bad/missing file."""
        manifest = self.get(version)
        check_cached(self._versions, version, manifest.files, version)
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
            self._versions.rewrite_manifest(version, updated.model_dump(mode="json"))
        return updated

    def file_path(self, version: str, filename: str, *, verify: bool = True) -> Path:
        """Path of one file of a version (e.g. ``generator.onnx``), checksum-checked."""
        manifest = self.get(version)
        if filename not in manifest.files:
            raise NotFoundError(
                f"version {version!r} has no file {filename!r}; it has: {', '.join(sorted(manifest.files))}"
            )
        if verify:
            folder = check_cached(self._versions, version, manifest.files, version, only=[filename])
        else:
            folder = self._versions.local(version, manifest.files)
        return folder / filename

    def load_component(self, version: str, stem: str) -> nn.Module:
        """Verify every file of ``version``, then rebuild ``<stem>.safetensors``/``.json``."""
        manifest = self.verify(version)
        needed = [f"{stem}.safetensors", f"{stem}.json"]
        if any(name not in manifest.files for name in needed):
            raise NotFoundError(
                f"version {version!r} has no component {stem!r}; it has: {', '.join(sorted(manifest.files))}"
            )
        from unlearning.models.io import load_model

        return load_model(self._versions.local(version, manifest.files), stem)

    def load_generator(self, version: str) -> nn.Module:
        return self.load_component(version, "generator")

    def load_discriminator(self, version: str) -> nn.Module:
        return self.load_component(version, "discriminator")

    def load_inpainter(self, version: str) -> nn.Module:
        return self.load_component(version, INPAINTER)

    # ------------------------------------------------------------------------------ active

    def active(self, model: str) -> str | None:
        """The version served for ``model``, or None if none was activated."""
        return self.pointers.get(_check_name(model, "model"))

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
            self.pointers.set(manifest.model, version)
        log.info("activated %s for %s", version, manifest.model)
        return manifest

    def pointer_changes(self):
        """A ``threading.Event`` set when an active pointer may have changed (pushed by the
        database; never set for pointer files, which are polled). The caller clears it."""
        return self.pointers.changes()

    def models(self) -> list[str]:
        """Names of generators that have versions or an active pointer."""
        names = {m.model for m in self.list_versions()}
        names |= set(self.pointers.models())
        return sorted(names)

    # ----------------------------------------------------------------------------- uploads

    def keep_uploads(self, staged: Path) -> Path:
        """Keep a job's uploaded files (``staged``, a folder under ``uploads/``) as
        ``uploads/<id>``; with object storage they are also published there (files, then
        manifest), so that a job worker on another node can fetch them (``uploads``)."""
        import uuid

        name = uuid.uuid4().hex
        if self.remote is None:
            target = self._uploads.root / name
            staged.rename(target)
            return target
        files = hash_and_sync(staged)
        self._uploads.publish(staged, files, lambda: (name, {"name": name, "created_at": _now(), "files": files}))
        return self._uploads.root / name

    def uploads(self, path: str | Path) -> Path:
        """The local folder of a job's uploads (``path``, as the submitting node stored it),
        fetched from object storage and checked against its checksums when this node lacks it."""
        folder = Path(path)
        if self.remote is None or folder.is_dir():
            return folder
        text = self._uploads.manifest(folder.name)
        if text is None:
            return folder  # the job then says which file was not uploaded, and where it looked
        files = json.loads(text).get("files") or {}
        return check_cached(self._uploads, folder.name, files, f"uploads/{folder.name}")

    def discard_uploads(self, path: str | Path) -> bool:
        """Delete a job's uploads (``path``, as the submitting node stored it): this node's
        copy and, with object storage, the published folder, bytes and all. True when
        there was something to delete."""
        return self._uploads.delete(Path(path).name)

    def sweep_uploads(self, kept: set[str], older_than_s: float) -> list[str]:
        """Delete the uploads folders no job keeps (``kept``: their names) older than
        ``older_than_s``: this node's, and the published ones when the database (and so
        every job that may refer to them) is shared."""
        return self._uploads.sweep(kept, older_than_s, remote=isinstance(self.pointers, DatabasePointers))

    def share_report(self, job_id: str) -> None:
        """With object storage, publish a job's report folder (``reports/jobs/<job id>``),
        so that every instance can serve it. Without one, or without a report, nothing."""
        folder = self._reports.root / job_id
        if self.remote is None or not folder.is_dir() or (folder / MANIFEST).exists():
            return
        staged = self._reports.staging()
        staged.rmdir()
        folder.rename(staged)
        try:
            files = hash_and_sync(staged)
            self._reports.publish(staged, files, lambda: (job_id, {"name": job_id, "created_at": _now(),
                                                                   "files": files}), replace=True)
        finally:
            if staged.exists():  # not published (the storage is down): put it back
                staged.rename(folder)

    def report(self, job_id: str) -> Path:
        """The local folder of a job's report, fetched from object storage when another
        instance's job worker wrote it (it may not exist: the job has no report yet)."""
        folder = self._reports.root / job_id
        if self.remote is None or folder.is_dir():
            return folder
        text = self._reports.manifest(job_id)
        if text is None:
            return folder
        return check_cached(self._reports, job_id, json.loads(text).get("files") or {}, f"reports/{job_id}")

    # ------------------------------------------------------------------------- classifiers

    def _store_folder(
        self,
        folders: Folders,
        name: str,
        what: str,
        write_files: Callable[[Path], None],
        make_manifest: Callable[[dict[str, str]], BaseModel],
        *,
        replace: bool,
        check: Callable[[Path], None] | None = None,
    ) -> BaseModel:
        """Store a named immutable folder (a classifier, a domain) in ``folders``:
        ``write_files`` fills a private temporary folder, ``check`` may refuse it, its files
        are checksummed into ``make_manifest(files)``, and it is published complete or not
        at all (an old folder of that name is replaced only with ``replace``)."""
        _check_name(name, what)

        def refuse_existing() -> None:
            if not replace and folders.manifest(name) is not None:
                raise LetheError(f"{what} {name!r} already exists; pass replace=True to replace it")

        refuse_existing()
        tmp = folders.staging()
        try:
            write_files(tmp)
            if check is not None:
                check(tmp)
            files = hash_and_sync(tmp)
            manifest = make_manifest(files)

            def make() -> tuple[str, dict[str, Any]]:
                refuse_existing()
                return name, manifest.model_dump(mode="json")

            folders.publish(tmp, files, make, replace=replace)
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

        return self._store_folder(  # type: ignore[return-value]
            self._classifiers, name, "classifier", write_files, manifest, replace=replace, check=check)

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
        text = self._classifiers.manifest(name) if isinstance(name, str) and _NAME.match(name) else None
        if text is None:
            known = [m.name for m in self.list_classifiers()]
            raise NotFoundError(f"classifier {shown(name)} not found; known classifiers: {_known(known)}")
        try:
            return ClassifierManifest.model_validate_json(text)
        except (ValidationError, ValueError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"classifiers/{name}/{MANIFEST}: unreadable manifest ({exc})") from None

    def get_classifier(self, name: str) -> ClassifierManifest:
        return self._get_classifier(name)

    def verify_classifier(self, name: str) -> ClassifierManifest:
        manifest = self._get_classifier(name)
        check_cached(self._classifiers, name, manifest.files, f"classifiers/{name}")
        return manifest

    def load_classifier(self, name: str) -> nn.Module:
        """Verified classifier in eval mode: rebuilt from safetensors, or converted from
        ONNX with onnx2torch (that module has no ``.features``/``.config``)."""
        manifest = self.verify_classifier(name)
        folder = self._classifiers.local(name, manifest.files)
        if manifest.format == "onnx":
            return onnx_classifier_module(folder / "classifier.onnx", f"classifiers/{name}/classifier.onnx")
        from unlearning.models.io import load_model

        return load_model(folder, "classifier")

    def list_classifiers(self) -> list[ClassifierManifest]:
        return self._list_folders(self._classifiers, ClassifierManifest)  # type: ignore[return-value]

    @staticmethod
    def _list_folders(folders: Folders, schema: type[BaseModel]) -> list[BaseModel]:
        found = []
        for name, text in sorted(folders.manifests().items()):
            try:
                found.append(schema.model_validate_json(text))
            except (ValidationError, ValueError, UnicodeDecodeError) as exc:
                log.warning("skipping %s/%s: no valid %s (%s)", folders.kind, name, MANIFEST, exc)
        return found

    # ----------------------------------------------------------------------------- domains

    def register_domain(
        self, name: str, write_files: Callable[[Path], None], fields: dict[str, Any], *, replace: bool = False,
    ) -> DomainManifest:
        """Store a domain's folder: ``write_files`` writes its judge, splits and statistics;
        ``fields`` are the manifest's other fields (``unlearning.domains`` builds them)."""
        return self._store_folder(  # type: ignore[return-value]
            self._domains, name, "domain", write_files,
            lambda files: DomainManifest(name=name, created_at=_now(), files=files, **fields), replace=replace,
        )

    def get_domain(self, name: str) -> DomainManifest:
        text = self._domains.manifest(name) if isinstance(name, str) and _NAME.match(name) else None
        if text is None:
            known = [m.name for m in self.list_domains()]
            raise NotFoundError(f"domain {shown(name)} not found; known domains: {_known(known)}")
        try:
            return DomainManifest.model_validate_json(text)
        except (ValidationError, ValueError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"domains/{name}/{MANIFEST}: unreadable manifest ({exc})") from None

    def verify_domain(self, name: str) -> DomainManifest:
        """The manifest, every stored file checked (fetched from object storage when this
        node lacks them), and every file it reads in place checked too."""
        manifest = self.get_domain(name)
        check_cached(self._domains, name, manifest.files, f"domains/{name}")
        for path, expected in sorted(manifest.references.items()):
            if not Path(path).is_file():
                raise IntegrityError(f"domain {name!r} reads {path}, which is missing")
            if sha256_file(Path(path)) != expected:
                raise IntegrityError(f"domain {name!r} reads {path}, which changed since the domain was registered")
        return manifest

    def domain_dir(self, name: str) -> Path:
        """The local folder of a domain (fetched from object storage when not cached)."""
        manifest = self.get_domain(name)
        return self._domains.local(name, manifest.files)

    def list_domains(self) -> list[DomainManifest]:
        return self._list_folders(self._domains, DomainManifest)  # type: ignore[return-value]


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
