"""Benchmark: every method on the embedded digits default, side by side with the papers.

One run does everything, so every ratio compares numbers measured on the same machine:

1. bootstrap a fresh LETHE_HOME (the digit classifier and the base DCGAN, 200 epochs);
   the base version's manifest records the pre-training wall time and iterations;
2. run every row (``--methods``) for each seed through the job path
   (:func:`unlearning.jobs.run_redaction`, the one the CLI and the service use):

   * forget digit 0 (Kong & Chaudhuri Table I): Alg. 1 ``kong-data``, Alg. 2
     ``kong-validity``, Alg. 3 ``kong-classifier``, each as ``ours`` (the library
     defaults) and ``paper-defaults`` (lam 0.85, 8 epochs, no EMA, no checkpoint
     selection); Adapt-then-Unlearn (Tiwary et al.) with each repulsion (``atu-el2``,
     ``atu-il2``, ``atu-nl2``) and its ``param-extrapolation`` baseline, split by the
     same "classifier says 0" rule;
   * forget "leans left" from a person's marks (Moon et al.), ``feedback-dcgan`` on the
     base DCGAN and ``feedback-vae`` on the active ``digits-vae`` version when the
     registry has one (skipped otherwise). Marks are simulated from an independent pixel
     measure the method never sees: the samples of seed 31 (n 1024) whose slant reaches
     the parent's top decile;
3. judge every candidate, and its parent, with the benchmark's own judge on the same
   ``--eval-samples`` latents (``--eval-seed``, not the gates' seed): digit-0 rows by
   invalidity = share of samples the digit classifier calls 0, with FID against the
   training digits other than 0; feedback rows by the target ratio = share of samples
   whose slant reaches the threshold, with FID against the training digits below it. IS
   from the digit classifier, FID on classifier features. The parent filtered by the same
   check (rejection sampling) gives the reference FID. PUL = 100 (parent - candidate) /
   parent of that share (Tiwary et al. eq. 8). The "attack" columns are the job's own
   attacks (``outcome.after["attack"]``, judged by the domain's judge); the worst-case
   table (``bench/attacks.py``) attacks every digit-0 model the same way, whatever its spec.

Wall time is reported as a ratio of the parent's pre-training wall time (the paper reports
redaction cost relative to pre-training): ``wall_time_ratio`` uses the training phase of
the job (from the start of training to the start of the gates, per-epoch monitoring
included), ``job_wall_time_ratio`` the whole job (loading, gates on ``--eval-samples``
samples twice, attack, ONNX export, registry). ``iteration_ratio`` is mini-batch
iterations over pre-training's (pre-training runs K_G = 5 generator steps per iteration,
redaction 1).

Prints ONE JSON document on stdout (``--markdown``: Markdown tables instead); progress
goes to stderr. ``--render FILE`` turns a saved JSON document into the Markdown tables.

    .venv/bin/python bench/redaction.py --output bench-redaction.json          # full (many hours on CPU)
    .venv/bin/python bench/redaction.py --quick --eval-samples 5000 --methods atu-el2,feedback-dcgan
    .venv/bin/python bench/redaction.py --render bench-redaction.json          # README tables
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attacks import (  # noqa: E402
    COLUMNS as ATTACK_COLUMNS, WORST_CASE_NOTE, ClassAttack, attack_columns, worst_case_table,
)
from common import finite, log, write_json  # noqa: E402

PAPER_DEFAULTS = {"lam": 0.85, "epochs": 8, "ema_decay": None, "select_best": False, "patience": None}
ZERO_RULE = {"kind": "validity", "rule": {"type": "classifier_label", "classifier": "digits", "labels": [0]}}
FORGOTTEN = 0
EVAL_SEED = 4242  # not jobs.GATE_SEED: the benchmark judges on latents the job never saw
MAX_INVALIDITY = 0.005  # Kong rows: the paper's 8-epoch invalidity is ~1e-4
ATU_MAX_INVALIDITY = 0.01  # as the Adapt-then-Unlearn tests
FEEDBACK_MAX_INVALIDITY = 0.05  # as the feedback tests: the marks' judge is coarse
# The marks, as tests/test_feedback.py simulates them: the threshold is the top decile of
# the parent's slant on THRESHOLD_N samples of THRESHOLD_SEED; the person sees MARK_N
# samples of MARK_SEED and marks those at or above it.
MARK_SEED, MARK_N = 31, 1024
THRESHOLD_SEED, THRESHOLD_N = 99, 10_000
VAE_MODEL = "digits-vae"
SKIPPED_VAE = "skipped: no digits-vae model"
SUMMARY_KEYS = ("invalidity", "target_ratio", "pul", "inception_score", "fid", "fid_over_filtered_base",
                "min_retained_share_ratio", "attack_worst_case", "attack_invalidity", "parent_attack_worst_case",
                "wall_time_ratio", "job_wall_time_ratio", "iteration_ratio", "selected_epoch", "epochs_run",
                *ATTACK_COLUMNS, "robust_inversion_share")

KONG_TABLE_I = {"kong-data": "8.0 ± 2.2e-5, IS 7.20", "kong-validity": "6.4 ± 0.8e-5, IS 7.19",
                "kong-classifier": "5.2 ± 3.7e-5, IS 7.16"}
ATU_PAPER = "PUL 95-99 %, FID 9-10 (pre-trained 5.4)"


@dataclass(frozen=True)
class Row:
    """One row of the table: a spec run once per seed. ``sets`` None = the simulated marks."""

    name: str  # what --methods selects
    method: str
    variant: str
    task: str  # "zero" (forget digit 0) or "feedback" (forget leaning left)
    max_invalidity: float
    paper: str  # the paper's headline, printed beside ours
    sets: list[dict[str, Any]] | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    model: str = "digits"  # the registry model whose active version is the parent


ROWS: tuple[Row, ...] = (
    *(Row(m, m, "ours", "zero", MAX_INVALIDITY, f"invalidity {KONG_TABLE_I[m]}", sets) for m, sets in (
        ("kong-data", [{"kind": "data", "files": ["zeros.npz"]}]),
        ("kong-validity", [ZERO_RULE]),
        ("kong-classifier", [{"kind": "classifier", "classifier": "digits",
                              "score": {"type": "one_minus_prob", "label": 0}, "tau": 0.5}]))),
    *(Row(f"atu-{r}", "adapt-then-unlearn", f"{r.upper()} repulsion", "zero", ATU_MAX_INVALIDITY, ATU_PAPER,
          [ZERO_RULE], {"repulsion": r}) for r in ("el2", "il2", "nl2")),
    Row("param-extrapolation", "param-extrapolation", "ours", "zero", ATU_MAX_INVALIDITY,
        "PUL 91-95 %, FID 18-46 (Table 1, digits 1/4/8)", [ZERO_RULE]),
    # the DCGAN's latent direction separates the feature weakly: boundary 0 (feedback.py)
    Row("feedback-dcgan", "feedback", "DCGAN, marks, boundary 0", "feedback", FEEDBACK_MAX_INVALIDITY,
        "thickness ratio 0.091 → 0.0135, FID 2.3 → 3.4", hyperparameters={"boundary": 0.0}),
    Row("feedback-vae", "feedback", "VAE, marks", "feedback", FEEDBACK_MAX_INVALIDITY,
        "thickness ratio 0.0947 → 0.0097, FID 23.4 → 23.7", model=VAE_MODEL),
)
ROW_NAMES = tuple(dict.fromkeys(r.name for r in ROWS))
# Kong's Table I settings, as a second variant of each Kong row (not with --quick)
PAPER_ROWS = tuple(Row(r.name, r.method, "paper-defaults", r.task, r.max_invalidity, r.paper, r.sets,
                       PAPER_DEFAULTS) for r in ROWS if r.method.startswith("kong-"))
# --robust: Kong's rows again with latent adversarial training (methods/robust.py)
ROBUST_ROWS = tuple(Row(r.name, r.method, "ours, robust", r.task, r.max_invalidity, r.paper, r.sets,
                        {**r.hyperparameters, "robust": True}) for r in ROWS if r.method.startswith("kong-"))
MEASURES = {"zero": "invalidity", "feedback": "target_ratio"}
BASE_PAPER = {("zero", "digits"): "invalidity 1.1e-1, IS 7.82", ("feedback", "digits"): "thickness ratio 0.091, FID 2.3",
              ("feedback", VAE_MODEL): "thickness ratio 0.0947, FID 23.4"}


def mean_se(values: list[Any]) -> dict[str, Any]:
    """Mean and standard error (sample std, ddof = 1, over sqrt(n)) of the non-null values."""
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not xs:
        return {"mean": None, "se": None, "n": 0}
    se = statistics.stdev(xs) / math.sqrt(len(xs)) if len(xs) > 1 else None
    return {"mean": statistics.fmean(xs), "se": se, "n": len(xs)}


# ------------------------------------------------------------------------------- running


def row_names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROW_NAMES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown row(s) {', '.join(unknown) or '(none)'}; "
                                         f"known: {', '.join(ROW_NAMES)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=None, help="redaction seeds per row (default 5; 2 with --quick)")
    parser.add_argument("--eval-samples", type=int, default=10_000,
                        help="samples for the gates and for the benchmark's own judge (default 10000)")
    parser.add_argument("--eval-seed", type=int, default=EVAL_SEED, help="latent seed of the benchmark's judge")
    parser.add_argument("--quick", action="store_true", help="2 seeds, no paper-default rows (smoke run)")
    parser.add_argument("--robust", action="store_true",
                        help="also run Kong's rows with hyperparameters {robust: true} (latent adversarial training)")
    parser.add_argument("--methods", type=row_names, default=list(ROW_NAMES), metavar="ROW,ROW",
                        help=f"comma-separated rows to run (default all: {','.join(ROW_NAMES)})")
    parser.add_argument("--home", type=Path, default=None,
                        help="LETHE_HOME to bootstrap and use (default: a temporary folder, removed afterwards); "
                             "an already bootstrapped home is reused and its recorded pre-training time is used")
    parser.add_argument("--pretrain-epochs", type=int, default=None,
                        help="override the base pre-training epochs (default: the library's 200; for debugging)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--device", default=None, help="torch device (default: unlearning.runtime.pick_device)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON document to this file")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables instead of JSON")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="print the Markdown tables of a saved JSON document and exit (runs nothing)")
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


def pretraining_record(manifest) -> dict[str, Any] | None:
    """The parent's recorded pre-training (the wall-time ratios' denominator), if it has one."""
    recorded = manifest.metrics.get("pretraining")
    if not recorded or not recorded.get("wall_time_s"):
        return None
    return {"wall_time_s": recorded["wall_time_s"], "iterations": recorded.get("iterations"),
            "epochs": recorded.get("epochs"), "d_steps": recorded.get("d_steps"), "g_steps": recorded.get("g_steps"),
            "device": recorded.get("device"), "version": manifest.version}


@dataclass
class Target:
    """What rows of one task on one parent are judged with: the benchmark's own check, the
    FID reference (and what it is), and the parent's numbers on the judge's latents."""

    task: str
    parent: Any  # VersionManifest
    pretraining: dict[str, Any] | None
    domain: Any  # unlearning.evaluation.Domain
    omega: Any  # RedactionSet: the judge's check
    reference: Any  # FeatureStats
    reference_name: str
    excluded: set[int]  # classes the class-balance ratio leaves out
    before: dict[str, Any]
    sets: list[dict[str, Any]] | None = None  # the simulated marks (feedback)
    threshold: float | None = None
    attacks: ClassAttack | None = None  # the worst-case columns, judged by the judge (bench/attacks.py)

    def judge(self, generator, n: int, seed: int, filtered: bool = False) -> dict[str, Any]:
        from unlearning.evaluation import judge

        return judge(generator, self.domain, n=n, seed=seed, omega=self.omega, reference=self.reference,
                     filtered=filtered)


def zero_target(registry, base, pretraining: dict[str, Any] | None, device, n: int, seed: int) -> Target:
    """Omega = 'classifier says 0', reference = training digits other than 0."""
    from unlearning.evaluation import load_domain
    from unlearning.jobs import prepare_redaction_set
    from unlearning.spec import load_spec

    domain = load_domain(registry, base, device=device)
    zeros = prepare_redaction_set(load_spec({"name": "bench-judge", "sets": [ZERO_RULE]}), registry, domain, None).omega
    reference = domain.reference(domain.train.images[domain.train.labels != FORGOTTEN])
    target = Target("zero", base, pretraining, domain, zeros, reference, f"training digits other than {FORGOTTEN}",
                    {FORGOTTEN}, {})
    generator = registry.load_generator(base.version).to(device)
    target.before = target.judge(generator, n, seed, filtered=True)
    target.attacks = ClassAttack(registry, domain, [ZERO_RULE])
    target.before.update(target.attacks.columns(generator))
    return target


def slant_threshold(generator, device) -> float:
    """The top decile of the generator's slant: what 'leans left' means for its marks."""
    import torch

    from unlearning.metrics.features import slant
    from unlearning.runtime import latents

    with torch.no_grad():
        z = latents(THRESHOLD_N, generator.latent_dim, THRESHOLD_SEED).to(device)
        return float(slant(generator.eval()(z)).quantile(0.9))


