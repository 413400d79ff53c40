"""Benchmark: every generator method on a domain, side by side with the papers' MNIST numbers.

One run does everything, so every ratio compares numbers measured on the same machine:

1. bootstrap ``--domain`` (default digits) in ``--home`` (default: a fresh temporary one):
   its guide and judge, its default DCGAN and, when a row needs it, its VAE (a domain the
   home registered with ``lethe domain add`` has a DCGAN named after it and no VAE: its
   VAE rows are skipped). What the home already has is kept; each base version's manifest
   records its pre-training wall time and iterations;
2. run every row (``--methods``) for each seed through the job path
   (:func:`unlearning.jobs.run_redaction`, the one the CLI and the service use), with the
   library's defaults (hyperparameters and gate limits) unless the row says otherwise:

   * forget one class (``--forget``, a label name or index; default: class 0, the digit
     0 on digits): Kong & Chaudhuri's Alg. 1 ``kong-data`` (the class's training images
     uploaded), Alg. 2 ``kong-validity``, Alg. 3 ``kong-classifier``, and on digits
     also with the paper's settings (``kong-*-paper``: lam 0.85, 8 epochs, no EMA, no
     checkpoint selection); Adapt-then-Unlearn (Tiwary et al.) with its default repulsion
     ``atu-el2`` (on digits also ``atu-il2``, ``atu-nl2``) and its ``param-extrapolation``
     baseline. Their sets name the domain's guide;
   * from a person's marks (Moon et al.), ``feedback-dcgan`` on the DCGAN and
     ``feedback-vae`` on the VAE. The marks are simulated on the samples of seed 31
     (n 1024): on digits, those whose pixel slant reaches the parent's top decile (forget
     "leans left"); on other domains, those the guide calls the forgotten class;
3. judge every candidate, and its parent, on the same ``--eval-samples`` latents
   (``--eval-seed``, not the gates' seed) with :func:`unlearning.evaluation.judge`:
   invalidity by the guide (what the methods trained against) and by the domain's judge
   (trained apart; no method sees it), IS and class shares by the judge, FID in the
   judge's features against the training images of the other classes. The parent
   filtered by the judge (rejection sampling) gives the reference FID. PUL = 100 (parent
   - candidate) / parent of the judge's invalidity (Tiwary et al. eq. 8). The slant task
   has no classifier: its invalidity is the share of samples at or above the slant
   threshold, judged by that pixel measure, which no method sees either. The attack
   columns: on a class task, every model is attacked the same way whatever its spec
   (``bench/attacks.py``: gradient ascent on the guide and inversion of held-out images,
   judged by the judge); on the slant task, the job's own attacks. ``--robust`` adds Kong's
   rows again with latent adversarial training (``hyperparameters: {robust: true}``).

Wall time is reported as a ratio of the parent's pre-training wall time (the paper reports
redaction cost relative to pre-training): ``wall_time_ratio`` uses the training phase of
the job (from the start of training to the start of the gates, per-epoch monitoring
included), ``job_wall_time_ratio`` the whole job (loading, gates on ``--eval-samples``
samples twice, attack, ONNX export, registry). ``iteration_ratio`` is mini-batch
iterations over pre-training's.

With ``--output FILE.json``, ``FILE-<parent version>.png`` beside it shows, for each
parent, its samples and each row's first-seed candidate on the same latents (one line
each, in the order the document's ``pictures`` lists); ``FILE-samples.npz`` keeps those
lines as arrays. The document is rewritten after every run, marked ``partial`` until the
last.

A full table takes hours on a CPU. ``--resume FILE.json`` takes the runs an earlier
document (partial or not) already holds and runs only the rest: a run is reused when its
row, seed and hyperparameters are this run's and its parent has the same weights (the
document records each parent's weight digest), so a run a session could not finish goes
on in the next one. Domain, class, judging samples and seed must match, or nothing runs.
For the same parents on another machine, use a home built from ``tests/fixtures`` (see
the README's benchmark section).

Prints ONE JSON document on stdout (``--markdown``: Markdown tables instead); progress
goes to stderr. ``--render FILE`` turns a saved JSON document into the Markdown tables.

    .venv/bin/python bench/redaction.py --output bench/results/redaction.json                 # digits
    .venv/bin/python bench/redaction.py --quick --seeds 1 --eval-samples 2000 --methods kong-validity
    .venv/bin/python bench/redaction.py --render bench/results/redaction.json                 # README tables
    .venv/bin/python bench/redaction.py --domain fashion-mnist --output f.json --resume f.json  # go on
"""

from __future__ import annotations

import argparse
import hashlib
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
from common import finite, log, processor, write_json  # noqa: E402

EVAL_SEED = 4242  # not jobs.GATE_SEED: the benchmark judges on latents the job never saw
DEFAULT_FORGET = {"digits": "0"}  # --forget's default; class 0 on any other domain
FORGET_FILE = "forget.npz"  # kong-data's upload: the forgotten class's training images
PAPER_DEFAULTS = {"lam": 0.85, "epochs": 8, "ema_decay": None, "select_best": False, "patience": None}
# --quick: a smoke run's budget per method, over the row's own hyperparameters
QUICK_KONG = {"epochs": 1, "epoch_images": 1024, "monitor_samples": 500}
QUICK_ATU = {"adapt_epochs": 1, "epochs": 1, "generated_samples": 1000, "monitor_samples": 500}
QUICK = {"kong-data": QUICK_KONG, "kong-validity": QUICK_KONG, "kong-classifier": QUICK_KONG,
         "adapt-then-unlearn": QUICK_ATU, "param-extrapolation": QUICK_ATU,
         "feedback": {"steps": 50, "check_every": 25, "monitor_samples": 500}}
