"""The gates a candidate must pass before promotion, and the numbers each one reads.

Generators: ``invalidity`` (the spec's own checks: what the method optimised),
``judge_invalidity`` (the same label-based checks asked of the domain's judge, which no
method sees; present when the spec names the guide), ``fid_ratio`` (and ``fid_increase``
when asked; the judge's features, against the parent filtered by the judge),
``class_balance`` (the judge's classes),
optionally ``attack_invalidity`` (the worst of the gradient and inversion attacks, judged
by the judge), and ONNX parity. Image-to-image models: retain and forget
FID ratios, and parity.
"""

from __future__ import annotations

import math
from typing import Any

from unlearning.jobs.outcome import Gate
from unlearning.metrics import forgotten_classes, min_share_ratio, retained_shares
from unlearning.spec import ForgetSpec

PARITY_LIMIT = 1e-4
DEFAULT_MAX_JUDGE_INVALIDITY = 0.01
# A spec that leaves max_invalidity out gets its method's: what the method reaches with its
# own defaults on digits (README, "Gates and what a job writes"). Adapt-then-Unlearn
# never sees training data and removes what a sample of the parent shows, so it stops short
# of Kong's; the feedback marks' nearest-neighbour judge is coarse.
DEFAULT_MAX_INVALIDITY = {
    "kong-data": 0.001, "kong-validity": 0.001, "kong-classifier": 0.001,
    "adapt-then-unlearn": 0.01, "param-extrapolation": 0.01, "feedback": 0.05, "i2i-encoder": 1.0,
}


# The marks' nearest-neighbour judge filters the parent coarsely, and the FIDs of a feature
# edit are small (1-3 in the judge's features), so their ratio is noisy: on five DCGANs
# (bench/seeds.py) the feedback job's ratio reached 2.17 while FID against the data without
# the feature stayed within 1.07x.
DEFAULT_MAX_FID_RATIO = {"feedback": 3.0}
FID_RATIO = 2.0
# A nearest-neighbour judge (data and marks specs) calls some kept images invalid: on
# Fashion-MNIST 0.50 % of the 10,000 kept images have a trouser as their nearest neighbour in
# the guide's features (the digits: none). No generator can be asked to beat the data it
# imitates, and generated images, blurrier than the data, sit nearer the boundary: Kong
# Alg. 1 forgetting Trouser with every default scored 1.06 % (2.1x the floor) while the
# judge, which it never saw, found 0.10 % trousers. A default limit is at least 3x the floor.
FLOOR_TOLERANCE = 3.0


def resolve_gates(spec: ForgetSpec, method: str, invalidity_floor: float = 0.0) -> ForgetSpec:
    """``spec`` with every gate limit it left to the method filled in. A default
    ``max_invalidity`` is at least ``FLOOR_TOLERANCE`` times ``invalidity_floor``, what the spec's
    nearest-neighbour judge says of the kept images themselves (redaction_set.py)."""
    update = {}
    if spec.gates.max_invalidity is None:
        update["max_invalidity"] = max(DEFAULT_MAX_INVALIDITY.get(method, 0.001),
                                        math.ceil(FLOOR_TOLERANCE * invalidity_floor * 1e4) / 1e4)
    if spec.gates.max_fid_ratio is None:
        update["max_fid_ratio"] = DEFAULT_MAX_FID_RATIO.get(method, FID_RATIO)
    if not update:
        return spec
    return spec.model_copy(update={"gates": spec.gates.model_copy(update=update)})


def max_judge_invalidity(spec: ForgetSpec) -> float:
    """The judge's limit: the spec's, else the larger of 1 % and the guide's limit. The judge
    disagrees with the guide on a share of ambiguous samples, so its limit is looser."""
    g = spec.gates
    if g.max_judge_invalidity is not None:
        return g.max_judge_invalidity
    return max(DEFAULT_MAX_JUDGE_INVALIDITY, g.max_invalidity)


