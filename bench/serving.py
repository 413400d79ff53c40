"""Benchmark: serving throughput and latency, ONNX Runtime vs PyTorch eager, raw vs HTTP, hot swap.

One run measures everything side by side on the same machine, so every ratio compares
numbers taken minutes apart under the same conditions:

1. **engines**: images/s of ONNX Runtime (``OnnxGenerator``) vs PyTorch eager
   (``registry.load_generator``, ``eval()``, ``torch.no_grad()``) for the active generator
   at batch 1, 64 and 256, both with the same number of threads (``--threads``; default:
   all cores). Each repetition times both engines back to back (alternating which goes
   first); the median repetition counts. ``ratio`` = ORT images/s / eager images/s.
2. **raw**: what one ``/generate`` call costs without HTTP: ``OnnxGenerator.sample(n, seed)``
   (the service's call, latents included) + PNG encoding (``png_bytes``) + base64 of every
   image, in this process with ``--threads`` threads. The baseline images/s.
3. **http**: the real service (``lethe serve --workers W``, in its own process group, its
   own ``BENTOML_HOME``, ``LETHE_MONITOR_SHARE=--monitor-share``, default 0) under 1, 4 and
   16 concurrent clients (threads, one keep-alive ``httpx.Client`` each), each posting
   ``{"n": --n, "seed": s}`` to ``/generate`` for ``--duration`` seconds after a warm-up.
   ``throughput_ratio`` = HTTP images/s / raw images/s; ``time_ratio`` = its inverse (HTTP
   time per image over raw time per image).
4. **swap**: with ``--swap-clients`` clients running, a steady period of ``--duration``
   seconds, then a period of the same length in which the active pointer flips between two
   versions every ``--swap-every`` seconds (``registry.activate``, or the admin API with
   ``--swap-via admin``). p99 latency of the requests in flight during the
   ``--swap-window`` seconds after each swap is compared with the p99 of windows at the same
   offsets in the steady period. If the model has no other servable version, one is
   created by copying the active version's files (it stays in the registry); the original
   active version is re-activated at the end.

``--model`` picks the generator (default ``digits``; ``fashion`` is the Fashion-MNIST
DCGAN at 28x28); the server runs with ``LETHE_MODEL`` set to it, and a home without it
bootstraps its built-in domain first.

Prints ONE JSON document on stdout; progress goes to stderr. The server is always stopped
(SIGTERM to its launcher, then SIGKILL to its process group).

    .venv/bin/python bench/serving.py --out bench/results/serving.json        # full run
    .venv/bin/python bench/serving.py --home /tmp/bench-home --quick --port 3300  # smoke run
    .venv/bin/python bench/serving.py --model fashion --out serving-fashion.json  # the 28x28 DCGAN
"""

from __future__ import annotations

import argparse
import atexit
import base64
import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finite, log, processor, write_json  # noqa: E402
from loadgen import REQUEST_TIMEOUT_S, Load, latency_stats, summarise  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BATCHES = (1, 64, 256)
CLIENTS = (1, 4, 16)
VERSION_FILES = ("generator.safetensors", "generator.json", "discriminator.safetensors",
                 "discriminator.json", "generator.onnx")
TARGETS = {"ort_over_eager_batch256": 1.3, "http_time_ratio_16_clients": 1.5, "swap_p99_ratio": 2.0}
LOG_ERROR_MARKERS = ("Traceback", " ERROR ", "ERROR:", "[ERROR]", "Exception", "CRITICAL")






def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return finite(a / b)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