# ... and the job's own attacks on a few starts and targets (bench/attacks.py has the benchmark's)
QUICK_GATES = {"attack_starts": 32, "inversion_targets": 4}
# The marks, as tests/test_feedback.py simulates them: the person sees MARK_N samples of
# MARK_SEED; on digits the slant threshold is the top decile of the parent's slant on
# THRESHOLD_N samples of THRESHOLD_SEED.
MARK_SEED, MARK_N = 31, 1024
THRESHOLD_SEED, THRESHOLD_N = 99, 10_000
PICTURE_SAMPLES = 16  # per line of the before/after picture
SUMMARY_KEYS = ("invalidity", "judge_invalidity", "pul", "inception_score", "fid", "fid_over_filtered_base",
                "min_retained_share_ratio", "attack_worst_case", "parent_attack_worst_case", "wall_time_ratio",
                "job_wall_time_ratio", "iteration_ratio", "selected_epoch", "epochs_run",
                *ATTACK_COLUMNS, "robust_inversion_share")

# The papers' headline numbers on MNIST 28x28, printed beside ours (not like for like)
KONG_TABLE_I = {"kong-data": "invalidity 8.0 ± 2.2e-5, IS 7.20", "kong-validity": "invalidity 6.4 ± 0.8e-5, IS 7.19",
                "kong-classifier": "invalidity 5.2 ± 3.7e-5, IS 7.16"}
ATU_PAPER = "PUL 95-99 %, FID 9-10 (pre-trained 5.4)"
BASE_PAPER = {"class": "invalidity 1.1e-1, IS 7.82", "slant": "thickness ratio 0.091, FID 2.3",
              "vae": "thickness ratio 0.0947, FID 23.4"}  # "vae": Moon et al.'s VAE, whatever the task


@dataclass(frozen=True)
class Row:
    """One row of the table: a spec run once per seed."""

    name: str  # what --methods selects
    method: str
    variant: str
    sets: str  # what the spec forgets by: "data", "validity", "classifier" or "marks"
    paper: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    vae: bool = False  # the parent is the domain's VAE, not its DCGAN
    everywhere: bool = True  # False: a variant run by default on digits only


KONG = (("kong-data", "data"), ("kong-validity", "validity"), ("kong-classifier", "classifier"))
ROWS: tuple[Row, ...] = (
    *(Row(m, m, "ours", sets, KONG_TABLE_I[m]) for m, sets in KONG),
    *(Row(f"{m}-paper", m, "paper-defaults", sets, KONG_TABLE_I[m], PAPER_DEFAULTS, everywhere=False)
      for m, sets in KONG),
    *(Row(f"atu-{r}", "adapt-then-unlearn", f"{r.upper()} repulsion", "validity", ATU_PAPER, {"repulsion": r},
          everywhere=r == "el2") for r in ("el2", "il2", "nl2")),
    Row("param-extrapolation", "param-extrapolation", "ours", "validity",
        "PUL 91-95 %, FID 18-46 (Table 1, digits 1/4/8)"),
    # a DCGAN's default threshold is the unmarked mean (boundary 0, feedback.py)
    Row("feedback-dcgan", "feedback", "DCGAN, marks", "marks", "thickness ratio 0.091 → 0.0135, FID 2.3 → 3.4"),
    Row("feedback-vae", "feedback", "VAE, marks", "marks", "thickness ratio 0.0947 → 0.0097, FID 23.4 → 23.7",
        vae=True),
)
# --robust: Kong's rows again with latent adversarial training (methods/robust.py)
ROBUST_ROWS: tuple[Row, ...] = tuple(
    Row(f"{m}-robust", m, "ours, robust", sets, KONG_TABLE_I[m], {"robust": True}) for m, sets in KONG)
ROW_NAMES = tuple(r.name for r in ROWS + ROBUST_ROWS)


