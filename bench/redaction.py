"""Benchmark: Kong & Chaudhuri's Table I (forget digit 0) on the embedded digits default.

One run does everything, so every ratio compares numbers measured on the same machine:

1. bootstrap a fresh LETHE_HOME (the digit classifier and the base DCGAN, 200 epochs);
   the base version's manifest records the pre-training wall time and iterations;
2. for each algorithm (Alg. 1 ``kong-data``, Alg. 2 ``kong-validity``, Alg. 3
   ``kong-classifier``), each variant (``ours``: the library defaults; ``paper-defaults``:
   lam 0.85, 8 epochs, no EMA, no checkpoint selection) and each seed, run the job path
   (:func:`unlearning.jobs.run_redaction`, the one the CLI and the service use);
3. judge every candidate, and the base, with one judge: invalidity = share of samples the
   digit classifier calls 0; IS from the digit classifier; FID against the training
   digits other than 0 (classifier features); all on the same ``--eval-samples`` latents
   (``--eval-seed``, not the gates' seed). The base model filtered by the same check
   (rejection sampling) gives the reference FID.

Wall time is reported as a ratio of the base pre-training wall time (the paper reports
redaction cost relative to pre-training): ``wall_time_ratio`` uses the training phase of
the job (from the start of training to the start of the gates, per-epoch monitoring
included), ``job_wall_time_ratio`` the whole job (loading, gates on ``--eval-samples``
samples twice, ONNX export, registry). ``iteration_ratio`` is mini-batch iterations over
pre-training's (pre-training runs K_G = 5 generator steps per iteration, redaction 1).

Prints ONE JSON document on stdout (``--markdown``: a Markdown table instead); progress
goes to stderr. ``--render FILE`` turns a saved JSON document into the Markdown table.

    .venv/bin/python bench/redaction.py --output bench-redaction.json          # full (hours on CPU)
    .venv/bin/python bench/redaction.py --quick --eval-samples 5000            # smoke run
    .venv/bin/python bench/redaction.py --render bench-redaction.json          # README table
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finite, log, write_json  # noqa: E402

METHODS = ("kong-data", "kong-validity", "kong-classifier")
PAPER_DEFAULTS = {"lam": 0.85, "epochs": 8, "ema_decay": None, "select_best": False, "patience": None}
ZERO_RULE = {"kind": "validity", "rule": {"type": "classifier_label", "classifier": "digits", "labels": [0]}}
SETS = {
    "kong-data": [{"kind": "data", "files": ["zeros.npz"]}],
    "kong-validity": [ZERO_RULE],
    "kong-classifier": [{"kind": "classifier", "classifier": "digits",
                         "score": {"type": "one_minus_prob", "label": 0}, "tau": 0.5}],
}
FORGOTTEN = 0
EVAL_SEED = 4242  # not jobs.GATE_SEED: the benchmark judges on latents the job never saw
MAX_INVALIDITY = 0.005
SUMMARY_KEYS = ("invalidity", "inception_score", "fid", "fid_over_filtered_base", "min_retained_share_ratio",
                "wall_time_ratio", "job_wall_time_ratio", "iteration_ratio", "selected_epoch", "epochs_run")






def mean_se(values: list[Any]) -> dict[str, Any]:
    """Mean and standard error (sample std, ddof = 1, over sqrt(n)) of the non-null values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"mean": None, "se": None, "n": 0}
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None
    return {"mean": statistics.fmean(xs), "se": se, "n": len(xs)}


# ------------------------------------------------------------------------------- running


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=None, help="redaction seeds per row (default 5; 2 with --quick)")
    parser.add_argument("--eval-samples", type=int, default=10_000,
                        help="samples for the gates and for the benchmark's own judge (default 10000)")
    parser.add_argument("--eval-seed", type=int, default=EVAL_SEED, help="latent seed of the benchmark's judge")
    parser.add_argument("--quick", action="store_true", help="2 seeds, no paper-default rows (smoke run)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--home", type=Path, default=None,
                        help="LETHE_HOME to bootstrap and use (default: a temporary folder, removed afterwards); "
                             "an already bootstrapped home is reused and its recorded pre-training time is used")
    parser.add_argument("--pretrain-epochs", type=int, default=None,
                        help="override the base pre-training epochs (default: the library's 200; for debugging)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--device", default=None, help="torch device (default: unlearning.runtime.pick_device)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON document to this file")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table instead of JSON")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="print the Markdown table of a saved JSON document and exit (runs nothing)")
    args = parser.parse_args(argv)
    if args.seeds is None:
        args.seeds = 2 if args.quick else 5
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.eval_samples < 100:
        parser.error("--eval-samples must be at least 100 (the gates' minimum)")
    return args