# ------------------------------------------------------------------------------- arguments


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=None,
                        help="LETHE_HOME (default: $LETHE_HOME or ~/.lethe); bootstrapped first if it has no "
                             "active version of --model")
    parser.add_argument("--model", default=None,
                        help="the model to serve and measure (default: the embedded default, digits; a built-in "
                             "model the home lacks is bootstrapped)")
    parser.add_argument("--quick", action="store_true",
                        help="bootstrap with 2 epochs if needed, 3 repetitions, 3 s per load level (smoke run)")
    parser.add_argument("--workers", type=int, default=2, help="serving worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and ORT intra-op threads for the in-process measurements (default: all cores)")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds measured per load level, and per swap phase period (default 10; 3 with --quick)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds of load before each measured period (default 2; 1 with --quick)")
    parser.add_argument("--n", type=int, default=64, help="images per /generate request and per raw call (default 64)")
    parser.add_argument("--clients", type=int, nargs="+", default=list(CLIENTS), help="concurrency levels")
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES), help="engine batch sizes")
    parser.add_argument("--reps", type=int, default=None, help="timed repetitions per measurement (default 7; 3 quick)")
    parser.add_argument("--min-rep-s", type=float, default=None,
                        help="each repetition repeats the call until this many seconds pass (default 0.25; 0.1 quick)")
    parser.add_argument("--swap-clients", type=int, default=16, help="clients during the swap phase (default 16)")
    parser.add_argument("--swap-every", type=float, default=2.0, help="seconds between swaps (default 2)")
    parser.add_argument("--swap-window", type=float, default=1.0,
                        help="seconds after each swap counted as 'around the swap' (default 1)")
    parser.add_argument("--swap-via", choices=("registry", "admin"), default="registry",
                        help="flip the pointer with registry.activate in this process (default) or "
                             "POST /admin/models/{version}/activate")
    parser.add_argument("--monitor-share", type=float, default=0.0,
                        help="LETHE_MONITOR_SHARE of the server (default 0: no online monitor)")
    parser.add_argument("--port", type=int, default=None, help="server port (default: a free port)")
    parser.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for /readyz")
    parser.add_argument("--skip-engines", action="store_true", help="skip phase 1 (ORT vs eager)")
    parser.add_argument("--skip-http", action="store_true", help="skip phases 3 and 4 (no server)")
    parser.add_argument("--skip-swap", action="store_true", help="skip phase 4")
    parser.add_argument("--out", "--output", dest="out", type=Path, default=None,
                        help="also write the JSON document to this file")
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 3.0 if args.quick else 10.0
    if args.warmup is None:
        args.warmup = 1.0 if args.quick else 2.0
    if args.reps is None:
        args.reps = 3 if args.quick else 7
    if args.min_rep_s is None:
        args.min_rep_s = 0.1 if args.quick else 0.25
    if args.threads is None:
        args.threads = cores()
    if args.home is None:
        from unlearning.runtime import lethe_home

        args.home = lethe_home()
    for name in ("workers", "threads", "n", "reps", "swap_clients"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if not 1 <= args.n <= 1024:
        parser.error("--n must be in 1..1024 (the service's limit)")
    if args.duration <= 0 or args.warmup < 0 or args.swap_every <= 0 or args.swap_window <= 0:
        parser.error("--duration, --swap-every and --swap-window must be positive, --warmup not negative")
    if any(c < 1 for c in args.clients) or any(b < 1 for b in args.batches):
        parser.error("--clients and --batches must be at least 1")
    from unlearning.runtime import DEFAULT_MODEL

    args.model = args.model or DEFAULT_MODEL
    return args


def machine(threads: int) -> dict[str, Any]:
    import bentoml
    import onnxruntime
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(),
            "processor": processor(), "cpu_count": os.cpu_count(), "cores_available": cores(),
            "threads": threads, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
            "onnxruntime_providers": onnxruntime.get_available_providers(), "bentoml": bentoml.__version__,
            "loadavg_start": list(os.getloadavg())}


# --------------------------------------------------------------------------------- timing


def per_call(fn: Callable[[], Any], min_s: float) -> float:
    """Seconds per call of ``fn``, repeating it until ``min_s`` seconds have passed."""
    calls = 0
    started = time.perf_counter()
    while True:
        fn()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_s:
            return elapsed / calls