def task_of(row: Row, domain: str) -> str:
    """What a row forgets: a class, or on digits (marks rows) the left-leaning samples."""
    return "slant" if row.sets == "marks" and domain == "digits" else "class"


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
    parser.add_argument("--domain", default="digits",
                        help="a built-in domain, or one the --home registered with `lethe domain add` (default digits)")
    parser.add_argument("--forget", default=None, metavar="LABEL",
                        help="the class to forget, by name or index (default: class 0, the digit 0 on digits)")
    parser.add_argument("--seeds", type=int, default=3, help="redaction seeds per row (default 3)")
    parser.add_argument("--eval-samples", type=int, default=10_000,
                        help="samples for the gates and for the benchmark's judging (default 10000)")
    parser.add_argument("--eval-seed", type=int, default=EVAL_SEED, help="latent seed of the benchmark's judging")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: each method on a tiny budget (one epoch, a few steps, a few attack starts)")
    parser.add_argument("--methods", type=row_names, default=None, metavar="ROW,ROW",
                        help=f"comma-separated rows to run (default: all on digits, one per method elsewhere; "
                             f"known: {','.join(ROW_NAMES)})")
    parser.add_argument("--robust", action="store_true",
                        help="also run each selected Kong row with hyperparameters {robust: true}")
    parser.add_argument("--home", type=Path, default=None,
                        help="LETHE_HOME to use (default: a temporary folder, removed afterwards); what it lacks "
                             "of the domain is bootstrapped, what it has is reused with its recorded pre-training")
    parser.add_argument("--pretrain-epochs", type=int, default=None,
                        help="override the base models' pre-training epochs (default: the domain's schedule)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--device", default=None, help="torch device (default: unlearning.runtime.pick_device)")
    parser.add_argument("--output", type=Path, default=None,
                        help="also write the JSON document to this file, and the pictures beside it")
    parser.add_argument("--resume", type=Path, default=None, metavar="JSON",
                        help="reuse the runs an earlier document of the same settings holds (same row, seed, "
                             "hyperparameters and parent weights) and run only the rest")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables instead of JSON")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="print the Markdown tables of a saved JSON document and exit (runs nothing)")
    args = parser.parse_args(argv)
    if args.methods is None:
        args.methods = [r.name for r in ROWS if r.everywhere or args.domain == "digits"]
    if args.robust:
        args.methods += [f"{m}-robust" for m in args.methods if f"{m}-robust" in ROW_NAMES]
    if args.forget is None:
        args.forget = DEFAULT_FORGET.get(args.domain, "0")
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.eval_samples < 100:
        parser.error("--eval-samples must be at least 100 (the gates' minimum)")
    if args.resume is not None and not args.resume.is_file():
        parser.error(f"--resume {args.resume}: no such file")
    return args


def machine(device: Any, threads: int) -> dict[str, Any]:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "processor": processor(),
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
    """How the rows of one task on one parent are judged, every seed alike: Omega by the
    guide (slant: by the pixel measure) and its mirror by the judge, the FID reference,
    the simulated marks, and the parent's own numbers on the judging latents."""

    task: str
    parent: Any  # VersionManifest
    pretraining: dict[str, Any] | None
    domain: Any  # unlearning.evaluation.Domain
    omega: Any  # RedactionSet
    judged: Any  # RedactionSet | None: omega asked of the judge
    reference: Any  # FeatureStats
    reference_name: str
    excluded: set[int]  # classes the class-balance ratio leaves out
    marks: dict[str, Any]  # the feedback set a person would send
    threshold: float | None = None  # slant
    paper: str = ""  # the papers' numbers for the parent
    before: dict[str, Any] = field(default_factory=dict)
    attacks: ClassAttack | None = None  # the worst-case columns of a class task (bench/attacks.py)

    def judge(self, generator, n: int, seed: int, filtered: bool = False) -> dict[str, Any]:
        from unlearning.evaluation import judge

        return judge(generator, self.domain, n=n, seed=seed, omega=self.omega, judged=self.judged,
                     reference=self.reference, filtered=filtered)


def simulated_marks(generator, marked, device) -> dict[str, Any]:
    """A person's marks on the MARK_N samples of MARK_SEED: those ``marked`` picks."""
    import torch

    from unlearning.runtime import latents

    with torch.no_grad():
        images = generator.eval()(latents(MARK_N, generator.latent_dim, MARK_SEED).to(device))
        indices = marked(images).nonzero().flatten().tolist()
    return {"kind": "feedback", "marked": {"seed": MARK_SEED, "n": MARK_N, "indices": indices}}


def class_rule(domain, forget: int | str) -> dict[str, Any]:
    return {"kind": "validity", "rule": {"type": "classifier_label", "classifier": domain.guide_name,
                                         "labels": [forget]}}


def class_sets(registry, domain, forget: int | str):
    """Omega = 'the guide says ``forget``' and its mirror 'the judge says it' (PreparedSets);
    the label, named or numbered as in a spec, is checked against the guide's labels."""
    from unlearning.jobs import prepare_redaction_set
    from unlearning.spec import load_spec

    spec = load_spec({"name": "bench-judge", "sets": [class_rule(domain, forget)]})
    return prepare_redaction_set(spec, registry, domain, None)


def class_target(registry, domain, parent, sets, device, quick: bool = False) -> Target:
    """Judged by ``sets`` (:func:`class_sets`); reference = the training images of the other
    classes; marks = the samples the guide calls the forgotten class."""
    label = sets.spec.sets[0].rule.labels[0]
    generator = registry.load_generator(parent.version).to(device)
    marks = simulated_marks(generator, lambda x: domain.guide(x).argmax(1) == label, device)
    reference = domain.reference(domain.train.images[domain.train.labels != label])
    return Target("class", parent, pretraining_record(parent), domain, sets.omega, sets.judged, reference,
                  f"training images other than {domain.labels[label]!r}", {label}, marks,
                  attacks=ClassAttack(domain, sets, quick))


def slant_threshold(generator, device) -> float:
    """The top decile of the generator's pixel slant on THRESHOLD_N samples of THRESHOLD_SEED."""
    import torch

    from unlearning.metrics.features import slant
    from unlearning.runtime import latents

    with torch.no_grad():
        z = latents(THRESHOLD_N, generator.latent_dim, THRESHOLD_SEED).to(device)
        return float(slant(generator.eval()(z)).quantile(0.9))