def simulated_marks(generator, threshold: float, device) -> dict[str, Any]:
    """A person's marks on the MARK_N samples of MARK_SEED: those whose slant reaches ``threshold``."""
    import torch

    from unlearning.metrics.features import slant
    from unlearning.runtime import latents

    with torch.no_grad():
        images = generator.eval()(latents(MARK_N, generator.latent_dim, MARK_SEED).to(device))
    indices = (slant(images) >= threshold).nonzero().flatten().tolist()
    return {"kind": "feedback", "marked": {"seed": MARK_SEED, "n": MARK_N, "indices": indices}}


def feedback_target(registry, parent, pretraining: dict[str, Any] | None, device, n: int, seed: int) -> Target:
    """Omega = 'slant reaches the parent's top decile' (the judge the method never sees),
    reference = training digits below it, and the marks simulated from it."""
    from unlearning.evaluation import load_domain
    from unlearning.metrics.features import slant
    from unlearning.spec.checks import RedactionSet

    domain = load_domain(registry, parent, device=device)
    generator = registry.load_generator(parent.version).to(device)
    threshold = slant_threshold(generator, device)
    leaning = RedactionSet(validity_checks=[lambda x: slant(x) >= threshold])
    train = domain.train.images
    reference = domain.reference(train[slant(train) < threshold])
    target = Target("feedback", parent, pretraining, domain, leaning, reference,
                    f"training digits with slant < {threshold:.3f}", set(), {},
                    [simulated_marks(generator, threshold, device)], threshold)
    target.before = target.judge(generator, n, seed, filtered=True)
    return target