def engines(registry, version: str, args: argparse.Namespace) -> dict[str, Any]:
    """Phase 1: ORT vs eager images/s per batch size, same threads, interleaved repetitions."""
    import numpy as np
    import torch

    from unlearning.export import OnnxGenerator
    from unlearning.runtime import latents

    torch.set_num_threads(args.threads)
    model = registry.load_generator(version).eval()
    session = OnnxGenerator(registry.file_path(version, "generator.onnx"), intra_op_threads=args.threads)
    rows = []
    for batch in args.batches:
        z = latents(batch, session.latent_dim, seed=batch)
        z_np = np.ascontiguousarray(z.numpy(), dtype=np.float32)

        def run_ort() -> Any:
            return session.generate(z_np)

        def run_eager() -> Any:
            with torch.no_grad():
                return model(z)

        with torch.no_grad():
            expected = model(z).numpy()
        diff = float(np.max(np.abs(session.generate(z_np).astype(np.float64) - expected)))
        for _ in range(2):  # warm-up
            run_ort()
            run_eager()
        times: dict[str, list[float]] = {"ort": [], "eager": []}
        for rep in range(args.reps):
            order = ("ort", "eager") if rep % 2 == 0 else ("eager", "ort")
            for name in order:
                times[name].append(per_call(run_ort if name == "ort" else run_eager, args.min_rep_s))
        row: dict[str, Any] = {"batch": batch, "max_abs_diff": finite(diff)}
        for name, ts in times.items():
            median = statistics.median(ts)
            row[name] = {"images_per_s": batch / median, "median_s_per_call": median, "reps_s_per_call": ts}
        row["ratio_ort_over_eager"] = ratio(row["ort"]["images_per_s"], row["eager"]["images_per_s"])
        log(f"  batch {batch:4d}: ORT {row['ort']['images_per_s']:10.1f} img/s, eager "
            f"{row['eager']['images_per_s']:10.1f} img/s, ratio {row['ratio_ort_over_eager']:.2f} "
            f"(max |diff| {diff:.2g})")
        rows.append(row)
    return {"threads": args.threads, "providers": session.providers, "latent_dim": session.latent_dim,
            "batches": rows, "loadavg": list(os.getloadavg())}


def raw_path(registry, version: str, args: argparse.Namespace, threads: int | None = None) -> dict[str, Any]:
    """Phase 2: ORT sample + PNG + base64 for n images per call, in this process."""
    import torch

    from unlearning.data.files import png_bytes
    from unlearning.export import OnnxGenerator

    threads = threads or args.threads
    torch.set_num_threads(threads)
    session = OnnxGenerator(registry.file_path(version, "generator.onnx"), intra_op_threads=threads)
    n = args.n
    seed = iter(range(1, 1 << 62))

    def generate() -> Any:
        return session.sample(n, next(seed))

    def encode(images) -> list[str]:
        return [base64.b64encode(png_bytes(torch.from_numpy(img))).decode() for img in images]

    def full() -> list[str]:
        return encode(generate())

    sample_images = generate()
    for _ in range(2):
        full()
    totals, gens, encs = [], [], []
    for _ in range(args.reps):
        totals.append(per_call(full, args.min_rep_s))
        gens.append(per_call(generate, args.min_rep_s))
        encs.append(per_call(lambda: encode(sample_images), args.min_rep_s))
    median = statistics.median(totals)
    result = {"n": n, "threads": threads, "images_per_s": n / median, "median_s_per_call": median,
              "generate_s_per_call": statistics.median(gens), "encode_s_per_call": statistics.median(encs),
              "reps_s_per_call": totals,
              "response_bytes_approx": sum(len(s) for s in encode(sample_images)),
              "loadavg": list(os.getloadavg())}
    torch.set_num_threads(args.threads)
    log(f"  raw n={n}, {threads} threads: {result['images_per_s']:.1f} img/s ({median * 1e3:.1f} ms/call: generate "
        f"{result['generate_s_per_call'] * 1e3:.1f} ms, PNG+base64 {result['encode_s_per_call'] * 1e3:.1f} ms)")
    return result


# --------------------------------------------------------------------------------- server