def machine(device: Any, threads: int) -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch_threads": threads, "torch": torch.__version__,
            "device": str(device)}
    if device.type == "cuda":
        info["device_name"] = torch.cuda.get_device_name(device)
    return info


def base_judgement(registry, base, device, n: int, seed: int) -> dict[str, Any]:
    """The benchmark's judge (domain, Omega = 'classifier says 0', reference = training
    digits other than 0) and the base model's numbers, filtered FID included."""
    from unlearning.evaluation import judge, load_domain
    from unlearning.jobs import prepare_redaction_set
    from unlearning.spec import load_spec

    domain = load_domain(registry, base, device=device)
    zeros = prepare_redaction_set(load_spec({"name": "bench-judge", "sets": [ZERO_RULE]}), registry, domain, None)
    reference = domain.reference(domain.train.images[domain.train.labels != FORGOTTEN])
    generator = registry.load_generator(base.version).to(device)
    before = judge(generator, domain, n=n, seed=seed, omega=zeros, reference=reference, filtered=True)
    return {"domain": domain, "zeros": zeros, "reference": reference, "before": before}


def one_run(method: str, variant: str, seed: int, *, registry, base, uploads: Path, judged: dict[str, Any],
            pretraining: dict[str, Any], args: argparse.Namespace, device) -> dict[str, Any]:
    from unlearning.evaluation import judge
    from unlearning.jobs import run_redaction
    from unlearning.methods.base import Callbacks
    from unlearning.metrics import min_share_ratio

    hyper: dict[str, Any] = {"seed": seed}
    if variant == "paper-defaults":
        hyper.update(PAPER_DEFAULTS)
    spec = {"name": f"bench-{method}-{variant}-s{seed}", "method": method, "sets": SETS[method],
            "hyperparameters": hyper,
            "gates": {"max_invalidity": MAX_INVALIDITY, "eval_samples": args.eval_samples}}
    marks: dict[str, float] = {}

    def progress(fraction: float, info: dict[str, Any]) -> None:
        stage = info.get("stage")
        if stage and stage not in marks:
            marks[stage] = time.monotonic()
        if stage == "training" and "invalidity" in info and "epoch" in info:
            log(f"  {method}/{variant}/seed {seed}: epoch {info['epoch']} invalidity {info['invalidity']:.4g}"
                + (f" fid {info['fid']:.4g}" if isinstance(info.get("fid"), float) else ""))

    run: dict[str, Any] = {"method": method, "variant": variant, "seed": seed, "hyperparameters": hyper}
    started = time.monotonic()
    try:
        outcome = run_redaction(spec, registry=registry, parent=base.version, uploads_dir=uploads,
                                activate=False, callbacks=Callbacks(progress=progress), device=device)
    except Exception as exc:  # a failed run is still reported
        run.update(status="error", error=f"{type(exc).__name__}: {exc}", wall_time_s=time.monotonic() - started)
        log(f"  {method}/{variant}/seed {seed}: ERROR {run['error']}")
        traceback.print_exc(file=sys.stderr)
        return run
    job_wall = time.monotonic() - started
    training_wall = None
    if "training" in marks and "validating" in marks:
        training_wall = marks["validating"] - marks["training"]

    candidate = registry.load_generator(outcome.version).to(device)
    after = judge(candidate, judged["domain"], n=args.eval_samples, seed=args.eval_seed,
                  omega=judged["zeros"], reference=judged["reference"])
    before = judged["before"]
    filtered = before.get("filtered_fid")
    stats = outcome.stats
    run.update({
        "status": outcome.status,
        "reason": outcome.reason,
        "version": outcome.version,
        "invalidity": after["invalidity"],
        "invalid_count": after["invalid_count"],
        "inception_score": after["inception_score"],
        "fid": after["fid"],
        "fid_over_filtered_base": after["fid"] / filtered if filtered else None,
        "class_shares": after["class_shares"],
        "min_retained_share_ratio": finite(min_share_ratio(before["class_shares"], after["class_shares"],
                                                           {FORGOTTEN})),
        # the epoch whose weights were returned: the library's choice, else the last one run
        "selected_epoch": stats.get("selected_epoch", stats.get("epochs_run")),
        "epochs_run": stats.get("epochs_run"),
        "iterations": stats.get("iterations"),
        "d_steps": stats.get("d_steps"),
        "g_steps": stats.get("g_steps"),
        "pool": stats.get("pool"),
        "validity_queries": stats.get("validity_queries"),
        "redaction_score": {k: finite(v) for k, v in (stats.get("redaction_score") or {}).items()} or None,
        "training_wall_time_s": training_wall,
        "wall_time_s": job_wall,
        "job_duration_s": outcome.duration_s,
        "wall_time_ratio": training_wall / pretraining["wall_time_s"] if training_wall is not None else None,
        "job_wall_time_ratio": job_wall / pretraining["wall_time_s"],
        "iteration_ratio": stats["iterations"] / pretraining["iterations"] if "iterations" in stats else None,
        "gates": {g.name: {"value": finite(g.value), "limit": g.limit, "passed": g.passed} for g in outcome.gates},
        "gate_invalidity": outcome.after.get("invalidity"),
        "history": [{k: finite(v) for k, v in h.items() if k in ("epoch", "invalidity", "fid", "pool",
                                                                 "round_invalid")} for h in outcome.history],
    })
    log(f"  {method}/{variant}/seed {seed}: {outcome.status}, invalidity {after['invalidity']:.3g}, "
        f"FID {after['fid']:.4g} ({run['fid_over_filtered_base'] or float('nan'):.3g}x filtered base), "
        f"epoch {run['selected_epoch']}/{run['epochs_run']}, training {training_wall or float('nan'):.1f}s, "
        f"job {job_wall:.1f}s" + (f" ({outcome.reason})" if outcome.reason else ""))
    return run