def one_run(row: Row, seed: int, *, registry, target: Target, uploads: Path, args: argparse.Namespace,
            device) -> dict[str, Any]:
    from unlearning.jobs import run_redaction
    from unlearning.methods.base import Callbacks
    from unlearning.metrics import min_share_ratio

    hyper: dict[str, Any] = {**row.hyperparameters, "seed": seed}
    tag = f"{row.name}/{row.variant}/seed {seed}"
    spec = {"name": re.sub(r"[^a-z0-9]+", "-", f"bench {row.name} {row.variant} s{seed}".lower()),
            "method": row.method, "sets": row.sets if row.sets is not None else target.sets,
            "hyperparameters": hyper,
            "gates": {"max_invalidity": row.max_invalidity, "eval_samples": args.eval_samples}}
    marks: dict[str, float] = {}

    def progress(fraction: float, info: dict[str, Any]) -> None:
        stage = info.get("stage")
        if stage and stage not in marks:
            marks[stage] = time.monotonic()
        if stage == "training" and "invalidity" in info and "epoch" in info:
            phase = f"{info['phase']} " if "phase" in info else ""  # Adapt-then-Unlearn: adapt, then unlearn
            log(f"  {tag}: {phase}epoch {info['epoch']} invalidity {info['invalidity']:.4g}"
                + (f" fid {info['fid']:.4g}" if isinstance(info.get("fid"), float) else ""))

    run: dict[str, Any] = {"row": row.name, "method": row.method, "variant": row.variant, "task": row.task,
                           "seed": seed, "parent": target.parent.version, "hyperparameters": hyper}
    started = time.monotonic()
    try:
        outcome = run_redaction(spec, registry=registry, parent=target.parent.version, uploads_dir=uploads,
                                activate=False, callbacks=Callbacks(progress=progress), device=device)
    except Exception as exc:  # a failed run is still reported
        run.update(status="error", error=f"{type(exc).__name__}: {exc}", wall_time_s=time.monotonic() - started)
        log(f"  {tag}: ERROR {run['error']}")
        traceback.print_exc(file=sys.stderr)
        return run
    job_wall = time.monotonic() - started
    training_wall = None
    if "training" in marks and "validating" in marks:
        training_wall = marks["validating"] - marks["training"]

    candidate = registry.load_generator(outcome.version).to(device)
    after = target.judge(candidate, args.eval_samples, args.eval_seed)
    before = target.before
    share, base_share = after["invalidity"], before["invalidity"]
    filtered = before.get("filtered_fid")
    attack, parent_attack = outcome.after.get("attack") or {}, outcome.before.get("attack") or {}
    pre = target.pretraining
    stats = outcome.stats
    run.update(attack_columns(target.attacks, candidate, outcome))
    run["robust_inversion_share"] = (stats.get("robust") or {}).get("inversion_share")
    run.update({
        "status": outcome.status,
        "reason": outcome.reason,
        "version": outcome.version,
        MEASURES[row.task]: share,
        "invalid_count": after["invalid_count"],
        "pul": 100 * (base_share - share) / base_share if base_share else None,
        "inception_score": after["inception_score"],
        "fid": after["fid"],
        "fid_reference": target.reference_name,
        "fid_over_filtered_base": after["fid"] / filtered if filtered else None,
        "class_shares": after["class_shares"],
        "min_retained_share_ratio": finite(min_share_ratio(before["class_shares"], after["class_shares"],
                                                           target.excluded)),
        "attack_worst_case": attack.get("worst_case"),
        "attack_invalidity": attack.get("attack_invalidity"),
        "attack_random_invalidity": attack.get("random_invalidity"),
        "parent_attack_worst_case": parent_attack.get("worst_case"),
        "parent_attack_invalidity": parent_attack.get("attack_invalidity"),
        # the epoch whose weights were returned: the library's choice, else the last one run
        "selected_epoch": stats.get("selected_epoch", stats.get("epochs_run")),
        "epochs_run": stats.get("epochs_run"),
        "iterations": stats.get("iterations"),
        "d_steps": stats.get("d_steps"),
        "g_steps": stats.get("g_steps"),
        "pool": stats.get("pool"),
        "validity_queries": stats.get("validity_queries"),
        "marked": stats.get("marked"),
        "negatives": stats.get("negatives"),
        "redaction_score": {k: finite(v) for k, v in (stats.get("redaction_score") or {}).items()} or None,
        "training_wall_time_s": training_wall,
        "wall_time_s": job_wall,
        "job_duration_s": outcome.duration_s,
        "wall_time_ratio": training_wall / pre["wall_time_s"] if pre and training_wall is not None else None,
        "job_wall_time_ratio": job_wall / pre["wall_time_s"] if pre else None,
        "iteration_ratio": stats["iterations"] / pre["iterations"]
        if pre and pre.get("iterations") and "iterations" in stats else None,
        "gates": {g.name: {"value": finite(g.value), "limit": g.limit, "passed": g.passed} for g in outcome.gates},
        "gate_invalidity": outcome.after.get("invalidity"),
        "history": [{k: finite(v) for k, v in h.items() if k in ("stage", "epoch", "step", "invalidity", "fid",
                                                                 "pool", "round_invalid")} for h in outcome.history],
    })
    log(f"  {tag}: {outcome.status}, {MEASURES[row.task]} {share:.3g} (parent {base_share:.3g}), "
        f"FID {after['fid']:.4g} ({run['fid_over_filtered_base'] or float('nan'):.3g}x filtered parent), "
        f"attack worst case {attack.get('worst_case', float('nan')):.3g}, "
        f"epoch {run['selected_epoch']}/{run['epochs_run']}, training {training_wall or float('nan'):.1f}s, "
        f"job {job_wall:.1f}s" + (f" ({outcome.reason})" if outcome.reason else ""))
    return run


