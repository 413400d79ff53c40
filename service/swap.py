"""Hot-swap: each serving worker follows the active pointer of each model on its own.

A watcher thread reads the pointer every ``poll_s``, and at once when the registry says it
changed (with PostgreSQL, a NOTIFY pushed to every worker of every instance; pointer files
are only polled). When it names another version, the
thread verifies that version's files, builds its ONNX Runtime session (a generator's or an
image-to-image model's) and runs one warm-up batch, all off the request path, then
replaces ``current`` in one assignment. A request takes ``current`` once when it starts,
so requests in flight finish on the session they started with. When the pointer cannot
be read (a garbled file), or names a version that cannot be loaded (corrupted, missing),
or the served version's files stop matching their checksums, the worker serves nothing
(``ActiveUnservableError``), as every other worker and every restarted one does, and
tries again every ``retry_s`` (a file may be restored). While the database or the object
storage cannot be reached (not the version's fault), a worker keeps serving what it has
and looks again at the next poll; one with nothing loaded refuses, saying why.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unlearning.errors import LetheError, NotFoundError
from unlearning.registry import Registry, VersionManifest
from unlearning.store import JobStoreError, StorageUnavailableError

if TYPE_CHECKING:  # at run time it is loaded with the first version: BentoML's arbiter imports this
    # module to read the service's definition, and never needs torch (1.4 s, 300 MB)
    from unlearning.export import OnnxGenerator, OnnxInpainter

log = logging.getLogger(__name__)

WARMUP_BATCH = 64
_PINNED_CACHE = 2  # sessions kept for requests that name a non-active version


class NotServableError(LetheError):
    """The requested version exists but is never served (rejected by its gates)."""


class ActiveUnservableError(LetheError):
    """The active pointer cannot be read, or names a version that cannot be served
    (corrupted, missing). Every worker refuses to sample (409; /readyz answers 503) rather
    than serve another version, which may still show what a later one forgot."""


@dataclass(frozen=True)
class LoadedVersion:
    manifest: VersionManifest
    session: OnnxGenerator | OnnxInpainter

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def generator(self) -> OnnxGenerator:
        if self.manifest.image_to_image:
            raise NotServableError(f"model {self.manifest.model!r} is an image-to-image model: use POST /inpaint")
        return self.session

    @property
    def inpainter(self) -> OnnxInpainter:
        if not self.manifest.image_to_image:
            raise NotServableError(f"model {self.manifest.model!r} is a generator: use /generate or /grid")
        return self.session


def load_version(registry: Registry, version: str, threads: int, *, active: bool = False) -> LoadedVersion:
    """Verify the version's ONNX file against the manifest, build the session and warm it
    up. A rejected version is only served when an operator forced it active."""
    manifest = registry.get(version)
    if manifest.status == "rejected" and not active:
        raise NotServableError(f"version {version!r} was rejected by its gates and is never served")
    from unlearning.export import OnnxGenerator, OnnxInpainter

    path = registry.file_path(version, manifest.onnx_file)
    runtime = OnnxInpainter if manifest.image_to_image else OnnxGenerator
    session = runtime(path, intra_op_threads=threads)
    session.warm_up(WARMUP_BATCH)
    return LoadedVersion(manifest, session)


class ActiveGenerator:
    """The active version of one generator in this worker, swapped when the pointer moves.

    A worker serves the version the pointer names, or nothing: what it does with the next
    request depends only on the files on disk, which every worker (and every replica, and
    every restart) sees alike, never on what this worker happened to load before. So when
    the pointer cannot be read, or names a version that will not load, or the files of
    the version being served stop matching their checksums (noticed by a changed
    ``stat`` at once, or by a full check every ``retry_s``), every worker refuses to
    sample (409) and is not ready (503), saying why, until the files are good again. The
    one exception is an outage that says nothing about the version (the database or the
    object storage cannot be reached): a worker then keeps what it has loaded."""

    def __init__(
        self,
        registry: Registry,
        model: str,
        *,
        threads: int,
        poll_s: float = 0.25,
        retry_s: float = 30.0,
        on_swap: Callable[[LoadedVersion | None, LoadedVersion | None], None] | None = None,
    ):
        self.registry = registry
        self.model = model
        self.threads = threads
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.on_swap = on_swap
        self._current: LoadedVersion | None = None
        self._pinned: OrderedDict[str, LoadedVersion] = OrderedDict()
        self._pinned_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._problem: str | None = None  # why the active version cannot be served, when it cannot
        self._failed: str | None = None  # a pointer target that would not load (retried after retry_s)
        self._failed_at = 0.0
        self._changed = registry.pointer_changes()  # set when the pointer may have moved
        self._unreachable = False  # the database or object storage was down at the last look
        self._on_disk: tuple | None = None  # stat of the served version's files when last verified
        self._verified_at = 0.0

    @property
    def current(self) -> LoadedVersion:
        if self._problem is not None:
            raise ActiveUnservableError(self._problem)
        current = self._current
        if current is None:
            raise NotFoundError(f"no active version of {self.model!r}: run `lethe bootstrap` or activate one")
        return current

    @property
    def ready(self) -> bool:
        """False while the active version cannot be served (every worker agrees: see the class)."""
        return self._problem is None

    def start(self) -> "ActiveGenerator":
        self.refresh()
        self._thread = threading.Thread(target=self._watch, name=f"lethe-swap-{self.model}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def refresh(self) -> bool:
        """Follow the pointer: swap if it names another version, refuse if what it names
        cannot be served. True when a swap happened."""
        try:
            target = self.registry.active(self.model)
        except JobStoreError as exc:  # the database is away: the pointer may not have moved
            self._away(f"the active pointer of {self.model!r} cannot be read now: {exc}")
            return False
        except LetheError as exc:
            self._refuse(f"the active pointer of {self.model!r} cannot be read: {exc}")
            return False
        if self._unreachable:
            log.info("the active version of %s can be read again", self.model)
            self._unreachable = False
        current = self._current
        if target is None:  # no pointer (removed by hand): nothing is active, as at a start
            if current is not None or self._problem is not None:
                log.warning("not serving %r: it has no active version any more", self.model)
                self._current, self._problem = None, None
                if current is not None and self.on_swap is not None:
                    self.on_swap(current, None)
            return False
        if current is not None and current.version == target:
            self._check_on_disk(current)
            return False
        if target == self._failed and time.monotonic() - self._failed_at < self.retry_s:
            return False
        try:
            loaded = self._pinned_checked(target) or load_version(self.registry, target, self.threads, active=True)
        except StorageUnavailableError as exc:  # not the version's fault: looked at again at the next poll
            self._away(f"the active version {target!r} of {self.model!r} cannot be fetched now: {exc}")
            return False
        except Exception as exc:  # corrupted, missing, or a graph ONNX Runtime will not take
            self._failed, self._failed_at = target, time.monotonic()
            self._refuse(f"the active version {target!r} of {self.model!r} cannot be served: {_plain(exc)}")
            return False
        self._failed = None
        self._unreachable = False
        self._serve(loaded)
        return True

    def _away(self, problem: str) -> None:
        """The database or the object storage cannot be reached. What this worker serves it
        goes on serving (said once, not at every poll); with nothing loaded, it refuses."""
        current = self._current
        if current is None:
            self._refuse(problem)
            return
        if not self._unreachable:
            log.warning("%s; still serving %s", problem, current.version)
        self._unreachable = True

    def _serve(self, loaded: LoadedVersion) -> None:
        previous, was_refusing = self._current, self._problem is not None
        self._on_disk, self._verified_at = self._stat(loaded), time.monotonic()
        self._current = loaded  # one assignment: requests already running keep their session
        self._problem = None
        if was_refusing:  # as visible as the refusal was
            log.warning("serving %s again", loaded.version)
        else:
            log.info("serving %s (was %s)", loaded.version, previous.version if previous else "nothing")
        if self.on_swap is not None:
            self.on_swap(previous, loaded)

    def _refuse(self, problem: str) -> None:
        """Serve nothing, saying why; logged once per distinct problem, not at every poll."""
        previous = self._current
        if problem != self._problem:
            log.error("not serving %r: %s", self.model, problem)
        self._problem = problem  # first: a request in between is refused, never told "no active version"
        self._current = None
        if previous is not None and self.on_swap is not None:
            self.on_swap(previous, None)

    def _stat(self, loaded: LoadedVersion) -> tuple | None:
        """What would change if the served version's files were replaced or rewritten."""
        folder = self.registry.versions_dir / loaded.version
        try:
            return tuple((s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns)
                         for s in (os.stat(folder / name) for name in ("manifest.json", loaded.manifest.onnx_file)))
        except OSError:
            return None

    def _check_on_disk(self, loaded: LoadedVersion) -> None:
        """Verify the served version's files again when they changed, and every retry_s."""
        stat = self._stat(loaded)
        if stat is not None and stat == self._on_disk and time.monotonic() - self._verified_at < self.retry_s:
            return
        try:
            self.registry.file_path(loaded.version, loaded.manifest.onnx_file)  # checksum
        except Exception as exc:
            self._failed, self._failed_at = loaded.version, time.monotonic()
            self._refuse(f"the active version {loaded.version!r} of {self.model!r} cannot be served: {_plain(exc)}")
            return
        self._on_disk, self._verified_at = stat, time.monotonic()

    def _pinned_checked(self, version: str) -> LoadedVersion | None:
        """A session already loaded for requests that named ``version``, its file verified again."""
        with self._pinned_lock:
            loaded = self._pinned.get(version)
        if loaded is not None:
            self.registry.file_path(version, loaded.manifest.onnx_file)
        return loaded

    def _watch(self) -> None:
        last_error = None
        while not self._stop.is_set():
            self._changed.wait(self.poll_s)
            self._changed.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
                last_error = None
            except Exception as exc:  # the watcher must outlive anything; one traceback per kind
                if repr(exc) != last_error:
                    log.exception("active pointer check failed for %s", self.model)
                last_error = repr(exc)

    def resolve(self, version: str | None) -> LoadedVersion:
        """The session for a request: the active one, or a named version of this model."""
        current = self.current
        if version is None or version == current.version:
            return current
        manifest = self.registry.get(version)  # NotFoundError lists the known versions
        if manifest.model != self.model:
            raise NotFoundError(f"version {version!r} belongs to {manifest.model!r}, not {self.model!r}")
        with self._pinned_lock:
            if version in self._pinned:
                self._pinned.move_to_end(version)
                return self._pinned[version]
        loaded = load_version(self.registry, version, self.threads)
        with self._pinned_lock:
            self._pinned[version] = loaded
            while len(self._pinned) > _PINNED_CACHE:
                self._pinned.popitem(last=False)
        return loaded


def _plain(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, LetheError) else f"{type(exc).__name__}: {exc}"