def slant_target(registry, domain, parent, device) -> Target:
    """Omega = 'slant reaches the parent's top decile' (a pixel measure no method sees),
    reference = training digits below it, marks = the samples at or above it."""
    from unlearning.metrics.features import slant
    from unlearning.spec.checks import RedactionSet

    generator = registry.load_generator(parent.version).to(device)
    threshold = slant_threshold(generator, device)
    leaning = RedactionSet(validity_checks=[lambda x: slant(x) >= threshold])
    train = domain.train.images
    return Target("slant", parent, pretraining_record(parent), domain, leaning, None,
                  domain.reference(train[slant(train) < threshold]), f"training digits with slant < {threshold:.3f}",
                  set(), simulated_marks(generator, lambda x: slant(x) >= threshold, device), threshold)


def spec_sets(row: Row, target: Target, forget: int) -> list[dict[str, Any]]:
    guide = target.domain.guide_name
    return {
        "data": [{"kind": "data", "files": [FORGET_FILE]}],
        "validity": [class_rule(target.domain, forget)],
        "classifier": [{"kind": "classifier", "classifier": guide,
                        "score": {"type": "one_minus_prob", "label": forget}, "tau": 0.5}],
        "marks": [target.marks],
    }[row.sets]


def run_hyperparameters(row: Row, seed: int, quick: bool) -> dict[str, Any]:
    return {**row.hyperparameters, **(QUICK[row.method] if quick else {}), "seed": seed}


def weights_digest(manifest) -> str:
    """One sha256 over a version's weight files (their recorded hashes): equal digests, equal parents."""
    weights = sorted((name, digest) for name, digest in manifest.files.items() if name.endswith(".safetensors"))
    return hashlib.sha256(json.dumps(weights).encode()).hexdigest()


def one_run(row: Row, seed: int, *, registry, target: Target, forget: int, uploads: Path,
            args: argparse.Namespace, device) -> tuple[dict[str, Any], Any]:
    """One job and its judging: (the run's record, the candidate generator or None)."""
    from unlearning.jobs import run_redaction
    from unlearning.methods.base import Callbacks
    from unlearning.metrics import min_share_ratio, retained_shares

    hyper = run_hyperparameters(row, seed, args.quick)
    tag = f"{row.name}/seed {seed}"
    spec = {"name": re.sub(r"[^a-z0-9]+", "-", f"bench {row.name} s{seed}".lower()), "method": row.method,
            "sets": spec_sets(row, target, forget), "hyperparameters": hyper,
            "gates": {"eval_samples": args.eval_samples, **(QUICK_GATES if args.quick else {})}}
    marks: dict[str, float] = {}

    def progress(fraction: float, info: dict[str, Any]) -> None:
        stage = info.get("stage")
        if stage and stage not in marks:
            marks[stage] = time.monotonic()
        if stage == "training" and "invalidity" in info and "epoch" in info:
            phase = f"{info['phase']} " if "phase" in info else ""  # Adapt-then-Unlearn: adapt, then unlearn
            log(f"  {tag}: {phase}epoch {info['epoch']} invalidity {info['invalidity']:.4g}"
                + (f" fid {info['fid']:.4g}" if isinstance(info.get("fid"), float) else ""))

    run: dict[str, Any] = {"row": row.name, "method": row.method, "variant": row.variant, "task": target.task,
                           "seed": seed, "parent": target.parent.version,
                           "parent_weights": weights_digest(target.parent), "hyperparameters": hyper}
    started = time.monotonic()
    try:
        outcome = run_redaction(spec, registry=registry, parent=target.parent.version, uploads_dir=uploads,
                                activate=False, callbacks=Callbacks(progress=progress), device=device)
    except Exception as exc:  # a failed run is still reported
        run.update(status="error", error=f"{type(exc).__name__}: {exc}", wall_time_s=time.monotonic() - started,
                   finished_at=now())
        log(f"  {tag}: ERROR {run['error']}")
        traceback.print_exc(file=sys.stderr)
        return run, None
    job_wall = time.monotonic() - started
    training_wall = marks["validating"] - marks["training"] if {"training", "validating"} <= set(marks) else None

    candidate = registry.load_generator(outcome.version).to(device)
    after, before = target.judge(candidate, args.eval_samples, args.eval_seed), target.before
    measure = "judge_invalidity" if target.judged is not None else "invalidity"  # what PUL is of
    filtered = before.get("filtered_fid")
    attack, parent_attack = outcome.after.get("attack") or {}, outcome.before.get("attack") or {}
    pre, stats = target.pretraining, outcome.stats
    run.update({
        "status": outcome.status,
        "reason": outcome.reason,
        "version": outcome.version,
        "invalidity": after.get("invalidity"),
        "judge_invalidity": after.get("judge_invalidity"),
        "pul": 100 * (before[measure] - after[measure]) / before[measure] if before[measure] else None,
        "inception_score": after["inception_score"],
        "fid": after["fid"],
        "fid_reference": target.reference_name,
        "fid_over_filtered_base": after["fid"] / filtered if filtered else None,
        "class_shares": after["class_shares"],
        "min_retained_share_ratio": finite(min_share_ratio(retained_shares(before), after["class_shares"],
                                                           target.excluded)),
        "attack_worst_case": attack.get("worst_case"),
        "attack_random_invalidity": attack.get("random_invalidity"),
        "parent_attack_worst_case": parent_attack.get("worst_case"),
        **attack_columns(target.attacks, candidate, outcome),
        "robust_inversion_share": (stats.get("robust") or {}).get("inversion_share"),
        # the epoch whose weights were returned: the library's choice, else the last one run
        "selected_epoch": stats.get("selected_epoch", stats.get("epochs_run")),
        "epochs_run": stats.get("epochs_run"),
        "iterations": stats.get("iterations"),
        "marked": stats.get("marked"),
        "negatives": stats.get("negatives"),
        "redaction_score": {k: finite(v) for k, v in (stats.get("redaction_score") or {}).items()} or None,
        "training_wall_time_s": training_wall,
        "wall_time_s": job_wall,
        "wall_time_ratio": training_wall / pre["wall_time_s"] if pre and training_wall is not None else None,
        "job_wall_time_ratio": job_wall / pre["wall_time_s"] if pre else None,
        "iteration_ratio": stats["iterations"] / pre["iterations"]
        if pre and pre.get("iterations") and "iterations" in stats else None,
        "gates": {g.name: {"value": finite(g.value), "limit": g.limit, "passed": g.passed} for g in outcome.gates},
        # the selection probe's numbers too (guide: FID, class balance), to see why an epoch was kept
        "history": [{k: finite(v) for k, v in h.items() if k in ("stage", "epoch", "step", "invalidity", "fid",
                                                                 "class_balance", "balanced", "pool",
                                                                 "round_invalid")} for h in outcome.history],
        "finished_at": now(),
    })
    judge_text = f", judge {run['judge_invalidity']:.3g}" if run["judge_invalidity"] is not None else ""
    log(f"  {tag}: {outcome.status}, invalidity {run['invalidity']:.3g}{judge_text} (parent "
        f"{before['invalidity']:.3g}), FID {after['fid']:.4g} ({run['fid_over_filtered_base'] or float('nan'):.3g}x "
        f"filtered parent), epoch {run['selected_epoch']}/{run['epochs_run']}, training "
        f"{training_wall or float('nan'):.1f}s, job {job_wall:.1f}s"
        + (f" ({outcome.reason})" if outcome.reason else ""))
    return run, candidate