def summarise(runs: list[dict[str, Any]], row: Row) -> dict[str, Any]:
    mine = [r for r in runs if r["row"] == row.name and r["variant"] == row.variant]
    summary: dict[str, Any] = {
        "row": row.name, "method": row.method, "variant": row.variant, "task": row.task,
        "measure": MEASURES[row.task], "parent": mine[0]["parent"], "paper": row.paper,
        "fid_reference": next((r["fid_reference"] for r in mine if "fid_reference" in r), None),
        "seeds": [r["seed"] for r in mine],
        "status": {s: sum(r["status"] == s for r in mine) for s in sorted({r["status"] for r in mine})},
    }
    for key in SUMMARY_KEYS:
        summary[key] = mean_se([r.get(key) for r in mine])
    return summary


def base_row(target: Target, paper: str) -> dict[str, Any]:
    single = lambda x: {"mean": finite(x), "se": None, "n": 1}  # noqa: E731
    before = target.before
    filtered = before.get("filtered_fid")
    row = {"row": "base", "method": "base", "variant": f"no redaction ({target.parent.version})",
           "task": target.task, "measure": MEASURES[target.task], "parent": target.parent.version,
           "paper": paper, "fid_reference": target.reference_name, "seeds": [0], "status": {"promoted": 1},
           **{key: single(None) for key in SUMMARY_KEYS},
           MEASURES[target.task]: single(before["invalidity"]), "pul": single(0.0),
           "inception_score": single(before["inception_score"]), "fid": single(before["fid"]),
           "fid_over_filtered_base": single(before["fid"] / filtered if filtered else None),
           "min_retained_share_ratio": single(1.0),
           "wall_time_ratio": single(1.0 if target.pretraining else None),
           "iteration_ratio": single(1.0 if target.pretraining else None),
           "filtered_fid": finite(filtered), "filtered_kept": before.get("filtered_kept"),
           **{key: single(before.get(key)) for key in ATTACK_COLUMNS if key in before}}
    if target.threshold is not None:
        row["slant_threshold"] = target.threshold
        row["marked"] = len(target.sets[0]["marked"]["indices"])
    return row


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
        pretraining = {**pretraining_record(base), "bootstrap_wall_time_s": bootstrap_wall if fresh else None,
                       "measured_in_this_run": fresh}
        log(f"base {base.version}: pre-training {pretraining['epochs']} epochs, {pretraining['iterations']} "
            f"iterations, {pretraining['wall_time_s']:.1f}s (bootstrap {bootstrap_wall:.1f}s)")

        uploads = Path(scratch.name) / "uploads"
        train, _ = digits_splits()
        save_images_npz(train.images[train.labels == FORGOTTEN], uploads / "zeros.npz")

        # --quick: one variant per row; otherwise Kong's rows also with the paper's settings
        rows = [r for r in (ROWS if args.quick else ROWS + PAPER_ROWS) + (ROBUST_ROWS if args.robust else ())
                if r.name in args.methods]
        skipped: dict[str, str] = {}
        parents = {"digits": base}
        vae = registry.active(VAE_MODEL)
        if vae is not None:
            parents[VAE_MODEL] = registry.get(vae)
        elif any(r.model == VAE_MODEL for r in rows):
            skipped = {r.name: SKIPPED_VAE for r in rows if r.model == VAE_MODEL}
            rows = [r for r in rows if r.model != VAE_MODEL]
            log(f"feedback-vae: {SKIPPED_VAE}")

        # one judge per (task, parent), built once: every seed and row is judged the same way
        targets: dict[tuple[str, str], Target] = {}
        for task, model in dict.fromkeys((r.task, r.model) for r in rows):
            parent = parents[model]
            # the DCGAN's pre-training was measured (or reused) above; another model's is in its manifest
            pre = pretraining if model == MODEL else pretraining_record(parent)
            make = zero_target if task == "zero" else feedback_target
            target = targets[task, model] = make(registry, parent, pre, device, args.eval_samples, args.eval_seed)
            b = target.before
            log(f"{parent.version} ({task}): {MEASURES[task]} {b['invalidity']:.4g}, IS {b['inception_score']:.4g}, "
                f"FID {b['fid']:.4g}, filtered FID {b['filtered_fid'] or float('nan'):.4g} against "
                f"{target.reference_name} ({target.domain.extractor_name}, {args.eval_samples} samples)"
                + (f"; {len(target.sets[0]['marked']['indices'])} of {MARK_N} marked" if target.sets else ""))

        def document(runs: list[dict[str, Any]], partial: bool = False) -> dict[str, Any]:
            bases = [base_row(t, BASE_PAPER[key]) for key, t in targets.items()]
            summaries = [summarise(runs, r) for r in rows
                         if any(x["row"] == r.name and x["variant"] == r.variant for x in runs)]
            doc = {
                "benchmark": "every method on the digits default: forget digit 0 (Kong & Chaudhuri Table I, "
                             "Tiwary et al.) and forget 'leans left' from marks (Moon et al.)",
                "machine": machine(device, threads),
                "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "settings": {"seeds": args.seeds, "quick": args.quick, "robust": args.robust, "eval_samples": args.eval_samples,
                             "eval_seed": args.eval_seed, "rows": [r.name for r in rows],
                             "max_invalidity": {r.name: r.max_invalidity for r in rows},
                             "extractor": next((t.before["extractor"] for t in targets.values()), None), "paper_defaults": PAPER_DEFAULTS,
                             "marks": {"seed": MARK_SEED, "n": MARK_N, "threshold": "top decile of the parent's "
                                       f"slant on {THRESHOLD_N} samples of seed {THRESHOLD_SEED}"},
                             "judge": {"zero": "invalidity = share of samples the digit classifier calls 0; FID "
                                               "against the training digits other than 0",
                                       "feedback": "target_ratio = share of samples whose slant reaches the "
                                                   "threshold; FID against the training digits below it"},
                             "pul": "100 * (parent - candidate) / parent of invalidity or target_ratio",
                             "attack": "outcome.after['attack'] of the job; the worst-case table: bench/attacks.py, judged by the judge",
                             "wall_time_ratio": "training phase of the job / the parent's pre-training wall time"},
                "pretraining": pretraining,
                "pretraining_by_parent": {t.parent.version: t.pretraining for t in targets.values()},
                "base": {k: finite(v) for k, v in targets["zero", MODEL].before.items()}
                if ("zero", MODEL) in targets else None,
                "bases": {f"{task}/{model}": {k: finite(v) for k, v in t.before.items()}
                          for (task, model), t in targets.items()},
                "skipped": skipped,
                "rows": bases + summaries,
                "runs": runs,
            }
            if partial:
                doc["partial"] = True
            return doc

        seeds = list(range(args.seeds))
        runs: list[dict[str, Any]] = []
        total = len(rows) * len(seeds)
        for row in rows:
            for seed in seeds:
                log(f"run {len(runs) + 1}/{total}: {row.name} ({row.variant}), seed {seed}")
                runs.append(one_run(row, seed, registry=registry, target=targets[row.task, row.model],
                                    uploads=uploads, args=args, device=device))
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
    digits = {"ratio": 3, "pct": 1}.get(kind, 2)
    return f"{m:.{digits}f}" + (f" ± {se:.{digits}f}" if se is not None else "")