def generator_gates(spec: ForgetSpec, before: dict[str, Any], after: dict[str, Any], parity: float) -> list[Gate]:
    g = spec.gates
    gates = []
    if "invalidity" in after:
        floor = before.get("invalidity_floor")
        floor_note = (f"; the nearest-neighbour judge calls {floor:.2%} of the kept images themselves invalid"
                      if floor is not None else "")
        gates.append(Gate(name="invalidity", value=after["invalidity"], limit=g.max_invalidity,
                          passed=after["invalidity"] <= g.max_invalidity,
                          detail=f"by the spec's checks on {after['samples']} fresh samples{floor_note}"))
    if "judge_invalidity" in after:
        limit = max_judge_invalidity(spec)
        gates.append(Gate(name="judge_invalidity", value=after["judge_invalidity"], limit=limit,
                          passed=after["judge_invalidity"] <= limit,
                          detail=f"the label-based checks asked of {after['judged_by']['judge_invalidity']}, "
                                 "which no method sees"))
    # Against the parent filtered by the same checks: the unfiltered parent still makes the
    # samples being forgotten, which the retained-data reference lacks, so its FID is inflated
    # and any redaction would look like an improvement.
    if before.get("filtered_fid") is not None:
        baseline = before["filtered_fid"]
        against = f"parent filtered by {before['judged_by']['filtered_fid']}"
    else:
        baseline, against = before["fid"], "parent"
    detail = f"against the {against} ({baseline:.4g}); extractor {after['extractor']}"
    if g.max_fid_ratio is not None:
        ratio = after["fid"] / max(baseline, 1e-9)
        gates.append(Gate(name="fid_ratio", value=ratio, limit=g.max_fid_ratio, passed=ratio <= g.max_fid_ratio,
                          detail=detail))
    if g.max_fid_increase is not None:
        increase = after["fid"] - baseline
        gates.append(Gate(name="fid_increase", value=increase, limit=g.max_fid_increase,
                          passed=increase <= g.max_fid_increase, detail=detail))
    excluded = forgotten_classes(before)
    ratio = min_share_ratio(retained_shares(before), after["class_shares"], excluded)
    gates.append(Gate(name="class_balance", value=ratio if ratio != float("inf") else None,
                      limit=g.min_class_share_ratio, passed=ratio >= g.min_class_share_ratio,
                      detail=f"smallest retained-class share ratio by {after['judged_by']['class_shares']}, "
                             f"against the parent's samples outside Omega; forgotten classes {sorted(excluded)}"))
    if g.max_attack_invalidity is not None:  # the worst of the attacks (jobs/attacks.py)
        attack = after["attack"]
        worst = attack["worst_case"]
        inversion = attack.get("inversion") or {}
        inverted = (f", inversion of {inversion['targets']} real examples"
                    if inversion.get("attack_invalidity") is not None else "")
        gates.append(Gate(name="attack_invalidity", value=worst, limit=g.max_attack_invalidity,
                          passed=worst <= g.max_attack_invalidity,
                          detail=f"worst of latent gradient ascent from {attack['starts']} starts, truncation "
                                 f"extremes{inverted}; judged by {attack.get('judged_by', 'the spec checks')}"))
    gates.append(Gate(name="onnx_parity", value=parity, limit=PARITY_LIMIT, passed=parity <= PARITY_LIMIT,
                      detail="max abs difference, PyTorch vs ONNX Runtime, 256 latents"))
    return gates


def image_to_image_gates(spec: ForgetSpec, before: dict[str, Any], after: dict[str, Any],
                         parity: float) -> list[Gate]:
    g = spec.gates
    retain_ratio = after["retain"]["fid"] / max(before["retain"]["fid"], 1e-9)
    forget_ratio = after["forget"]["fid"] / max(before["forget"]["fid"], 1e-9)
    extractor = after["extractor"]
    return [
        Gate(name="retain_fid_ratio", value=retain_ratio, limit=g.max_retain_fid_ratio,
             passed=retain_ratio <= g.max_retain_fid_ratio,
             detail=f"restorations of {after['retain']['images']} held-out retain images against the real ones, "
                    f"candidate over parent; extractor {extractor}"),
        Gate(name="forget_fid_ratio", value=forget_ratio, limit=g.min_forget_fid_ratio,
             passed=forget_ratio >= g.min_forget_fid_ratio,
             detail=f"restorations of {after['forget']['images']} forget images, candidate over parent (at least)"),
        Gate(name="onnx_parity", value=parity, limit=PARITY_LIMIT, passed=parity <= PARITY_LIMIT,
             detail="max abs difference, PyTorch vs ONNX Runtime, on the evaluation inputs"),
    ]
