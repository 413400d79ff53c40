"""Load on a running Lethe: client threads posting /generate, every request recorded, and
the arithmetic on the records (latency percentiles, per-window summaries). Shared by the
benchmarks (``serving.py``, ``soak.py``) and the fault tests (``tests/test_faults.py``)."""

from __future__ import annotations

import threading
import time
from typing import Any

REQUEST_TIMEOUT_S = 120.0


def latency_stats(values: list[float]) -> dict[str, Any]:
    """Percentiles (linear interpolation) of request latencies, in seconds."""
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "mean": None, "max": None}
    import numpy as np

    xs = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(xs, [50, 90, 99])
    return {"count": len(values), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "mean": float(xs.mean()), "max": float(xs.max())}


class Load:
    """``clients`` threads posting /generate back to back until stopped; every request is
    recorded as (start, end, ok, status, worker pid, version, images, error). ``pause_s``
    between a client's requests makes it a steady trickle instead of a flood."""

    def __init__(self, url: str, clients: int, n: int, first_seed: int = 0, pause_s: float = 0.0,
                 timeout_s: float = REQUEST_TIMEOUT_S):
        self.url, self.clients, self.n = url, clients, n
        self.pause_s, self.timeout_s = pause_s, timeout_s
        self.records: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seed = first_seed

    def _next_seed(self) -> int:
        with self._lock:
            self._seed += 1
            return self._seed

    def _client(self, barrier: threading.Barrier) -> None:
        import httpx

        with httpx.Client(timeout=self.timeout_s) as client:
            barrier.wait()
            while not self._stop.is_set():
                record: dict[str, Any] = {"ok": False, "status": None, "worker": None, "version": None,
                                          "images": 0, "error": None}
                record["start"] = time.perf_counter()
                try:
                    reply = client.post(f"{self.url}/generate", json={"n": self.n, "seed": self._next_seed(),
                                                                      "version": None})
                    record["end"] = time.perf_counter()
                    record["status"] = reply.status_code
                    record["worker"] = reply.headers.get("x-lethe-worker")
                    if reply.status_code != 200:
                        record["error"] = f"HTTP {reply.status_code}: {reply.text[:200]}"
                    else:
                        body = reply.json()
                        record["version"] = body.get("model_version")
                        record["images"] = len(body.get("images") or [])
                        if record["images"] != self.n:
                            record["error"] = f"{record['images']} images, asked for {self.n}"
                        else:
                            record["ok"] = True
                except Exception as exc:  # a failed request is recorded, the client goes on
                    record.setdefault("end", time.perf_counter())
                    record["error"] = f"{type(exc).__name__}: {exc}"[:300]
                with self._lock:
                    self.records.append(record)
                if self.pause_s:
                    self._stop.wait(self.pause_s)

    def start(self) -> "Load":
        barrier = threading.Barrier(self.clients + 1)
        self._threads = [threading.Thread(target=self._client, args=(barrier,), daemon=True,
                                          name=f"bench-client-{i}") for i in range(self.clients)]
        for t in self._threads:
            t.start()
        barrier.wait()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout_s + 5)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.records)


def summarise(records: list[dict[str, Any]], t0: float, t1: float) -> dict[str, Any]:
    """Requests that completed in [t0, t1]: images/s over the window, latency, errors."""
    done = [r for r in records if t0 <= r["end"] <= t1]
    ok = [r for r in done if r["ok"]]
    workers: dict[str, int] = {}
    for r in ok:
        workers[r["worker"]] = workers.get(r["worker"], 0) + 1
    images = sum(r["images"] for r in ok)
    return {"window_s": t1 - t0, "requests": len(done), "ok": len(ok), "errors": len(done) - len(ok),
            "images": images, "images_per_s": images / (t1 - t0), "requests_per_s": len(ok) / (t1 - t0),
            "latency_s": latency_stats([r["end"] - r["start"] for r in ok]), "workers": workers,
            "error_samples": sorted({r["error"] for r in done if not r["ok"]})[:5]}