TABLES = {
    "zero": ("Forget digit 0", "invalidity"),
    "feedback": ("Forget 'leans left' from a person's marks (feedback)", "target ratio"),
}


def markdown(doc: dict[str, Any]) -> str:
    pre, settings = doc["pretraining"], doc["settings"]
    lines: list[str] = []
    for task, (title, measure) in TABLES.items():
        rows = [r for r in doc["rows"] if r.get("task", "zero") == task]
        if not rows:
            continue
        # each parent has its own reference (feedback: below its own slant threshold)
        references = {r["parent"]: r["fid_reference"] for r in rows if r.get("fid_reference")}
        against = "; ".join(f"{parent}: {ref}" for parent, ref in references.items())
        lines += [
            f"**{title}** (FID against {against or 'the training digits other than 0'})",
            "",
            f"| row | method | variant | seeds | promoted | {measure} | PUL % | IS | FID | FID / filtered parent "
            "| attack worst case (parent) | attack invalidity | wall-time ratio | paper |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            is_base = row["method"] == "base"
            promoted = "-" if is_base else f"{row['status'].get('promoted', 0)}/{len(row['seeds'])}"
            wall = "1 (pre-training)" if is_base and row["wall_time_ratio"].get("mean") else \
                _fmt(row["wall_time_ratio"], "ratio")
            attack = _fmt(row.get("attack_worst_case"), "ratio")
            if row.get("parent_attack_worst_case", {}).get("mean") is not None:
                attack += f" ({row['parent_attack_worst_case']['mean']:.3f})"
            lines.append(
                f"| {row.get('row', row['method'])} | {row['method']} | {row['variant']} | {len(row['seeds'])} | "
                f"{promoted} | {_fmt(row.get(row.get('measure', 'invalidity')), 'sci')} | "
                f"{'-' if is_base else _fmt(row.get('pul'), 'pct')} | {_fmt(row['inception_score'], 'plain')} | "
                f"{_fmt(row['fid'], 'plain')} | {_fmt(row['fid_over_filtered_base'], 'ratio')} | {attack} | "
                f"{_fmt(row.get('attack_invalidity'), 'ratio')} | {wall} | {row.get('paper', '-')} |")
            if is_base and row.get("filtered_fid") is not None:
                lines.append(f"| base, filtered | rejection sampling | - | - | - | 0 | - | - | "
                             f"{row['filtered_fid']:.2f} | 1 | - | - | - | - |")
        lines.append("")
        worst = worst_case_table(rows)
        if worst:
            lines += [f"**Worst case: {title[0].lower() + title[1:]}**", "", *worst, ""]
    for name, why in (doc.get("skipped") or {}).items():
        lines.append(f"{name}: {why}.")
    m = doc["machine"]
    lines += [
        "",
        f"Mean ± standard error over seeds; {settings['eval_samples']} samples per model (seed "
        f"{settings['eval_seed']}); FID with `{settings['extractor']}`. Invalidity = share of samples the digit "
        "classifier calls 0; target ratio = share of samples whose pixel slant reaches the parent's top decile (the "
        f"marks: the {MARK_N} samples of seed {MARK_SEED} at or above it); PUL = 100 (parent - after) / parent "
        "(Tiwary et al. eq. 8). Attack: worst case of the job's attacks (gradient ascent, truncation, inversion), "
        "judged by the domain's judge (for feedback, nearest neighbour among the marks in the judge's features), "
        f"parent in brackets. Worst-case tables: {WORST_CASE_NOTE} "
        f"Wall-time ratio = training phase of the redaction job / the parent's pre-training (DCGAN: {pre['epochs']} "
        f"epochs, {pre['iterations']} iterations, {pre['wall_time_s']:.0f} s). {m['device']}, {m['torch_threads']} "
        f"threads, torch {m['torch']}, {m['platform']}, {doc['date'][:10]}.",
        "",
        "Paper column: the papers' headline numbers, not like for like. Kong & Chaudhuri Table I is MNIST 28x28, "
        "forget 0, 8 epochs, invalidity on 50K samples, pre-trained 1.1e-1 / IS 7.82. Tiwary et al. Table 1 forgets "
        "MNIST digits 1, 4 and 8 (Inception FID, pre-trained 5.4). Moon et al. forget thickness, not slant "
        "(Morpho-MNIST). Here: 8x8 digits, FID on the digit classifier's features.",
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