class Server:
    """``lethe serve`` in its own process group, with its own BENTOML_HOME; always stopped."""

    def __init__(self, home: Path, port: int, workers: int, token: str, monitor_share: float,
                 env: dict[str, str] | None = None):
        self.home, self.port, self.workers, self.token = home, port, workers, token
        self.extra_env = dict(env or {})
        self.monitor_share = monitor_share
        self.scratch = tempfile.TemporaryDirectory(prefix="lethe-bench-serving-")
        self.log_path = Path(self.scratch.name) / "server.log"
        self.process: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{port}"

    def start(self) -> None:
        lethe = Path(sys.executable).with_name("lethe")
        if not lethe.exists():
            lethe = Path(shutil.which("lethe") or "lethe")
        bento_home = Path(self.scratch.name) / "bentoml"
        bento_home.mkdir()
        env = dict(os.environ, LETHE_HOME=str(self.home), BENTOML_HOME=str(bento_home),
                   LETHE_ADMIN_TOKEN=self.token, LETHE_MONITOR_SHARE=str(self.monitor_share), **self.extra_env)
        for name in ("LETHE_WORKERS", "LETHE_THREADS"):  # the launcher and settings decide
            env.pop(name, None)
        command = [str(lethe), "serve", "--port", str(self.port), "--host", "127.0.0.1",
                   "--workers", str(self.workers)]
        log(f"starting {' '.join(command)} (log {self.log_path})")
        self._log_file = open(self.log_path, "wb")
        self.process = subprocess.Popen(command, env=env, cwd=REPO, stdin=subprocess.DEVNULL,
                                        stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True)
        _SERVERS.add(self)

    def wait_ready(self, timeout: float) -> float:
        import httpx

        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode} before it was ready:\n"
                                   + self.log_tail())
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the server was not ready after {timeout:.0f} s:\n" + self.log_tail())

    @staticmethod
    def _group_alive(pgid: int) -> bool:
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False

    def stop(self, timeout: float = 30.0) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None  # stop once (finally, then atexit)
        if process.poll() is None:
            log("stopping the server (SIGTERM)")
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                log("the server ignored SIGTERM; killing its process group")
                with _suppress():
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        # whatever the launcher left in its group (bentoml workers, the job worker)
        deadline = time.monotonic() + 10
        while self._group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if self._group_alive(process.pid):
            log("processes left in the server's group; killing them")
            with _suppress():
                os.killpg(process.pid, signal.SIGKILL)
        self._log_file.close()
        _SERVERS.discard(self)
        log(f"server stopped (exit status {process.returncode})")

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def log_errors(self, limit: int = 10) -> dict[str, Any]:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return {"lines": 0, "error_lines": None, "samples": []}
        bad = [line for line in lines if any(m in line for m in LOG_ERROR_MARKERS)]
        return {"lines": len(lines), "error_lines": len(bad), "samples": [b[:400] for b in bad[:limit]]}

    def cleanup(self) -> None:
        self.scratch.cleanup()


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return exc[0] is not None and issubclass(exc[0], (ProcessLookupError, PermissionError))


_SERVERS: set[Server] = set()


@atexit.register
def _stop_servers() -> None:
    for server in list(_SERVERS):
        with _suppress():
            server.stop(timeout=10)


# ----------------------------------------------------------------------------------- load


def wait_for_workers(url: str, workers: int, timeout: float = 90.0) -> dict[str, int]:
    """Send small requests concurrently until every worker process has answered once (a
    ready server may still have workers loading their session)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, int] = {}
    while time.monotonic() < deadline and len(seen) < workers:
        load = Load(url, max(2, 2 * workers), n=1).start()
        time.sleep(0.5)
        load.stop()
        for r in load.records:
            if r["ok"] and r["worker"]:
                seen[r["worker"]] = seen.get(r["worker"], 0) + 1
    if len(seen) < workers:
        log(f"  warning: only {len(seen)} of {workers} workers answered within {timeout:.0f} s")
    return seen


def throughput(server: Server, raw: dict[str, Any] | None, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Phase 3: images/s and latency per concurrency level, against the raw path."""
    levels = []
    for clients in args.clients:
        load = Load(server.url, clients, args.n, first_seed=clients * 10_000_000).start()
        try:
            time.sleep(args.warmup)
            t0 = time.perf_counter()
            time.sleep(args.duration)
            t1 = time.perf_counter()
        finally:
            load.stop()
        level = {"clients": clients, "n": args.n, **summarise(load.records, t0, t1)}
        level["errors_including_warmup"] = sum(not r["ok"] for r in load.records)
        raw_ips = raw["images_per_s"] if raw else None
        level["throughput_ratio"] = ratio(level["images_per_s"], raw_ips)  # http / raw images/s
        level["time_ratio"] = ratio(raw_ips, level["images_per_s"])  # http time per image / raw
        level["loadavg"] = list(os.getloadavg())
        level["p50_over_raw_call"] = ratio(level["latency_s"]["p50"], raw["median_s_per_call"] if raw else None)
        lat = level["latency_s"]
        log(f"  {clients:3d} clients: {level['images_per_s']:8.1f} img/s ({level['ok']} requests, "
            f"{level['errors']} errors), p50 {_ms(lat['p50'])}, p99 {_ms(lat['p99'])}, "
            f"http/raw {_num(level['throughput_ratio'])}, workers {sorted(level['workers'].values())}")
        levels.append(level)
    return levels


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.1f} ms"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


# ----------------------------------------------------------------------------------- swap


