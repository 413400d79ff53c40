"""Forget jobs: the one pipeline (``pipeline.py``) over a model family's steps (``generator.py``,
``image_to_image.py``), with Omega (``redaction_set.py``), the gates (``gates.py``), what a job
returns (``outcome.py``) and how its version is stored (``storage.py``). The CLI and the
service both call :func:`run_redaction`; the service refuses bad requests with :func:`preflight`."""

from unlearning.jobs.attacks import attack_check
from unlearning.jobs.generator import GATE_SEED
from unlearning.jobs.image_to_image import forget_mask
from unlearning.jobs.outcome import Gate, JobOutcome
from unlearning.jobs.pipeline import DEFAULT_MODEL, preflight, probe_checks, resolve_parent, run_redaction
from unlearning.jobs.redaction_set import PreparedSets, prepare_redaction_set
from unlearning.jobs.storage import store_version

__all__ = [
    "DEFAULT_MODEL", "GATE_SEED", "Gate", "JobOutcome", "PreparedSets", "attack_check", "forget_mask",
    "preflight", "prepare_redaction_set", "probe_checks", "resolve_parent", "run_redaction",
    "store_version",
]