def summarise(runs: list[dict[str, Any]], row: Row) -> dict[str, Any]:
    mine = [r for r in runs if r["row"] == row.name]
    summary: dict[str, Any] = {
        "row": row.name, "method": row.method, "variant": row.variant, "task": mine[0]["task"],
        "parent": mine[0]["parent"], "paper": row.paper,
        "fid_reference": next((r["fid_reference"] for r in mine if "fid_reference" in r), None),
        "seeds": [r["seed"] for r in mine],
        "status": {s: sum(r["status"] == s for r in mine) for s in sorted({r["status"] for r in mine})},
        "gate_limits": next(({k: g["limit"] for k, g in r["gates"].items()} for r in mine if "gates" in r), None),
    }
    for key in SUMMARY_KEYS:
        summary[key] = mean_se([r.get(key) for r in mine])
    return summary


def base_row(target: Target) -> dict[str, Any]:
    single = lambda x: {"mean": finite(x), "se": None, "n": 1}  # noqa: E731
    before = target.before
    filtered = before.get("filtered_fid")
    row = {"row": "base", "method": "base", "variant": f"no redaction ({target.parent.version})",
           "task": target.task, "parent": target.parent.version, "paper": target.paper,
           "fid_reference": target.reference_name, "seeds": [0], "status": {"promoted": 1},
           **{key: single(None) for key in SUMMARY_KEYS},
           "invalidity": single(before.get("invalidity")), "judge_invalidity": single(before.get("judge_invalidity")),
           "pul": single(0.0), "inception_score": single(before["inception_score"]), "fid": single(before["fid"]),
           "fid_over_filtered_base": single(before["fid"] / filtered if filtered else None),
           "min_retained_share_ratio": single(1.0),
           "wall_time_ratio": single(1.0 if target.pretraining else None),
           "iteration_ratio": single(1.0 if target.pretraining else None),
           "filtered_fid": finite(filtered), "filtered_kept": before.get("filtered_kept"),
           "marked": len(target.marks["marked"]["indices"]),
           **{key: single(before.get(key)) for key in ATTACK_COLUMNS if key in before}}
    if target.threshold is not None:
        row["slant_threshold"] = target.threshold
    return row


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def samples_file(document: Path) -> Path:
    """Where a document's picture lines are kept as arrays, for --resume to draw them again."""
    return document.with_name(f"{document.stem}-samples.npz")


def save_pictures(output: Path, lines: dict[str, list[tuple[str, Any]]]) -> dict[str, Any]:
    """Per parent, ``<output stem>-<version>.png``: the parent's samples, then each row's
    candidate, one line each on the same latents; and every line in ``samples_file``."""
    import numpy as np
    import torch

    from unlearning.images import grid_image

    saved, arrays = {}, {}
    for version, named in lines.items():
        path = output.with_name(f"{output.stem}-{version}.png")
        path.parent.mkdir(parents=True, exist_ok=True)
        grid_image(torch.cat([images for _, images in named]), nrow=PICTURE_SAMPLES, min_side=512).save(path)
        saved[version] = {"file": path.name, "lines": [name for name, _ in named]}
        arrays.update({f"{version}/{name}": images.cpu().numpy() for name, images in named})
    tmp = samples_file(output).with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, samples_file(output))
    return saved


