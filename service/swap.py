"""Hot-swap: each serving worker follows the active pointer of each model on its own.

A watcher thread reads the pointer every ``poll_s``, and at once when the registry says it
changed (with PostgreSQL, a NOTIFY pushed to every worker of every instance; pointer files
are only polled). When it names another version, the
thread verifies that version's files, builds its ONNX Runtime session (a generator's or an
image-to-image model's) and runs one warm-up batch, all off the request path, then
replaces ``current`` in one assignment. A request takes ``current`` once when it starts,
so requests in flight finish on the session they started with. A version that cannot be
loaded (corrupted, missing) is logged and the worker keeps serving what it has, trying
it again every ``retry_s`` (its file may be restored); with nothing loaded before,
it serves nothing (``ActiveUnservableError``). While the database or the object storage
cannot be reached, the worker keeps serving what it has and looks again at the next poll.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from unlearning.errors import LetheError, NotFoundError
from unlearning.export import OnnxGenerator, OnnxInpainter
from unlearning.registry import Registry, StorageUnavailableError, VersionManifest
from unlearning.store import JobStoreError

log = logging.getLogger(__name__)

WARMUP_BATCH = 64
_PINNED_CACHE = 2  # sessions kept for requests that name a non-active version


class NotServableError(LetheError):
    """The requested version exists but is never served (rejected by its gates)."""


class ActiveUnservableError(LetheError):
    """The active pointer names a version this worker cannot load (corrupted, missing) and
    it has nothing it loaded before. It refuses to sample (409; /readyz answers 503) rather
    than fall back to an older version, which may still show what a later one forgot."""


@dataclass(frozen=True)
class LoadedVersion:
    manifest: VersionManifest
    session: OnnxGenerator | OnnxInpainter

    @property
    def version(self) -> str:
        return self.manifest.version

    @property
    def generator(self) -> OnnxGenerator:
        if not isinstance(self.session, OnnxGenerator):
            raise NotServableError(f"model {self.manifest.model!r} is an image-to-image model: use POST /inpaint")
        return self.session

    @property
    def inpainter(self) -> OnnxInpainter:
        if not isinstance(self.session, OnnxInpainter):
            raise NotServableError(f"model {self.manifest.model!r} is a generator: use /generate or /grid")
        return self.session


def load_version(registry: Registry, version: str, threads: int, *, active: bool = False) -> LoadedVersion:
    """Verify the version's ONNX file against the manifest, build the session and warm it
    up. A rejected version is only served when an operator forced it active."""
    manifest = registry.get(version)
    if manifest.status == "rejected" and not active:
        raise NotServableError(f"version {version!r} was rejected by its gates and is never served")
    path = registry.file_path(version, manifest.onnx_file)
    runtime = OnnxInpainter if manifest.image_to_image else OnnxGenerator
    session = runtime(path, intra_op_threads=threads)
    session.warm_up(WARMUP_BATCH)
    return LoadedVersion(manifest, session)


class ActiveGenerator:
    """The active version of one generator in this worker, swapped when the pointer moves."""

    def __init__(
        self,
        registry: Registry,
        model: str,
        *,
        threads: int,
        poll_s: float = 0.25,
        retry_s: float = 30.0,
        on_swap: Callable[[LoadedVersion | None, LoadedVersion], None] | None = None,
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
        self._failed: str | None = None  # a pointer target that would not load (retried after retry_s)
        self._failure = ""  # why it would not load
        self._failed_at = 0.0
        self._changed = registry.pointer_changes()  # set when the pointer may have moved
        self._unreachable = False  # the database or object storage was down at the last look

    @property
    def current(self) -> LoadedVersion:
        current = self._current
        if current is None:
            if self._failed is not None:
                raise ActiveUnservableError(
                    f"the active version {self._failed!r} of {self.model!r} cannot be served: {self._failure}")
            raise NotFoundError(f"no active version of {self.model!r}: run `lethe bootstrap` or activate one")
        return current

    @property
    def ready(self) -> bool:
        """False only when the active version would not load and nothing else was loaded."""
        return self._current is not None or self._failed is None

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
        """Swap if the pointer names another version; True when a swap happened."""
        try:
            target = self.registry.active(self.model)
        except JobStoreError as exc:
            self._away(exc)
            return False
        if self._unreachable:
            log.info("the active version of %s can be read again", self.model)
            self._unreachable = False
        current = self._current
        if target is None or (current is not None and current.version == target):
            return False
        if target == self._failed and time.monotonic() - self._failed_at < self.retry_s:
            return False
        try:
            loaded = self._pinned.get(target) or load_version(self.registry, target, self.threads, active=True)
        except StorageUnavailableError as exc:  # not the version's fault: try again at the next poll
            self._away(exc)
            return False
        except LetheError as exc:
            self._failed, self._failure, self._failed_at = target, str(exc), time.monotonic()
            kept = current.version if current else "nothing"
            log.error("cannot serve %s (%s); still serving %s", target, exc, kept)
            return False
        self._failed = None
        self._unreachable = False
        self._current = loaded  # one assignment: requests already running keep their session
        log.info("serving %s (was %s)", loaded.version, current.version if current else "nothing")
        if self.on_swap is not None:
            self.on_swap(current, loaded)
        return True

    def _away(self, exc: Exception) -> None:
        if not self._unreachable:
            kept = self._current.version if self._current else "nothing"
            log.warning("cannot look at the active version of %s (%s); still serving %s", self.model, exc, kept)
        self._unreachable = True

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._changed.wait(self.poll_s)
            self._changed.clear()
            if self._stop.is_set():
                return
            try:
                self.refresh()
            except Exception:  # the watcher must outlive a bad pointer or a full disk
                log.exception("active pointer check failed for %s", self.model)

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
