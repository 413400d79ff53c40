"""The online monitor: a share of served images, checked against the forget checks.

Requests only hand images to a bounded queue (dropped when full, never waited on); a
background thread judges them with the redaction set of every forget spec the service
knows (jobs queued, running or promoted, and the specs of promoted versions) and keeps,
per (version that served them, spec), the invalid share of the last ``window`` images.
Every model the registry hosts is watched; a spec judges only its own model's images.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
from collections import deque

import numpy as np

from unlearning.store import JobStore
from service.metrics import metrics
from unlearning.errors import LetheError

log = logging.getLogger(__name__)

QUEUE_BATCHES = 256
WINDOW = 2000
REFRESH_S = 2.0


class _Window:
    def __init__(self, size: int):
        self.flags: deque[bool] = deque(maxlen=size)

    def add(self, invalid: np.ndarray) -> float:
        self.flags.extend(bool(v) for v in invalid)
        return sum(self.flags) / len(self.flags)


class OnlineMonitor:
    def __init__(self, registry, store: JobStore, share: float, *, window: int = WINDOW):
        self.registry = registry
        self.store = store
        self.share = share
        self.window = window
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_BATCHES)
        self._rng = np.random.default_rng()
        # key -> (spec name, redaction set, model, its mirror by the judge or None, the judge's name)
        self._checks: dict[str, tuple[str, object, str, object, str]] = {}
        self._model_of: dict[str, str] = {}  # version -> model
        self._broken: set[str] = set()
        self._windows: dict[tuple[str, ...], _Window] = {}  # (version, spec[, judge]) -> recent verdicts
        self._domains: dict[str, object] = {}  # dataset -> Domain
        self._refreshed = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def start(self) -> "OnlineMonitor":
        if self.share > 0:
            self._thread = threading.Thread(target=self._run, name="lethe-monitor", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def offer(self, version: str, images: np.ndarray) -> None:
        """Called on the request path: pick ``share`` of the images, queue them, return."""
        if self._thread is None:
            return
        picked = images[self._rng.random(len(images)) < self.share]
        if len(picked):
            try:
                self._queue.put_nowait((version, picked.copy()))
            except queue.Full:
                self.dropped += 1

    # ----------------------------------------------------------------- background thread

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                version, images = self._queue.get(timeout=0.5)
            except queue.Empty:
                continue
            try:
                self._judge(version, images)
            except Exception:
                log.exception("online monitor failed on a batch from %s", version)

    def _watched_specs(self) -> list[tuple[dict, str | None, str]]:
        """(spec, uploads folder, parent version: its model, and the samples any marks were made on)."""
        specs: list[tuple[dict, str | None, str]] = []
        try:
            jobs = self.store.list(limit=50, states=["queued", "running", "validating", "promoted"])
        except LetheError as exc:  # the database is away: watch what the versions say, ask again later
            log.warning("online monitor cannot list jobs: %s", exc)
            jobs = []
        for job in jobs:
            if job.parent:
                specs.append((job.spec, job.uploads_dir, job.parent))
        for manifest in self.registry.list_versions():
            if manifest.status == "promoted" and manifest.spec and manifest.parent:
                specs.append((manifest.spec, None, manifest.parent))
        return specs

    def _model(self, version: str) -> str:
        if version not in self._model_of:
            self._model_of[version] = self.registry.get(version).model
        return self._model_of[version]

    def _refresh(self) -> None:
        from unlearning.evaluation import load_domain
        from unlearning.jobs import prepare_redaction_set
        from unlearning.spec import load_spec

        self._refreshed = time.monotonic()
        for spec_doc, uploads, parent in self._watched_specs():
            key = hashlib.sha256(json.dumps([spec_doc, parent], sort_keys=True).encode()).hexdigest()
            if key in self._checks or key in self._broken:
                continue
            try:
                parent_manifest = self.registry.get(parent)
                name = parent_manifest.domain_name
                if name not in self._domains:
                    import torch

                    self._domains[name] = load_domain(self.registry, parent_manifest, device=torch.device("cpu"))
                domain = self._domains[name]
                spec = load_spec(spec_doc)
                sets = prepare_redaction_set(spec, self.registry, domain,
                                             self.registry.uploads(uploads) if uploads else None,
                                             marks_from=parent)
                if not sets.omega.has_judge:
                    raise ValueError("the spec has no check that can judge generated samples")
                self._checks[key] = (spec.name, sets.omega, self._model(parent), sets.judged, domain.judge_name)
            except Exception as exc:
                self._broken.add(key)
                log.warning("online monitor cannot watch spec %r: %s", spec_doc.get("name"), exc)

    def _judge(self, version: str, images: np.ndarray) -> None:
        import torch

        if time.monotonic() - self._refreshed > REFRESH_S:
            self._refresh()
        if not self._checks:
            return
        m = metrics()
        x = torch.from_numpy(images)
        model = self._model(version)
        with torch.no_grad():
            for spec_name, omega, spec_model, judged, judge_name in list(self._checks.values()):
                if spec_model != model:
                    continue
                invalid = omega.in_omega(x).cpu().numpy()
                ratio = self._windows.setdefault((version, spec_name), _Window(self.window)).add(invalid)
                m.served_checked.labels(version, spec_name).inc(len(invalid))
                m.served_invalid.labels(version, spec_name).inc(int(invalid.sum()))
                m.served_invalidity.labels(version, spec_name).set(ratio)
                if judged is not None:
                    by_judge = judged.in_omega(x).cpu().numpy()
                    window = self._windows.setdefault((version, spec_name, judge_name), _Window(self.window))
                    m.served_judge_invalidity.labels(version, spec_name, judge_name).set(window.add(by_judge))
