"""The benchmark's worst-case columns: every model attacked the same way, whatever spec its
job was given, and judged by the domain's judge (never by the classifier climbed).

For a "forget a class" task: the gradient attack climbs the guide's "is this class"
margin from 256 starts; the inversion attack reconstructs 32 held-out real images the
judge puts in the class (8 starts x 300 Adam steps, ||z|| <= sqrt(d)). Both are judged by
the judge's mirror of the same rule (``unlearning.jobs.attacks.run_attacks``, the code
every job runs). Random invalidity is the judge's share on the attack's 256 starts.

Used by ``bench/redaction.py`` (one call per model); ``worst_case_table`` renders the
columns as Markdown."""

from __future__ import annotations

import math
import time
from typing import Any

COLUMNS = ("judge_random_invalidity", "gradient_attack", "gradient_climbed", "fooled_share", "gradient_worst_case",
           "inversion_attack", "inversion_mse", "bench_worst_case", "attack_seconds")


WORST_CASE_NOTE = (
    "every model of a class task is attacked the same way whatever its spec: gradient ascent on the guide's "
    "'is the class' margin from 256 starts (60 Adam steps, until the margin reaches 2) and inversion of 32 "
    "held-out images of the class "
    "(8 starts x 300 Adam steps, ||z|| <= sqrt(d)), both judged by the domain's judge on the final images; "
    "'climbed guide' is what the guide says of the same images, and the fooled share is where it names the class and the "
    "judge does not. Worst case = the largest of the gradient attack, truncation (psi 0.25, 0.5, 1.5, 2) and "
    "inversion. Feedback rows: the job's own attacks.")


# stronger than a job's default (4 starts x 100 steps): the benchmark can afford it
BENCH_INVERSION = {"targets": 32, "starts": 8, "steps": 300, "lr": 0.05}
# --quick (a smoke run): a few starts and targets, enough to fill every column
QUICK_GRADIENT = {"starts": 32}
QUICK_INVERSION = {"targets": 4, "starts": 2, "steps": 50, "lr": 0.05}


class ClassAttack:
    """The attacks of a class-forgetting task on one domain, on sets the caller prepared
    once (``prepare_redaction_set``: Omega by the guide, its mirror by the judge)."""

    def __init__(self, domain, prepared, quick: bool = False):
        self.domain = domain
        self.prepared = prepared
        self.gradient = QUICK_GRADIENT if quick else {}
        self.inversion = QUICK_INVERSION if quick else BENCH_INVERSION
        if self.prepared.judged is None:
            raise ValueError("the attack columns need a rule naming the domain's guide (its judge mirrors it)")

    def columns(self, generator) -> dict[str, Any]:
        from unlearning.jobs.attacks import run_attacks
        from unlearning.metrics import AttackSettings, InversionSettings

        started = time.monotonic()
        p = self.prepared
        summaries, _ = run_attacks({"model": generator.to(self.domain.device)}, p.spec, p.omega, p.judged,
                                   self.domain, gradient=AttackSettings(**self.gradient),
                                   inversion=InversionSettings(**self.inversion))
        s = summaries["model"]
        inversion = s.get("inversion") or {}
        return {
            "judge_random_invalidity": s["random_invalidity"],
            "gradient_attack": s.get("attack_invalidity"),
            "gradient_climbed": s.get("climbed_invalidity"),
            "fooled_share": s.get("fooled_share"),
            "gradient_worst_case": s["gradient_worst_case"],
            "inversion_attack": inversion.get("attack_invalidity"),
            "inversion_mse": (inversion.get("mse") or {}).get("mean"),
            "bench_worst_case": s["worst_case"],
            "attack_seconds": time.monotonic() - started,
            "attack_judged_by": s["judged_by"],
        }


def attack_columns(attacks: ClassAttack | None, candidate, outcome) -> dict[str, Any]:
    """The worst-case columns of one redacted model: the benchmark's own attacks where the
    task has a class the judge can name; else the job's own attacks (for feedback, judged
    by nearest neighbour among the marks in the judge's features)."""
    if attacks is not None:
        return attacks.columns(candidate)
    attack = outcome.after.get("attack") or {}
    inversion = attack.get("inversion") or {}
    return {"judge_random_invalidity": attack.get("random_invalidity"), "gradient_attack": attack.get("attack_invalidity"),
            "gradient_climbed": attack.get("climbed_invalidity"), "fooled_share": attack.get("fooled_share"),
            "gradient_worst_case": attack.get("gradient_worst_case"),
            "inversion_attack": inversion.get("attack_invalidity"), "inversion_mse": (inversion.get("mse") or {}).get("mean"),
            "bench_worst_case": attack.get("worst_case"), "attack_judged_by": attack.get("judged_by")}


def _cell(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None or not math.isfinite(stat["mean"]):
        return "-"
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['se']:.{digits}f}" if stat.get("se") is not None else "")


def worst_case_table(rows: list[dict[str, Any]], measure: str = "invalidity") -> list[str]:
    """Markdown lines: one row per benchmark row that has the attack columns."""
    rows = [r for r in rows if (r.get("bench_worst_case") or {}).get("mean") is not None]
    if not rows:
        return []
    lines = ["| row | variant | seeds | promoted | random invalidity (judge) | gradient attack (judge) "
             "| gradient attack (climbed guide) | fooled share | inversion (judge) | inversion MSE | worst case "
             "| FID / filtered parent | wall-time ratio | attack time (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = r["method"] == "base"
        promoted = "-" if base else f"{r['status'].get('promoted', 0)}/{len(r['seeds'])}"
        lines.append(
            f"| {r.get('row', r['method'])} | {r['variant']} | {len(r['seeds'])} | {promoted} | "
            f"{_cell(r.get('judge_random_invalidity'), 4)} | {_cell(r.get('gradient_attack'))} | "
            f"{_cell(r.get('gradient_climbed'))} | {_cell(r.get('fooled_share'))} | {_cell(r.get('inversion_attack'))} | "
            f"{_cell(r.get('inversion_mse'))} | {_cell(r.get('bench_worst_case'))} | "
            f"{_cell(r.get('fid_over_filtered_base'))} | {'1 (pre-training)' if base else _cell(r.get('wall_time_ratio'))} | "
            f"{_cell(r.get('attack_seconds'), 1)} |")
    return lines