def second_version(registry, model: str, active: str) -> tuple[str, bool]:
    """A servable version of ``model`` other than ``active`` (the newest), else a copy of it."""
    others = [m for m in registry.list_versions(model)
              if m.version != active and m.status != "rejected" and "generator.onnx" in m.files]
    if others:
        return others[-1].version, False
    source = registry.version_dir(active)
    files = [name for name in VERSION_FILES if (source / name).is_file()]

    def write_files(folder: Path) -> None:
        for name in files:
            shutil.copyfile(source / name, folder / name)

    manifest = registry.create_version(model, write_files, parent=active, spec=None,
                                       metrics={"note": "copy made by bench/serving.py for the hot-swap phase"},
                                       status="promoted")
    return manifest.version, True


def _overlapping(records: list[dict[str, Any]], windows: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Requests in flight at some point of any window (each counted once)."""
    return [r for r in records if any(r["start"] < b and r["end"] > a for a, b in windows)]


def swap_phase(server: Server, registry, active: str, args: argparse.Namespace) -> dict[str, Any]:
    """Phase 4: steady period, then a period with a swap every --swap-every seconds."""
    import httpx

    other, created = second_version(registry, args.model, active)
    log(f"  swapping between {active} and {other}" + (" (a copy made for this benchmark)" if created else ""))
    offsets = []
    t = args.swap_every / 2
    while t + args.swap_window <= args.duration + 1e-9:
        offsets.append(t)
        t += args.swap_every
    if not offsets:
        offsets = [0.0]

    def activate(version: str) -> None:
        if args.swap_via == "registry":
            registry.activate(version)
        else:
            reply = httpx.post(f"{server.url}/admin/models/{version}/activate", timeout=REQUEST_TIMEOUT_S,
                               headers={"Authorization": f"Bearer {server.token}"})
            if reply.status_code != 200:
                raise RuntimeError(f"activate {version}: HTTP {reply.status_code} {reply.text[:300]}")

    swaps: list[dict[str, Any]] = []
    load = Load(server.url, args.swap_clients, args.n, first_seed=999_000_000).start()
    try:
        time.sleep(args.warmup)
        steady_t0 = time.perf_counter()
        time.sleep(args.duration)
        swap_t0 = time.perf_counter()
        targets = [other if i % 2 == 0 else active for i in range(len(offsets))]
        for offset, target in zip(offsets, targets):
            delay = swap_t0 + offset - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            asked = time.perf_counter()
            activate(target)
            done = time.perf_counter()
            swaps.append({"offset_s": offset, "to": target, "asked": asked, "at": done,
                          "activate_call_s": done - asked})
        delay = swap_t0 + args.duration - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        swap_t1 = time.perf_counter()
        time.sleep(min(1.0, args.swap_window))  # let in-flight requests of the last window finish
    finally:
        load.stop()
        if registry.active(args.model) != active:
            registry.activate(active)
            log(f"  re-activated {active}")
    records = load.records

    # per swap: when each worker first answered from the new version
    workers = sorted({r["worker"] for r in records if r["ok"]})
    for i, swap in enumerate(swaps):
        end = swaps[i + 1]["at"] if i + 1 < len(swaps) else swap_t1 + 1.0
        switched = {}
        for w in workers:
            firsts = [r["end"] for r in records
                      if r["ok"] and r["worker"] == w and r["version"] == swap["to"] and swap["at"] < r["end"] <= end]
            if firsts:
                switched[w] = min(firsts) - swap["at"]
        swap["workers_switched"] = len(switched)
        swap["propagation_s"] = max(switched.values()) if len(switched) == len(workers) and switched else None

    swap_windows = [(s["at"], s["at"] + args.swap_window) for s in swaps]
    steady_windows = [(steady_t0 + (a - swap_t0), steady_t0 + (b - swap_t0)) for a, b in swap_windows]
    around = [r for r in _overlapping(records, swap_windows) if r["ok"]]
    steady = [r for r in _overlapping(records, steady_windows) if r["ok"]]
    around_lat = latency_stats([r["end"] - r["start"] for r in around])
    steady_lat = latency_stats([r["end"] - r["start"] for r in steady])
    steady_period = summarise(records, steady_t0, swap_t0)
    swap_period = summarise(records, swap_t0, swap_t1)
    errors = sum(not r["ok"] for r in records)
    result = {
        "clients": args.swap_clients, "n": args.n, "via": args.swap_via,
        "versions": [active, other], "created_version": other if created else None,
        "swaps": [{k: v for k, v in s.items() if k not in ("asked", "at")} | {"at_s": s["at"] - swap_t0}
                  for s in swaps],
        "window_s": args.swap_window,
        "around_swaps": {"latency_s": around_lat, "windows": len(swap_windows)},
        "steady_windows": {"latency_s": steady_lat, "windows": len(steady_windows)},
        "p99_ratio": ratio(around_lat["p99"], steady_lat["p99"]),
        "p50_ratio": ratio(around_lat["p50"], steady_lat["p50"]),
        "steady_period": steady_period,
        "swap_period": swap_period,
        "period_p99_ratio": ratio(swap_period["latency_s"]["p99"], steady_period["latency_s"]["p99"]),
        "errors": errors,
        "loadavg": list(os.getloadavg()),
        "error_samples": sorted({r["error"] for r in records if not r["ok"]})[:5],
        "versions_served": {v: sum(1 for r in records if r["ok"] and r["version"] == v)
                            for v in sorted({r["version"] for r in records if r["ok"]})},
    }
    props = [s["propagation_s"] for s in swaps if s["propagation_s"] is not None]
    log(f"  steady p99 {_ms(steady_lat['p99'])} ({steady_lat['count']} requests), around swaps p99 "
        f"{_ms(around_lat['p99'])} ({around_lat['count']}), ratio {_num(result['p99_ratio'])}; "
        f"{len(swaps)} swaps, propagation max {_ms(max(props) if props else None)}, {errors} errors")
    return result


# ------------------------------------------------------------------------------------ main


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    def row(name: str, metric: str, target: str, value: float | None, met: bool | None) -> dict[str, Any]:
        return {"name": name, "metric": metric, "target": target, "value": value, "met": met}

    out = []
    big = [b for b in (doc.get("engines") or {}).get("batches", []) if b["batch"] == 256]
    value = big[0]["ratio_ort_over_eager"] if big else None
    limit = TARGETS["ort_over_eager_batch256"]
    out.append(row("ort_vs_eager", "ORT images/s / eager images/s at batch 256", f">= {limit}", value,
                   None if value is None else value >= limit))
    levels = [lv for lv in (doc.get("http") or {}).get("levels", []) if lv["clients"] == 16]
    value = levels[0]["time_ratio"] if levels else None
    limit = TARGETS["http_time_ratio_16_clients"]
    out.append(row("http_vs_raw", "raw images/s / HTTP images/s at 16 clients (HTTP time per image over raw)",
                   f"<= {limit}", value, None if value is None else value <= limit))
    swap = doc.get("swap") or {}
    value = swap.get("p99_ratio")
    limit = TARGETS["swap_p99_ratio"]
    out.append(row("swap_p99", "p99 latency around swaps / p99 in steady windows", f"<= {limit}", value,
                   None if value is None else value <= limit))
    errors = swap.get("errors")
    out.append(row("swap_errors", "failed requests during the swap phase", "== 0", errors,
                   None if errors is None else errors == 0))
    return out


def run_benchmark(args: argparse.Namespace) -> tuple[dict[str, Any], int]:
    from unlearning.registry import Registry

    registry = Registry(args.home)
    bootstrap_s = None
    if registry.active(args.model) is None:
        from unlearning.bootstrap import bootstrap
        from unlearning.domains import builtin_for_model

        builtin = builtin_for_model(args.model)
        if builtin is None:
            raise SystemExit(f"error: {registry.home} has no active {args.model!r} version, and no built-in domain "
                             "makes it (import it first: lethe import)")
        log(f"{registry.home} has no active {args.model!r} version: bootstrapping"
            + (" (2 epochs)" if args.quick else ""))
        started = time.monotonic()
        bootstrap(registry, domain=builtin.name, models=[args.model],
                  epochs=2 if args.quick else None, show_progress=False)
        bootstrap_s = time.monotonic() - started
    version = registry.active(args.model)
    port = args.port or free_port()
    doc: dict[str, Any] = {
        "benchmark": "serving: ONNX Runtime vs eager, raw ORT+PNG vs HTTP, hot swap",
        "machine": machine(args.threads),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "settings": {"home": str(registry.home), "model": args.model, "version": version, "bootstrap_s": bootstrap_s,
                     "threads": args.threads, "workers": args.workers,
                     "server_threads_per_worker": max(1, cores() // args.workers), "n": args.n,
                     "raw_note": "raw runs in this process with --threads; raw.at_worker_threads (when "
                                 "present) is the same path with one serving worker's threads, for context",
                     "duration_s": args.duration, "warmup_s": args.warmup, "clients": args.clients,
                     "batches": args.batches, "reps": args.reps, "min_rep_s": args.min_rep_s,
                     "monitor_share": args.monitor_share, "port": port, "quick": args.quick,
                     "swap": {"clients": args.swap_clients, "every_s": args.swap_every,
                              "window_s": args.swap_window, "via": args.swap_via},
                     "definitions": {
                         "ratio_ort_over_eager": "ORT images/s / eager images/s, same batch and threads",
                         "throughput_ratio": "HTTP images/s / raw (ORT + PNG + base64, in process) images/s",
                         "time_ratio": "raw images/s / HTTP images/s",
                         "p99_ratio": "p99 of requests in flight within window_s after each swap / p99 of "
                                      "requests in flight in windows at the same offsets of the steady period"}},
        "engines": None, "raw": None, "http": None, "swap": None, "phase_errors": [],
    }
    status = 0

    def phase(name: str, fn: Callable[[], Any]) -> Any:
        nonlocal status
        log(f"{name} ...")
        try:
            return fn()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failed phase is reported; the others still run
            status = 1
            doc["phase_errors"].append({"phase": name, "error": f"{type(exc).__name__}: {exc}"[:4000]})
            log(f"{name}: ERROR {type(exc).__name__}: {exc}")
            traceback.print_exc(file=sys.stderr)
            return None

    if not args.skip_engines:
        doc["engines"] = phase(f"engines: ORT vs eager, {args.threads} threads", lambda: engines(registry, version,
                                                                                                args))
    doc["raw"] = phase(f"raw: ORT + PNG + base64, n={args.n}", lambda: raw_path(registry, version, args))
    worker_threads = max(1, cores() // args.workers)
    if doc["raw"] is not None and worker_threads != args.threads and not args.skip_http:
        # context only (ratios use "raw"): the same path with the threads one serving worker gets
        doc["raw"]["at_worker_threads"] = phase(
            f"raw at one worker's threads ({worker_threads})",
            lambda: raw_path(registry, version, args, threads=worker_threads))

    if not args.skip_http:
        server = Server(registry.home, port, args.workers, secrets.token_urlsafe(24), args.monitor_share,
                        env={"LETHE_MODEL": args.model})
        try:
            def start() -> dict[str, Any]:
                started = time.monotonic()
                server.start()
                ready = server.wait_ready(args.ready_timeout)
                seen = wait_for_workers(server.url, args.workers)
                info = {"url": server.url, "ready_s": ready, "all_workers_s": time.monotonic() - started,
                        "workers_seen": len(seen)}
                log(f"  ready after {ready:.1f} s; {len(seen)} workers answered after "
                    f"{info['all_workers_s']:.1f} s")
                return info

            info = phase("http: starting the server", start)
            if info is not None:
                levels = phase(f"http: {args.clients} clients, n={args.n}, {args.duration:g} s each",
                               lambda: throughput(server, doc["raw"], args))
                doc["http"] = {"server": info, "levels": levels or []}
                if not args.skip_swap:
                    doc["swap"] = phase(f"swap: {args.swap_clients} clients, swap every {args.swap_every:g} s",
                                        lambda: swap_phase(server, registry, version, args))
        finally:
            server.stop()
            doc["server_log"] = server.log_errors()
            if doc["phase_errors"]:
                doc["server_log"]["tail"] = server.log_tail(3000)
            server.cleanup()
    doc["machine"]["loadavg_end"] = list(os.getloadavg())
    doc["targets"] = targets(doc)
    if doc["swap"] and doc["swap"]["errors"]:
        status = 1
    return doc, status


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)  # so that `finally` stops the server
    try:
        doc, status = run_benchmark(args)
    except KeyboardInterrupt as exc:
        log(f"interrupted ({exc or 'SIGINT'}); nothing printed")
        return 130
    for t in doc["targets"]:
        value = "-" if t["value"] is None else f"{t['value']:.3g}"
        verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        log(f"target {t['name']}: {value} (want {t['target']}): {verdict}")
    if args.out:
        write_json(args.out, doc)
        log(f"wrote {args.out}")
    print(json.dumps(doc, indent=2, allow_nan=False))
    return status


if __name__ == "__main__":
    sys.exit(main())