COMPARED_SETTINGS = ("domain", "forget", "eval_samples", "eval_seed", "quick")


def earlier_runs(path: Path, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[tuple[str, int], dict], dict]:
    """--resume: (the earlier document, its finished runs by (row, seed), its picture lines by
    'version/row'). Settings that change what a number means must match."""
    import numpy as np
    import torch

    from unlearning.errors import LetheError

    try:
        earlier = json.loads(path.read_text())
        recorded = earlier["settings"]
        runs = earlier["runs"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise LetheError(f"--resume {path}: not a document of this benchmark ({type(exc).__name__}: {exc})") from exc
    for key in COMPARED_SETTINGS:
        if recorded.get(key) != settings[key]:
            raise LetheError(f"--resume {path}: it was run with {key} {recorded.get(key)!r}, this run has "
                             f"{settings[key]!r}; nothing ran")
    finished = {(r["row"], r["seed"]): r for r in runs if r.get("status") not in (None, "error")}
    lines = {}
    if samples_file(path).is_file():
        with np.load(samples_file(path), allow_pickle=False) as saved:
            lines = {key: torch.from_numpy(saved[key]) for key in saved.files}
    return earlier, finished, lines


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    threads = args.threads or os.cpu_count() or 1
    torch.set_num_threads(threads)

    from unlearning.bootstrap import bootstrap
    from unlearning.data.files import save_images_npz
    from unlearning.domains import BUILTIN_DOMAINS
    from unlearning.domains.loaded import load_domain
    from unlearning.errors import LetheError
    from unlearning.registry import Registry
    from unlearning.report import grid_samples
    from unlearning.runtime import pick_device

    device = pick_device(args.device)
    # a built-in domain's DCGAN and VAE; a registered domain's DCGAN is named after it, and it has no VAE
    builtin = BUILTIN_DOMAINS.get(args.domain)
    models = {False: builtin.default_model if builtin else args.domain,
              True: next((m.model for m in builtin.models if m.family == "vae"), None) if builtin else None}
    rows = [r for r in ROWS + ROBUST_ROWS if r.name in args.methods and models[r.vae] is not None]
    skipped = [name for name in args.methods if name not in {r.name for r in rows}]
    if skipped:
        log(f"skipped: {', '.join(skipped)} (domain {args.domain!r} has no VAE)")
    wanted = list(dict.fromkeys(models[r.vae] for r in rows))
    forget: int | str = int(args.forget) if args.forget.isdigit() else args.forget
    scratch = tempfile.TemporaryDirectory(prefix="lethe-bench-")
    try:
        home = args.home or Path(scratch.name) / "home"
        registry = Registry(home)
        log(f"bootstrapping {args.domain} ({', '.join(wanted)}) in {home} on {device} with {threads} threads "
            "(what the home has is kept)")
        started = time.monotonic()
        built = bootstrap(registry, domain=args.domain, models=wanted, epochs=args.pretrain_epochs, device=device,
                          show_progress=False)["built"]
        log(f"bootstrap: {time.monotonic() - started:.1f}s; built {', '.join(built) or 'nothing'}")
        domain = load_domain(registry, args.domain, device=device)
        forgotten = class_sets(registry, domain, forget)
        label = forgotten.spec.sets[0].rule.labels[0]
        uploads = Path(scratch.name) / "uploads"
        save_images_npz(domain.train.images[domain.train.labels == label], uploads / FORGET_FILE)
        parents = {model: registry.get(registry.active(model)) for model in wanted}

        settings = {"domain": args.domain, "forget": {"index": label, "name": domain.labels[label]},
                    "eval_samples": args.eval_samples, "eval_seed": args.eval_seed, "quick": args.quick}
        earlier, finished, earlier_lines = (earlier_runs(args.resume, settings) if args.resume
                                            else (None, {}, {}))
        planned = {(r.name, seed) for r in rows for seed in range(args.seeds)}
        dropped = sorted(f"{name}/{seed}" for name, seed in finished if (name, seed) not in planned)
        if dropped and args.output and args.output.resolve() == args.resume.resolve():
            raise LetheError(f"--resume {args.resume} holds runs this run does not plan ({', '.join(dropped)}), and "
                             "--output would overwrite it: choose the same --methods and --seeds, or another --output")
        session = {"started": now(), "machine": machine(device, threads), "ran": []}
        sessions = [*(earlier.get("sessions") or [{"started": earlier["date"], "machine": earlier["machine"],
                                                   "ran": [f"{r['row']}/{r['seed']}" for r in earlier["runs"]]}]
                      if earlier else []), session]

        # one judging per (task, parent), built once: every seed and row is judged the same way
        targets: dict[tuple[str, str], Target] = {}
        pictures: dict[str, list[tuple[str, Any]]] = {}
        for task, model in dict.fromkeys((task_of(r, args.domain), models[r.vae]) for r in rows):
            parent = parents[model]
            target = (slant_target(registry, domain, parent, device) if task == "slant"
                      else class_target(registry, domain, parent, forgotten, device, args.quick))
            generator = registry.load_generator(parent.version).to(device)
            b = target.before = target.judge(generator, args.eval_samples, args.eval_seed, filtered=True)
            if target.attacks is not None:
                b.update(target.attacks.columns(generator))
            target.paper = BASE_PAPER["vae" if model == models[True] else task]
            targets[task, model] = target
            pictures.setdefault(parent.version, [("base", grid_samples(generator, PICTURE_SAMPLES))])
            judge_text = f", judge {b['judge_invalidity']:.4g}" if "judge_invalidity" in b else ""
            log(f"{parent.version} ({task}): invalidity {b['invalidity']:.4g}{judge_text}, IS "
                f"{b['inception_score']:.4g}, FID {b['fid']:.4g}, filtered FID {b['filtered_fid'] or float('nan'):.4g} "
                f"against {target.reference_name} ({domain.extractor_name}, {args.eval_samples} samples); "
                f"{len(target.marks['marked']['indices'])} of {MARK_N} marked")

        def document(runs: list[dict[str, Any]], partial: bool = False) -> dict[str, Any]:
            doc = {
                "benchmark": f"every generator method on {args.domain}: forget one class (Kong & Chaudhuri "
                             "Table I, Tiwary et al.) and from a person's marks (Moon et al.)",
                "machine": machine(device, threads),
                "date": now(),
                "settings": {
                    **settings, "image_shape": list(domain.image_shape),
                    "seeds": args.seeds, "robust": args.robust,
                    "rows": [r.name for r in rows], "paper_defaults": PAPER_DEFAULTS,
                    "guide": domain.guide_name, "judge": domain.judge_name, "extractor": domain.extractor_name,
                    "marks": {"seed": MARK_SEED, "n": MARK_N,
                              "class": "the samples the guide calls the forgotten class",
                              "slant": f"the samples at or above the top decile of the parent's slant on "
                                       f"{THRESHOLD_N} samples of seed {THRESHOLD_SEED}"},
                    "pul": "100 * (parent - candidate) / parent of the judge's invalidity (slant: of invalidity)",
                    "attack": "class task: bench/attacks.py on every model, judged by the judge; slant task: "
                              "outcome.after['attack'] of the job",
                    "wall_time_ratio": "training phase of the job / the parent's pre-training wall time"},
                "built": built,
                "skipped": skipped,
                "pretraining_by_parent": {t.parent.version: t.pretraining for t in targets.values()},
                "parent_weights": {t.parent.version: weights_digest(t.parent) for t in targets.values()},
                "sessions": sessions,
                "bases": {f"{task}/{model}": {k: finite(v) for k, v in t.before.items()}
                          for (task, model), t in targets.items()},
                "rows": [base_row(t) for t in targets.values()]
                + [summarise(runs, r) for r in rows if any(x["row"] == r.name for x in runs)],
                "runs": runs,
            }
            if args.output:
                doc["pictures"] = save_pictures(args.output, pictures)
            if partial:
                doc["partial"] = True
            return doc

        runs: list[dict[str, Any]] = []
        total = len(rows) * args.seeds
        for row in rows:
            target = targets[task_of(row, args.domain), models[row.vae]]
            for seed in range(args.seeds):
                version = target.parent.version
                done = finished.get((row.name, seed))
                if done is not None and (done.get("parent_weights") != weights_digest(target.parent)
                                         or done.get("hyperparameters") != run_hyperparameters(row, seed, args.quick)):
                    log(f"  {row.name}/seed {seed}: the earlier run had other parent weights or hyperparameters; "
                        "running it again")
                    done = None
                if done is not None:
                    log(f"run {len(runs) + 1}/{total}: {row.name}, seed {seed}: reused from {args.resume} "
                        f"({done['status']}, finished {done.get('finished_at', earlier['date'])})")
                    runs.append(done)
                    if seed == 0 and f"{version}/{row.name}" in earlier_lines:
                        pictures[version].append((row.name, earlier_lines[f"{version}/{row.name}"]))
                    continue
                log(f"run {len(runs) + 1}/{total}: {row.name} ({row.variant}), seed {seed}")
                run, candidate = one_run(row, seed, registry=registry, target=target, forget=label, uploads=uploads,
                                         args=args, device=device)
                runs.append(run)
                session["ran"].append(f"{row.name}/{seed}")
                if candidate is not None and seed == 0:
                    pictures[version].append((row.name, grid_samples(candidate, PICTURE_SAMPLES)))
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


def marks_note(doc: dict[str, Any], forgotten: str) -> str:
    if doc["settings"]["domain"] == "digits":
        return (f"Marks: of the {MARK_N} samples of seed {MARK_SEED}, those whose pixel slant reaches the parent's "
                "top decile; target ratio = share of samples at or above it. ")
    return f"Marks: of the {MARK_N} samples of seed {MARK_SEED}, those the guide calls {forgotten!r}. "


def markdown(doc: dict[str, Any]) -> str:
    settings, m = doc["settings"], doc["machine"]
    forgotten = settings["forget"]["name"]
    tables = {
        "class": (f"Forget {forgotten!r}", "invalidity (guide)", "invalidity (judge)", "PUL % (judge)"),
        "slant": ("Forget 'leans left' from a person's marks (feedback)", "target ratio (slant)", "-", "PUL %"),
    }
    lines: list[str] = []
    for task, (title, by_guide, by_judge, pul) in tables.items():
        rows = [r for r in doc["rows"] if r["task"] == task]
        if not rows:
            continue
        against = "; ".join(f"{parent}: {ref}" for parent, ref in
                            {r["parent"]: r["fid_reference"] for r in rows if r.get("fid_reference")}.items())
        lines += [
            f"**{title}** (FID against {against})",
            "",
            f"| row | method | variant | seeds | promoted | {by_guide} | {by_judge} | {pul} | IS | FID | "
            "FID / filtered parent | attack worst case (parent) | wall-time ratio | paper (MNIST) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            is_base = row["method"] == "base"
            promoted = "-" if is_base else f"{row['status'].get('promoted', 0)}/{len(row['seeds'])}"
            wall = "1 (pre-training)" if is_base and row["wall_time_ratio"].get("mean") else \
                _fmt(row["wall_time_ratio"], "ratio")
            attack = _fmt(row.get("attack_worst_case"), "ratio")
            if (row.get("parent_attack_worst_case") or {}).get("mean") is not None:
                attack += f" ({row['parent_attack_worst_case']['mean']:.3f})"
            lines.append(
                f"| {row['row']} | {row['method']} | {row['variant']} | {len(row['seeds'])} | {promoted} | "
                f"{_fmt(row['invalidity'], 'sci')} | {_fmt(row['judge_invalidity'], 'sci')} | "
                f"{'-' if is_base else _fmt(row['pul'], 'pct')} | {_fmt(row['inception_score'], 'plain')} | "
                f"{_fmt(row['fid'], 'plain')} | {_fmt(row['fid_over_filtered_base'], 'ratio')} | {attack} | "
                f"{wall} | {row['paper']} |")
            if is_base and row.get("filtered_fid") is not None:  # zero where it was filtered
                by = "by the judge | - | - | - | 0" if task == "class" else "by the slant | - | - | 0 | -"
                lines.append(f"| base, filtered | rejection sampling | {by} | - | - | {row['filtered_fid']:.2f} | 1 "
                             "| - | - | - |")
        lines.append("")
        worst = worst_case_table(rows)
        if worst:
            lines += [f"**Worst case: {title[0].lower() + title[1:]}**", "", *worst, ""]
    pre = "; ".join(f"{v}: {p['epochs']} epochs, " + (f"{p['iterations']} iterations, " if p["iterations"] else "")
                    + f"{p['wall_time_s']:.0f} s on {p['device']}"
                    for v, p in doc["pretraining_by_parent"].items() if p)
    shape = "x".join(str(s) for s in settings["image_shape"][1:])
    lines += [
        f"Mean ± standard error over seeds; {settings['eval_samples']} samples per model (seed "
        f"{settings['eval_seed']}). Invalidity (guide): share of samples the guide `{settings['guide']}` calls "
        f"{forgotten!r}, what the methods trained against; invalidity (judge): the same asked of "
        f"`{settings['judge']}`, trained apart, which no method sees. IS and FID: the judge's (FID in "
        f"`{settings['extractor']}` features); the filtered parent keeps the samples the judge does not call "
        f"{forgotten!r}. PUL = 100 (parent - after) / parent (Tiwary et al. eq. 8). "
        + (marks_note(doc, forgotten) if any(r["method"] == "feedback" for r in doc["rows"]) else "")
        + "Attack: worst case of the job's own attacks (gradient ascent, truncation, inversion), judged by the "
        f"judge (for feedback, nearest neighbour among the marks in the judge's features), parent in brackets. "
        f"Worst-case tables: {WORST_CASE_NOTE} Wall-time ratio = training phase of the redaction job / the parent's pre-training "
        f"({pre}). Gates and hyperparameters: the library's defaults"
        + (" (--quick: tiny budgets)" if settings["quick"] else "") + f". {m['device']}, {m['torch_threads']} "
        f"threads, torch {m['torch']}, {m['platform']}, {doc['date'][:10]}.",
        "",
        "Paper column: the papers' headline numbers on MNIST, not like for like. Kong & Chaudhuri Table I is MNIST "
        "28x28, forget 0, 8 epochs, invalidity on 50K samples, pre-trained 1.1e-1 / IS 7.82. Tiwary et al. Table 1 "
        "forgets MNIST digits 1, 4 and 8 (Inception FID, pre-trained 5.4). Moon et al. forget thickness "
        f"(Morpho-MNIST). Here: {settings['domain']} {shape}, FID on the judge's features.",
    ]
    for version, picture in (doc.get("pictures") or {}).items():
        lines.append(f"\n`{picture['file']}`: samples of {version} on the same latents, one line each: "
                     + ", ".join(picture["lines"]) + ".")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        print(markdown(json.loads(args.render.read_text())))
        return 0
    from unlearning.errors import LetheError

    try:
        doc = run_benchmark(args)
    except LetheError as exc:  # a bad --forget, a missing dataset: say so, no traceback
        log(f"error: {exc}")
        return 2
    if args.output:
        write_json(args.output, doc)
        log(f"wrote {args.output}")
    print(markdown(doc) if args.markdown else json.dumps(doc, indent=2, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