def summarise(runs: list[dict[str, Any]], method: str, variant: str) -> dict[str, Any]:
    mine = [r for r in runs if r["method"] == method and r["variant"] == variant]
    row: dict[str, Any] = {"method": method, "variant": variant, "seeds": [r["seed"] for r in mine],
                           "status": {s: sum(r["status"] == s for r in mine) for s in
                                      sorted({r["status"] for r in mine})}}
    for key in SUMMARY_KEYS:
        row[key] = mean_se([r.get(key) for r in mine])
    return row


def base_row(before: dict[str, Any]) -> dict[str, Any]:
    single = lambda x: {"mean": finite(x), "se": None, "n": 1}  # noqa: E731
    filtered = before.get("filtered_fid")
    return {"method": "base", "variant": "no redaction", "seeds": [0], "status": {"promoted": 1},
            "invalidity": single(before["invalidity"]), "inception_score": single(before["inception_score"]),
            "fid": single(before["fid"]),
            "fid_over_filtered_base": single(before["fid"] / filtered if filtered else None),
            "min_retained_share_ratio": single(1.0), "wall_time_ratio": single(1.0),
            "job_wall_time_ratio": single(None), "iteration_ratio": single(1.0),
            "selected_epoch": single(None), "epochs_run": single(None),
            "filtered_fid": finite(filtered), "filtered_kept": before.get("filtered_kept")}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)

    from unlearning.bootstrap import MODEL, bootstrap
    from unlearning.data import digits_splits
    from unlearning.data.files import save_images_npz
    from unlearning.registry import Registry
    from unlearning.runtime import pick_device

    device = pick_device(args.device)
    scratch = tempfile.TemporaryDirectory(prefix="lethe-bench-")
    try:
        home = args.home or Path(scratch.name) / "home"
        registry = Registry(home)
        fresh = registry.active(MODEL) is None
        log(f"bootstrapping {home} on {device} with {threads} threads"
            + ("" if fresh else " (already bootstrapped: reusing its base model and recorded pre-training time)"))
        started = time.monotonic()
        bootstrap(registry, epochs=args.pretrain_epochs, device=device, show_progress=False)
        bootstrap_wall = time.monotonic() - started
        base = registry.get(registry.active(MODEL))
        recorded = base.metrics["pretraining"]
        pretraining = {"wall_time_s": recorded["wall_time_s"], "iterations": recorded["iterations"],
                       "epochs": recorded["epochs"], "d_steps": recorded.get("d_steps"),
                       "g_steps": recorded.get("g_steps"), "device": recorded.get("device"),
                       "bootstrap_wall_time_s": bootstrap_wall if fresh else None, "measured_in_this_run": fresh,
                       "version": base.version}
        log(f"base {base.version}: pre-training {pretraining['epochs']} epochs, {pretraining['iterations']} "
            f"iterations, {pretraining['wall_time_s']:.1f}s (bootstrap {bootstrap_wall:.1f}s)")

        uploads = Path(scratch.name) / "uploads"
        train, _ = digits_splits()
        save_images_npz(train.images[train.labels == FORGOTTEN], uploads / "zeros.npz")

        judged = base_judgement(registry, base, device, args.eval_samples, args.eval_seed)
        before = judged["before"]
        log(f"base: invalidity {before['invalidity']:.4g}, IS {before['inception_score']:.4g}, "
            f"FID {before['fid']:.4g}, filtered FID {before['filtered_fid']:.4g} "
            f"({judged['domain'].extractor_name}, {args.eval_samples} samples)")

        variants = ["ours"] if args.quick else ["ours", "paper-defaults"]

        def document(runs: list[dict[str, Any]], partial: bool = False) -> dict[str, Any]:
            rows = [base_row(before)] + [summarise(runs, m, v) for v in variants for m in args.methods
                                         if any(r["method"] == m and r["variant"] == v for r in runs)]
            doc = {
                "benchmark": "Kong & Chaudhuri Table I: forget digit 0 on the digits default",
                "machine": machine(device, threads),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "settings": {"seeds": args.seeds, "quick": args.quick, "eval_samples": args.eval_samples,
                             "eval_seed": args.eval_seed, "max_invalidity": MAX_INVALIDITY,
                             "extractor": before["extractor"], "paper_defaults": PAPER_DEFAULTS,
                             "judge": "invalidity = share of samples the digit classifier calls 0; FID against "
                                      "the training digits other than 0",
                             "wall_time_ratio": "training phase of the job / base pre-training wall time"},
                "pretraining": pretraining,
                "base": {k: finite(v) for k, v in before.items()},
                "rows": rows,
                "runs": runs,
            }
            if partial:
                doc["partial"] = True
            return doc

        seeds = list(range(args.seeds))
        runs: list[dict[str, Any]] = []
        total = len(variants) * len(args.methods) * len(seeds)
        for variant in variants:
            for method in args.methods:
                for seed in seeds:
                    log(f"run {len(runs) + 1}/{total}: {method} ({variant}), seed {seed}")
                    runs.append(one_run(method, variant, seed, registry=registry, base=base, uploads=uploads,
                                        judged=judged, pretraining=pretraining, args=args, device=device))
                    if args.output:  # keep what is done if a long run dies later
                        write_json(args.output, document(runs, partial=len(runs) < total))
        return document(runs)
    finally:
        scratch.cleanup()




