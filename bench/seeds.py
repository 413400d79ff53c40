"""Seed sweep: do the methods hold their bounds on other base models, or did one lucky
trajectory meet them? (Training on another CPU takes other floating-point paths, so the
base a test meets on another machine is, in effect, another seed.)

For each seed, a fresh LETHE_HOME holding only the digits domain (guide and judge, shared)
gets a base model pre-trained with that seed, and the job runs on it through the job path
(:func:`unlearning.jobs.run_redaction`), with the method's seed set to the same value:

* ``i2i-proxy``: the inpainter forgets the digit 0 with the proxy retain set (no retain
  data). Bounds: retain FID ratio <= 1.2 and forget FID ratio >= 3 (the gates; restorations
  of held-out inputs, FID on the judge's features).
* ``feedback-dcgan``: the DCGAN forgets "leans left" from a person's marks (simulated from
  the top decile of pixel slant, a measure the method never sees; ``boundary: 0``).
  Bounds: every retained class keeps >= half its share among the parent's samples outside
  Omega (the gate, by the judge's classes),
  the left-leaning share falls >= 5x and FID against the digits without the feature (the
  judge's features) rises <= 1.5x (tests/test_feedback.py), judged on 10,000 latents the
  job never saw.

Prints ONE JSON document (per-seed rows, and per row the min / max / mean of each number
and whether every seed is inside every bound); ``--markdown`` prints the tables instead.

    .venv/bin/python bench/seeds.py --seeds 5 --output bench/results/seeds.json
    .venv/bin/python bench/seeds.py --render bench/results/seeds.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finite, log, write_json  # noqa: E402

ROWS = ("i2i-proxy", "feedback-dcgan")
JUDGE_SEED, JUDGE_N = 4242, 10_000
ZERO_RULE = {"kind": "validity", "rule": {"type": "classifier_label", "classifier": "digits", "labels": [0]}}
BOUNDS = {
    "i2i-proxy": {"retain_fid_ratio": ("<=", 1.2), "forget_fid_ratio": (">=", 3.0)},
    "feedback-dcgan": {"class_balance": (">=", 0.5), "share_fall": (">=", 5.0), "fid_ratio": ("<=", 1.5)},
}


def fresh_home(domain_home: Path, root: Path, seed: int) -> Path:
    """A LETHE_HOME with the digits domain (its guide and judge) and no models."""
    home = root / f"seed-{seed}"
    home.mkdir(parents=True)
    for part in ("domains", "classifiers"):
        shutil.copytree(domain_home / part, home / part)
    return home


def seeded_base(registry, model: str, seed: int, device):
    """The seed's base of ``model``: the home's first version when a kept home has one
    (--keep-homes), else pre-trained now with that seed."""
    from unlearning.bootstrap import build_model
    from unlearning.domains import BUILTIN_DOMAINS

    if registry.active(model):
        return registry.get(f"{model}-v1")
    recipe = BUILTIN_DOMAINS["digits"].recipe(model)
    return build_model(registry, "digits", recipe, epochs=None, seed=seed, device=device, show_progress=False)


def run_i2i(registry, seed: int, device, eval_samples: int) -> dict[str, Any]:
    from unlearning.jobs import run_redaction

    base = seeded_base(registry, "digits-inpainter", seed, device)
    spec = {"name": f"seeds-i2i-{seed}", "sets": [ZERO_RULE], "hyperparameters": {"retain": "proxy", "seed": seed}}
    started = time.monotonic()
    outcome = run_redaction(spec, registry=registry, parent=base.version, activate=False, device=device)
    gates = {g.name: g.value for g in outcome.gates}
    return {"status": outcome.status, "reason": outcome.reason, "retain_fid_ratio": gates["retain_fid_ratio"],
            "forget_fid_ratio": gates["forget_fid_ratio"], "steps_run": outcome.stats.get("steps_run"),
            "selected_step": outcome.stats.get("selected_step"), "job_s": time.monotonic() - started}


def run_feedback(registry, seed: int, device, eval_samples: int) -> dict[str, Any]:
    import torch

    from redaction import simulated_marks, slant_threshold
    from unlearning.evaluation import judge, load_domain
    from unlearning.jobs import run_redaction
    from unlearning.metrics.features import slant
    from unlearning.runtime import latents

    base = seeded_base(registry, "digits", seed, device)
    parent = registry.load_generator(base.version).to(device).eval()
    threshold = slant_threshold(parent, device)
    spec = {"name": f"seeds-feedback-{seed}", "method": "feedback", "sets": [simulated_marks(parent, lambda x: slant(x) >= threshold, device)],
            "hyperparameters": {"boundary": 0.0, "seed": seed},
            "gates": {"max_invalidity": 0.05, "eval_samples": eval_samples}}
    started = time.monotonic()
    outcome = run_redaction(spec, registry=registry, parent=base.version, activate=False, device=device)
    job_s = time.monotonic() - started
    edited = registry.load_generator(outcome.version).to(device).eval()
    z = latents(JUDGE_N, parent.latent_dim, JUDGE_SEED).to(device)
    with torch.no_grad():
        before = float((slant(parent(z)) >= threshold).float().mean())
        after = float((slant(edited(z)) >= threshold).float().mean())
    domain = load_domain(registry, base, device=device)
    without = domain.reference(domain.train.images[slant(domain.train.images) < threshold])
    fid_before = judge(parent, domain, n=JUDGE_N, seed=JUDGE_SEED, reference=without)["fid"]
    fid_after = judge(edited, domain, n=JUDGE_N, seed=JUDGE_SEED, reference=without)["fid"]
    gates = {g.name: g.value for g in outcome.gates}
    return {"status": outcome.status, "reason": outcome.reason, "class_balance": gates["class_balance"],
            "invalidity": gates.get("invalidity"), "share_before": before, "share_after": after,
            "share_fall": before / max(after, 1e-9), "fid_before": fid_before, "fid_after": fid_after,
            "fid_ratio": fid_after / fid_before, "selected_epoch": outcome.stats.get("selected_epoch"),
            "job_s": job_s}


RUNNERS = {"i2i-proxy": run_i2i, "feedback-dcgan": run_feedback}


def inside(row: str, result: dict[str, Any]) -> bool:
    for key, (op, bound) in BOUNDS[row].items():
        value = result.get(key)
        if value is None or (value > bound if op == "<=" else value < bound):
            return False
    return True


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in ROWS:
        mine = [r for r in runs if r["row"] == row and "error" not in r]
        if not mine:
            continue
        stats = {}
        for key in BOUNDS[row]:
            values = [r[key] for r in mine if r.get(key) is not None]
            if values:
                stats[key] = {"min": min(values), "max": max(values), "mean": statistics.fmean(values),
                              "sd": statistics.stdev(values) if len(values) > 1 else None}
        out[row] = {"seeds": len(mine), "promoted": sum(r["status"] == "promoted" for r in mine),
                    "every_seed_inside_bounds": all(r["inside_bounds"] for r in mine), "stats": stats,
                    "bounds": {k: f"{op} {b}" for k, (op, b) in BOUNDS[row].items()}}
    return out


def render(doc: dict[str, Any]) -> str:
    lines = []
    for row in ROWS:
        runs = [r for r in doc["runs"] if r["row"] == row]
        if not runs:
            continue
        keys = list(BOUNDS[row])
        lines.append(f"**{row}** (bounds: " + ", ".join(f"{k} {op} {b}" for k, (op, b) in BOUNDS[row].items()) + ")\n")
        lines.append("| seed | status | " + " | ".join(keys) + " | inside bounds |")
        lines.append("|---" * (len(keys) + 3) + "|")
        for r in runs:
            if "error" in r:
                lines.append(f"| {r['seed']} | error: {r['error']} |" + " |" * (len(keys) + 1))
                continue
            cells = [f"{r[k]:.3f}" if isinstance(r.get(k), float) else str(r.get(k)) for k in keys]
            lines.append(f"| {r['seed']} | {r['status']} | " + " | ".join(cells) + f" | {'yes' if r['inside_bounds'] else 'NO'} |")
        s = doc["summary"].get(row)
        if s:
            lines.append("| min - max | " + f"{s['promoted']}/{s['seeds']} promoted | " + " | ".join(
                f"{s['stats'][k]['min']:.3f} - {s['stats'][k]['max']:.3f}" if k in s["stats"] else "-" for k in keys)
                + f" | {'all' if s['every_seed_inside_bounds'] else 'NOT all'} |")
        lines.append("")
    m = doc["machine"]
    lines.append(f"{m['platform']}, {m['cpu_count']} cores, torch {m['torch']}, {doc['date']}, {doc['command']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {', '.join(ROWS)}")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--domain-home", type=Path, default=None,
                        help="a LETHE_HOME holding the digits domain (default: bootstrap one in a temporary folder)")
    parser.add_argument("--keep-homes", type=Path, default=None,
                        help="keep each seed's home (its pre-trained base) in this folder and reuse it next time")
    parser.add_argument("--eval-samples", type=int, default=10_000, help="gate samples of the feedback job")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--render", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.render:
        print(render(json.loads(args.render.read_text())))
        return 0
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows {', '.join(sorted(unknown))}")

    import torch

    from unlearning.bootstrap import bootstrap
    from unlearning.registry import Registry
    from unlearning.runtime import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device()
    scratch = tempfile.TemporaryDirectory(prefix="lethe-seeds-")
    root = Path(scratch.name)
    domain_home = args.domain_home or root / "domain"
    bootstrap(Registry(domain_home), domain="digits", models=[], device=device, show_progress=False)
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for row in rows:
            log(f"{row}, seed {seed}")
            kept = args.keep_homes / row / f"seed-{seed}" if args.keep_homes else None
            registry = Registry(kept if kept and kept.exists() else
                                fresh_home(domain_home, kept.parent if kept else root / row, seed))
            result: dict[str, Any] = {"row": row, "seed": seed}
            try:
                result.update(RUNNERS[row](registry, seed, device, args.eval_samples))
                result["inside_bounds"] = inside(row, result)
            except Exception as exc:  # a failed run is reported, and the sweep goes on
                result["error"] = f"{type(exc).__name__}: {exc}"
            log(f"  {json.dumps({k: finite(v) for k, v in result.items()}, default=str)}")
            runs.append({k: finite(v) for k, v in result.items()})
            if not args.keep_homes:
                shutil.rmtree(registry.home, ignore_errors=True)
    doc = {"runs": runs, "summary": summarise(runs), "date": datetime.now(timezone.utc).date().isoformat(),
           "command": "bench/seeds.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": {"platform": platform.platform(), "cpu_count": __import__("os").cpu_count(),
                       "torch": torch.__version__, "device": str(device),
                       "threads": torch.get_num_threads()}}
    if args.output:
        write_json(args.output, doc)
    print(render(doc) if args.markdown else json.dumps(doc, indent=2))
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
