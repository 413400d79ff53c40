"""Benchmark: a bounded soak of the whole service on loopback.

``lethe serve`` (``--workers`` serving workers plus the job worker) on a copy of a
bootstrapped LETHE_HOME, ``--clients`` threads sampling ``/generate`` for at least
``--duration`` seconds, while two redaction jobs are submitted through the admin API, run,
promote and hot-swap. The timeline is cut into phases:

* ``warm-up``: the first ``--warmup`` seconds (excluded from the memory baseline);
* ``steady``: sampling only, until the first job is submitted;
* ``job 1`` / ``job 2``: from a job's submission until its version is served;
* ``between``: sampling only, between the two jobs;
* ``after``: sampling only, from the second swap to the end (at least ``--after`` s).

Per phase: requests, errors, images/s, p50/p99 latency. Per process (each serving worker,
the job worker, and each job's own process while it lives): resident memory every
``--sample-every`` seconds, its growth from the end of the warm-up to the end, and the
growth over the ``after`` phase (the target for the serving and job workers: flat, since
each swap drops the old ONNX session and each job's memory leaves with its process). ``latency_ratio_*`` = a phase's p99 / the steady p99,
so the numbers compare within one run. Targets: zero errors, memory flat after warm-up.

Prints ONE JSON document on stdout; progress goes to stderr; ``--plot FILE`` draws
latency and memory over time with the phases shaded.

    .venv/bin/python bench/soak.py --home ~/.lethe --output bench/results/soak.json --plot soak.png
    .venv/bin/python bench/soak.py --duration 120 --warmup 20 --epochs 2          # smoke run

``--database postgresql`` runs the same soak on two instances with separate LETHE_HOMEs
that share only PostgreSQL and an S3 bucket (a throwaway cluster from Debian's
``postgresql`` package and moto's S3 server, unless ``--database-url`` /
``--registry-url`` name real ones; boto3's variables then say where S3 is). The clients
are split between the instances, the jobs are submitted to each in turn, and each
promotion reports the seconds from the pointer's move (its ``activated_at`` in the
database) to the last serving worker of either instance seen answering with the new
version (probes on fresh connections every 50 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finite, log, write_json  # noqa: E402
from loadgen import Load, summarise  # noqa: E402
from serving import Server, free_port, machine  # noqa: E402

MODEL = "digits"
FORGET_ZERO = {"sets": [{"kind": "classifier", "classifier": "digits",
                         "score": {"type": "one_minus_prob", "label": 0}, "tau": 0.5}],
               "gates": {"max_invalidity": 0.01, "eval_samples": 5000}}
TARGET_MEMORY_GROWTH_MB = 20.0  # "flat": less than this over the after phase, per process


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--home", type=Path, default=None,
                        help="a bootstrapped LETHE_HOME to copy (default: bootstrap one in a temporary folder)")
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of sampling, at least (default 600)")
    parser.add_argument("--warmup", type=float, default=60.0, help="seconds of warm-up (default 60)")
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of sampling before job 1 (default 60)")
    parser.add_argument("--between", type=float, default=30.0, help="seconds between the jobs (default 30)")
    parser.add_argument("--after", type=float, default=120.0,
                        help="seconds after the second swap, at least (default 120)")
    parser.add_argument("--workers", type=int, default=2, help="serving workers (default 2)")
    parser.add_argument("--clients", type=int, default=4, help="sampling threads (default 4)")
    parser.add_argument("--n", type=int, default=16, help="images per request (default 16)")
    parser.add_argument("--pause", type=float, default=0.05,
                        help="seconds each client waits between requests (default 0.05)")
    parser.add_argument("--epochs", type=int, default=None, help="redaction epochs per job (default: the method's)")
    parser.add_argument("--permissive-gates", action="store_true",
                        help="gates every job passes (for a smoke run on a home bootstrapped with few epochs)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between memory samples")
    parser.add_argument("--monitor-share", type=float, default=0.1,
                        help="LETHE_MONITOR_SHARE of the server (default 0.1: the online monitor runs)")
    parser.add_argument("--database", choices=("sqlite", "postgresql"), default="sqlite",
                        help="sqlite: one instance on one LETHE_HOME (default); postgresql: two instances, "
                             "separate homes, sharing PostgreSQL and S3")
    parser.add_argument("--database-url", default=None, help="with --database postgresql: an existing database "
                        "(default: a throwaway cluster)")
    parser.add_argument("--registry-url", default=None, help="with --database postgresql: s3://bucket/prefix "
                        "(default: moto's server and a new bucket)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON document to this file")
    parser.add_argument("--plot", type=Path, default=None, help="draw latency and memory over time (PNG)")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.clients < 1 or not 1 <= args.n <= 1024:
        parser.error("--workers and --clients must be at least 1, --n in 1..1024")
    return args


# ------------------------------------------------------------------------------- memory


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def server_processes(root: int) -> dict[int, str]:
    """pid -> role of the processes `lethe serve` (pid ``root``) started; BentoML's workers
    run in process groups of their own, so this walks the process tree."""
    import psutil

    roles = {}
    try:
        children = psutil.Process(root).children(recursive=True)
    except psutil.NoSuchProcess:
        return roles
    for process in children:
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:
            continue
        if "_bentoml_impl.worker" in command:
            roles[process.pid] = "serving worker"
        elif "service.worker --job" in command:
            roles[process.pid] = "job process"  # one per job, gone when it ends
        elif "service.worker" in command:
            roles[process.pid] = "job worker"
    return roles


class MemorySampler:
    """RSS of every serving and job worker, every ``every`` seconds, in a thread."""

    def __init__(self, root: int, every: float):
        self.root, self.every = root, every
        self.samples: list[dict[str, Any]] = []  # {"t", "pid", "role", "rss_mb"}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="soak-memory")

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.perf_counter()
            for pid, role in server_processes(self.root).items():
                rss = rss_mb(pid)
                if rss is not None:
                    self.samples.append({"t": now, "pid": pid, "role": role, "rss_mb": rss})
            self._stop.wait(self.every)

    def start(self) -> "MemorySampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(self.every + 5)

    def report(self, warm_t: float, after_t: float | None, end_t: float) -> list[dict[str, Any]]:
        out = []
        for pid in sorted({s["pid"] for s in self.samples}):
            mine = [s for s in self.samples if s["pid"] == pid]
            warm = [s for s in mine if s["t"] >= warm_t]

            def at(t: float) -> float | None:  # the first sample at or after t
                later = [s["rss_mb"] for s in mine if s["t"] >= t]
                return later[0] if later else None

            last = mine[-1]["rss_mb"]
            start, after = at(warm_t), at(after_t) if after_t is not None else None
            out.append({
                "pid": pid, "role": mine[0]["role"], "samples": len(mine),
                "rss_mb_first": mine[0]["rss_mb"], "rss_mb_after_warmup": start, "rss_mb_end": last,
                "rss_mb_peak": max(s["rss_mb"] for s in mine),
                "growth_mb_after_warmup": finite(last - start) if start is not None else None,
                "growth_mb_after_phase": finite(last - after) if after is not None else None,
                "slope_mb_per_min_after_warmup": _slope(warm),
                "alive_at_end": mine[-1]["t"] >= end_t - 2 * self.every,
            })
        return out


def _slope(samples: list[dict[str, Any]]) -> float | None:
    if len(samples) < 3:
        return None
    ts = [s["t"] / 60 for s in samples]
    ys = [s["rss_mb"] for s in samples]
    return finite(statistics.linear_regression(ts, ys).slope)


# --------------------------------------------------------------------------------- jobs


class Admin:
    def __init__(self, url: str, token: str):
        import httpx

        self.client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def submit(self, spec: dict[str, Any], parent: str) -> str:
        reply = self.client.post("/admin/redactions", params={"from": parent},
                                 files={"spec": (None, json.dumps(spec), "application/json")})
        if reply.status_code != 202:
            raise RuntimeError(f"job refused: {reply.status_code} {reply.text[:500]}")
        return reply.json()["job_id"]

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.client.get(f"/admin/redactions/{job_id}").json()
            if job["state"] in ("promoted", "rejected", "failed", "cancelled"):
                return job
            time.sleep(1.0)
        raise RuntimeError(f"job {job_id} did not finish within {timeout:.0f} s")


def first_served(load: Load, version: str, since: float, timeout: float = 60.0) -> float:
    """perf_counter time of the first request answered by ``version`` (the swap, as clients see it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ends = [r["end"] for r in load.snapshot() if r["ok"] and r["version"] == version and r["end"] >= since]
        if ends:
            return min(ends)
        time.sleep(0.2)
    raise RuntimeError(f"{version} was not served within {timeout:.0f} s of its promotion")


class SwapProbe:
    """Fresh-connection requests to every instance every ``every`` s, in a thread: which
    serving worker answered with which version, when (wall clock)."""

    def __init__(self, urls: list[str], every: float = 0.05):
        self.urls, self.every = urls, every
        self.seen: list[tuple[float, str, str, str]] = []  # (time, url, worker, version)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="soak-swap-probe")

    def _run(self) -> None:
        import httpx

        while not self._stop.is_set():
            for url in self.urls:
                try:
                    reply = httpx.post(f"{url}/generate", json={"n": 1, "seed": 0}, timeout=10,
                                       headers={"Connection": "close"})
                    if reply.status_code == 200:
                        self.seen.append((time.time(), url, reply.headers.get("x-lethe-worker", "?"),
                                          reply.json()["model_version"]))
                except Exception:  # counted by the load's clients, not here
                    pass
            self._stop.wait(self.every)

    def start(self) -> "SwapProbe":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def last_swap_s(self, version: str, moved_at: float) -> dict[str, Any]:
        """Seconds from ``moved_at`` to the first answer with ``version`` of each worker seen."""
        workers = {(url, worker) for _, url, worker, _ in self.seen}
        first = {}
        for key in workers:
            times = [t for t, url, worker, v in self.seen if (url, worker) == key and v == version and t >= moved_at]
            if times:
                first[f"{key[0]} worker {key[1]}"] = round(min(times) - moved_at, 3)
        return {"workers": first, "last_worker_swapped_s": max(first.values()) if first else None,
                "workers_seen": len(workers)}


def activated_at(database_url: str, model: str) -> float:
    """When the model's pointer last moved (the database's record), as a Unix time."""
    import psycopg

    with psycopg.connect(database_url) as conn:
        stamp = conn.execute("SELECT activated_at FROM active_versions WHERE model = %s", (model,)).fetchone()[0]
    return datetime.fromisoformat(stamp).timestamp()


def run_job(admin: Admin, load: Load, name: str, spec: dict[str, Any], parent: str,
            phases: list[dict[str, Any]], probe: SwapProbe | None = None,
            database_url: str | None = None) -> dict[str, Any]:
    submitted = time.perf_counter()
    job_id = admin.submit({"name": "soak-" + name.replace(" ", "-"), **spec}, parent)
    log(f"{name}: submitted job {job_id} from {parent}")
    job = admin.wait(job_id, timeout=3600)
    if job["state"] != "promoted":
        raise RuntimeError(f"{name}: job ended {job['state']}: {job.get('reason')}")
    swapped = first_served(load, job["version"], submitted)
    log(f"{name}: {job['version']} promoted and served {time.perf_counter() - submitted:.0f} s after submission")
    phases.append({"name": name, "t0": submitted, "t1": swapped})
    out = {"job_id": job_id, "version": job["version"], "state": job["state"], "method": job["result"]["method"],
           "worker": job["worker"], "wall_s": swapped - submitted,
           "invalidity_after": (job["result"]["after"] or {}).get("invalidity")}
    if probe is not None and database_url:
        time.sleep(3.0)  # let the probes see every worker
        out["swap"] = probe.last_swap_s(job["version"], activated_at(database_url, MODEL))
        log(f"{name}: promotion to the last worker swapped: {out['swap']['last_worker_swapped_s']} s")
    return out


# ------------------------------------------------------------------------------ the soak


class _Loads:
    """One Load per instance, read as one."""

    def __init__(self, loads: list[Load]):
        self.loads = loads

    def snapshot(self) -> list[dict[str, Any]]:
        return [r for load in self.loads for r in load.snapshot()]

    def stop(self) -> None:
        for load in self.loads:
            load.stop()


class _Memory:
    def __init__(self, samplers: list[MemorySampler]):
        self.samplers = samplers

    @property
    def samples(self) -> list[dict[str, Any]]:
        return [s for sampler in self.samplers for s in sampler.samples]

    def stop(self) -> None:
        for sampler in self.samplers:
            sampler.stop()

    def report(self, *args) -> list[dict[str, Any]]:
        return [p for sampler in self.samplers for p in sampler.report(*args)]


def soak(args: argparse.Namespace, homes: list[Path], env: dict[str, str]) -> dict[str, Any]:
    from unlearning.registry import Registry

    base = Registry(homes[0], database_url_=env.get("LETHE_DATABASE_URL"),
                    registry_url_=env.get("LETHE_REGISTRY_URL")).active(MODEL)
    spec = dict(FORGET_ZERO, hyperparameters={"epochs": args.epochs} if args.epochs else {})
    if args.permissive_gates:
        spec["gates"] = {"max_invalidity": 1.0, "max_fid_increase": 1e6, "min_class_share_ratio": 0.0,
                         "eval_samples": 1000}
    token = secrets.token_urlsafe(16)
    servers = [Server(home, free_port(), args.workers, token, args.monitor_share, env=env) for home in homes]
    for server in servers:
        server.start()
    doc: dict[str, Any] = {}
    try:
        for server in servers:
            server.wait_ready(600)
        share = max(1, args.clients // len(servers))
        load = _Loads([Load(server.url, share, args.n, first_seed=1_000_000 * i, pause_s=args.pause, timeout_s=60)
                       .start() for i, server in enumerate(servers)])
        memory = _Memory([MemorySampler(server.process.pid, args.sample_every).start() for server in servers])
        probe = SwapProbe([server.url for server in servers]).start() if len(servers) > 1 else None
        t0 = time.perf_counter()
        phases = [{"name": "warm-up", "t0": t0, "t1": t0 + args.warmup}]
        admins = [Admin(server.url, token) for server in servers]
        db_url = env.get("LETHE_DATABASE_URL")
        try:
            time.sleep(args.warmup)
            log("steady")
            time.sleep(args.steady)
            phases.append({"name": "steady", "t0": phases[-1]["t1"], "t1": time.perf_counter()})
            jobs = [run_job(admins[0], load, "job 1", spec, base, phases, probe, db_url)]
            between = time.perf_counter()
            time.sleep(args.between)
            phases.append({"name": "between", "t0": between, "t1": time.perf_counter()})
            jobs.append(run_job(admins[-1], load, "job 2", spec, base, phases, probe, db_url))
            after = time.perf_counter()
            remaining = max(args.after, args.duration - (after - t0))
            log(f"after: {remaining:.0f} s more")
            time.sleep(remaining)
            end = time.perf_counter()
            phases.append({"name": "after", "t0": after, "t1": end})
        finally:
            load.stop()
            memory.stop()
            if probe is not None:
                probe.stop()
        records = load.snapshot()
        errors = [r for r in records if not r["ok"]]
        per_phase = [{"phase": p["name"], **summarise(records, p["t0"], p["t1"])} for p in phases]
        steady_p99 = next(p for p in per_phase if p["phase"] == "steady")["latency_s"]["p99"]
        for p in per_phase:
            p["latency_ratio_p99_over_steady"] = finite(p["latency_s"]["p99"] / steady_p99) \
                if steady_p99 and p["latency_s"]["p99"] else None
        processes = memory.report(t0 + args.warmup, after, end)
        log_errors = {server.url: server.log_errors() for server in servers}
        doc = {
            "duration_s": end - t0, "requests": len(records), "errors": len(errors),
            "error_samples": sorted({r["error"] for r in errors})[:10],
            "images": sum(r["images"] for r in records if r["ok"]),
            "versions_served": sorted({r["version"] for r in records if r["ok"]}),
            "instances": len(servers), "database": args.database,
            "jobs": jobs, "phases": per_phase, "processes": processes,
            "server_log": log_errors,
            "targets": {
                "zero_errors": len(errors) == 0,
                "memory_flat_after_warmup": all(
                    (p["growth_mb_after_phase"] or 0.0) < TARGET_MEMORY_GROWTH_MB
                    for p in processes if p["role"] in ("serving worker", "job worker") and p["alive_at_end"]),
                "memory_flat_threshold_mb": TARGET_MEMORY_GROWTH_MB,
            },
            "_timeline": {"t0": t0, "phases": phases, "records": records, "memory": memory.samples},
        }
    finally:
        for server in servers:
            server.stop()
            server.cleanup()
    return doc


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = doc["_timeline"]
    t0 = timeline["t0"]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    ok = [r for r in timeline["records"] if r["ok"]]
    top.scatter([r["end"] - t0 for r in ok], [1000 * (r["end"] - r["start"]) for r in ok], s=2, alpha=0.4)
    bad = [r for r in timeline["records"] if not r["ok"]]
    if bad:
        top.scatter([r["end"] - t0 for r in bad], [1000 * (r["end"] - r["start"]) for r in bad], s=12, c="red",
                    label=f"errors ({len(bad)})")
        top.legend(loc="upper right")
    top.set_yscale("log")
    top.set_ylabel("request latency (ms)")
    colours = {"warm-up": "#dddddd", "job 1": "#ffd9b3", "job 2": "#ffd9b3"}
    for axis in (top, bottom):
        for phase in timeline["phases"]:
            if phase["name"] in colours:
                axis.axvspan(phase["t0"] - t0, phase["t1"] - t0, color=colours[phase["name"]], alpha=0.6, lw=0)
    for phase in timeline["phases"]:
        top.text((phase["t0"] + phase["t1"]) / 2 - t0, top.get_ylim()[1], phase["name"], ha="center", va="top",
                 fontsize=8)
    by_pid: dict[int, list[dict[str, Any]]] = {}
    for sample in timeline["memory"]:
        by_pid.setdefault(sample["pid"], []).append(sample)
    for pid, samples in sorted(by_pid.items()):
        bottom.plot([s["t"] - t0 for s in samples], [s["rss_mb"] for s in samples],
                    label=f"{samples[0]['role']} {pid}")
    bottom.set_ylabel("resident memory (MB)")
    bottom.set_xlabel("seconds since the start of sampling (orange: a job runs until its version is served)")
    bottom.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Lethe soak: {doc['requests']} requests, {doc['errors']} errors, "
                 f"{len(doc['jobs'])} jobs promoted and swapped")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


class SharedStorage:
    """PostgreSQL and S3 for ``--database postgresql``: the ones named, or throwaway ones
    (tests/backends.py: a cluster from Debian's package, moto's server)."""

    def __init__(self, args: argparse.Namespace):
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from backends import PostgresCluster, S3Server

        self.cluster = self.s3 = None
        self.env: dict[str, str] = {}
        if args.database_url:
            self.env["LETHE_DATABASE_URL"] = args.database_url
        else:
            self.cluster = PostgresCluster()
            self.env["LETHE_DATABASE_URL"] = self.cluster.new_database()
        if args.registry_url:
            self.env["LETHE_REGISTRY_URL"] = args.registry_url
        else:
            self.s3 = S3Server()
            self.env.update(self.s3.env())
            os.environ.update(self.s3.env())
            self.env["LETHE_REGISTRY_URL"] = self.s3.new_bucket()
        log(f"shared storage: {self.env['LETHE_REGISTRY_URL']} and a PostgreSQL database")

    def seed(self, home: Path, scratch: Path) -> list[Path]:
        """The copied home's domains, classifiers, versions and pointers into the shared storage;
        two empty homes for the two instances."""
        from backends import publish_home
        from unlearning.registry import Registry

        publish_home(home, Registry(scratch / "seed", database_url_=self.env["LETHE_DATABASE_URL"],
                                    registry_url_=self.env["LETHE_REGISTRY_URL"]))
        return [scratch / "home-a", scratch / "home-b"]

    def close(self) -> None:
        for server in (self.cluster, self.s3):
            if server is not None:
                server.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lethe-soak-") as scratch:
        home = Path(scratch) / "home"
        bootstrap_s = None
        if args.home is not None:
            log(f"copying {args.home}")
            shutil.copytree(args.home, home, ignore=shutil.ignore_patterns("jobs.sqlite*", "reports", "uploads"))
        else:
            from unlearning.bootstrap import bootstrap
            from unlearning.registry import Registry

            log("bootstrapping a fresh home (a few minutes)")
            started = time.monotonic()
            bootstrap(Registry(home), show_progress=False)
            bootstrap_s = time.monotonic() - started
        homes, env, shared = [home], {}, None
        if args.database == "postgresql":
            shared = SharedStorage(args)
            env = shared.env
            homes = shared.seed(home, Path(scratch))
        doc = {
            "benchmark": "soak: sampling while two redaction jobs run, promote and hot-swap"
                         + (" (two instances, PostgreSQL and S3)" if shared else ""),
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(os.cpu_count() or 1),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
            | {"bootstrap_s": bootstrap_s, "spec": FORGET_ZERO},
        }
        try:
            doc.update(soak(args, homes, env))
        finally:
            if shared is not None:
                shared.close()
    timeline = doc.pop("_timeline")
    if args.plot:
        plot({**doc, "_timeline": timeline}, args.plot)
        log(f"plot: {args.plot}")
    if args.output:
        write_json(args.output, doc)
    print(json.dumps(doc, indent=2, allow_nan=False))
    met = doc["targets"]["zero_errors"] and doc["targets"]["memory_flat_after_warmup"]
    log(f"{doc['requests']} requests, {doc['errors']} errors; targets {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    raise SystemExit(main())