# ------------------------------------------------------------------------------ markdown


def _fmt(stat: dict[str, Any] | None, kind: str) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    m, se = stat["mean"], stat.get("se")
    if kind == "sci":
        text = "0" if m == 0 else f"{m:.1e}"
        return text + (f" ± {se:.1e}" if se is not None else "")
    digits = 3 if kind == "ratio" else 2
    return f"{m:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


def markdown(doc: dict[str, Any]) -> str:
    pre, settings = doc["pretraining"], doc["settings"]
    lines = [
        "| method | variant | seeds | promoted | invalidity | IS | FID | FID / filtered base | wall-time ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in doc["rows"]:
        promoted = f"{row['status'].get('promoted', 0)}/{len(row['seeds'])}"
        wall = "1 (pre-training)" if row["method"] == "base" else _fmt(row["wall_time_ratio"], "ratio")
        lines.append(f"| {row['method']} | {row['variant']} | {len(row['seeds'])} | "
                     f"{'-' if row['method'] == 'base' else promoted} | {_fmt(row['invalidity'], 'sci')} | "
                     f"{_fmt(row['inception_score'], 'plain')} | {_fmt(row['fid'], 'plain')} | "
                     f"{_fmt(row['fid_over_filtered_base'], 'ratio')} | {wall} |")
        if row["method"] == "base" and row.get("filtered_fid") is not None:
            lines.append(f"| base, filtered | rejection sampling | - | - | 0 | - | {row['filtered_fid']:.2f} | 1 | - |")
    m = doc["machine"]
    lines += [
        "",
        f"Mean ± standard error over seeds; {settings['eval_samples']} samples per model (seed "
        f"{settings['eval_seed']}); FID with `{settings['extractor']}` against the training digits other than 0; "
        f"invalidity = share of samples the digit classifier calls 0. Wall-time ratio = training phase of the "
        f"redaction job / base pre-training ({pre['epochs']} epochs, {pre['iterations']} iterations, "
        f"{pre['wall_time_s']:.0f} s). {m['device']}, {m['torch_threads']} threads, torch {m['torch']}, "
        f"{m['platform']}, {doc['date'][:10]}.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(markdown(json.loads(args.render.read_text())))
        return 0
    doc = run_benchmark(args)
    if args.output:
        write_json(args.output, doc)
        log(f"wrote {args.output}")
    print(markdown(doc) if args.markdown else json.dumps(doc, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
