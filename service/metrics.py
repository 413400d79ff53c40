"""The ``lethe_*`` Prometheus metrics (names fixed by DESIGN.md).

BentoML runs prometheus_client in multiprocess mode and serves every process's values at
``/metrics``; the job worker writes to the same folder (``lethe serve`` passes it on). The
metrics are created on first use, after ``PROMETHEUS_MULTIPROC_DIR`` is set, or they would
stay invisible to the multiprocess collector. Gauge modes:

* per-version facts every worker agrees on (gate invalidity and its limit, FID, the
  attacks' worst cases): ``max``;
* ``lethe_active_model_info``: ``livemax`` (1 while any live worker serves the version);
* ``lethe_served_invalidity_ratio`` (the spec's checks) and
  ``lethe_served_judge_invalidity_ratio`` (the domain's judge): ``livemostrecent`` (each
  worker's monitor publishes its recent window; ``lethe_served_checked_images_total`` and
  ``lethe_served_invalid_images_total`` add up exactly across workers for PromQL ratios).
"""

from __future__ import annotations

import functools
from types import SimpleNamespace


@functools.cache
def metrics() -> SimpleNamespace:
    from prometheus_client import Counter, Gauge, Histogram

    return SimpleNamespace(
        model_invalidity=Gauge(
            "lethe_model_invalidity_ratio", "Invalidity measured by the version's gates on fresh samples",
            ["model_version", "spec"], multiprocess_mode="max",
        ),
        model_judge_invalidity=Gauge(
            "lethe_model_judge_invalidity_ratio",
            "Invalidity by the domain's judge (the spec's label-based checks asked of a classifier no method sees)",
            ["model_version", "spec", "judge"], multiprocess_mode="max",
        ),
        model_attack_invalidity=Gauge(
            "lethe_model_attack_invalidity_ratio",
            "Worst-case invalidity of the version's attacks (gate measurement, judged by the domain's judge): "
            "attack=gradient (latent ascent), inversion (real examples reconstructed), worst_case (the worst of all)",
            ["model_version", "spec", "attack"], multiprocess_mode="max",
        ),
        gate_max_invalidity=Gauge(
            "lethe_model_gate_max_invalidity", "The gate's max_invalidity in the spec that produced the version",
            ["model_version", "spec"], multiprocess_mode="max",
        ),
        model_fid=Gauge(
            "lethe_model_fid", "FID of the version's samples against the retained data (gate measurement)",
            ["model_version", "extractor"], multiprocess_mode="max",
        ),
        served_invalidity=Gauge(
            "lethe_served_invalidity_ratio",
            "Share of recently served images (monitored sample) that the forget checks call invalid",
            ["model_version", "spec"], multiprocess_mode="livemostrecent",
        ),
        served_judge_invalidity=Gauge(
            "lethe_served_judge_invalidity_ratio",
            "Share of recently served images (monitored sample) that the domain's judge puts in the forget set",
            ["model_version", "spec", "judge"], multiprocess_mode="livemostrecent",
        ),
        served_checked=Counter(
            "lethe_served_checked_images", "Served images the online monitor checked", ["model_version", "spec"],
        ),
        served_invalid=Counter(
            "lethe_served_invalid_images", "Checked served images found invalid", ["model_version", "spec"],
        ),
        generated_images=Counter(
            "lethe_generated_images", "Images generated and returned", ["model_version"],
        ),
        active_model=Gauge(
            "lethe_active_model_info", "1 for the version a live worker serves", ["model_version"],
            multiprocess_mode="livemax",
        ),
        swaps=Counter("lethe_model_swaps", "Active-version swaps performed by serving workers"),
        jobs=Counter("lethe_redaction_jobs", "Redaction jobs that ended, by outcome", ["method", "outcome"]),
        job_duration=Histogram(
            "lethe_redaction_job_duration_seconds", "Wall time of redaction jobs",
            buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, float("inf")),
        ),
    )


def publish_version(manifest) -> None:
    """Gate measurements of one version (stored in its manifest) as gauges."""
    m = metrics()
    after = (manifest.metrics or {}).get("after") or {}
    spec_name = (manifest.spec or {}).get("name", "") if manifest.spec else ""
    if after.get("invalidity") is not None and spec_name:
        m.model_invalidity.labels(manifest.version, spec_name).set(float(after["invalidity"]))
    judge = (after.get("judged_by") or {}).get("judge_invalidity")
    if after.get("judge_invalidity") is not None and spec_name and judge:
        m.model_judge_invalidity.labels(manifest.version, spec_name, judge).set(float(after["judge_invalidity"]))
    for attack, value in attack_measurements(after.get("attack")).items():
        if spec_name:
            m.model_attack_invalidity.labels(manifest.version, spec_name, attack).set(value)
    limit = ((manifest.spec or {}).get("gates") or {}).get("max_invalidity")
    if limit is not None and spec_name:
        m.gate_max_invalidity.labels(manifest.version, spec_name).set(float(limit))
    if after.get("fid") is not None:
        m.model_fid.labels(manifest.version, str(after.get("extractor", "unknown"))).set(float(after["fid"]))


def attack_measurements(attack: dict | None) -> dict[str, float]:
    """{attack: invalidity} of a version's attack summary (``jobs/attacks.py``)."""
    if not attack:
        return {}
    values = {"gradient": attack.get("attack_invalidity"),
              "inversion": (attack.get("inversion") or {}).get("attack_invalidity"),
              "worst_case": attack.get("worst_case")}
    return {name: float(v) for name, v in values.items() if v is not None}
