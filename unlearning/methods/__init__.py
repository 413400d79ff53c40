"""Unlearning methods: each a function (GAN, redaction set, data, hyperparameters,
callbacks) -> MethodResult, and ``choose_method`` for ``method: auto``.

``auto`` picks by what the spec holds, first match wins:

| spec holds                        | auto picks        | why                                           |
|-----------------------------------|-------------------|-----------------------------------------------|
| a ``feedback`` set (marks)        | feedback          | Moon et al.: built for marks; no data, no D,  |
|                                   |                   | so it also fits VAE decoders                  |
| a ``classifier`` set              | kong-classifier   | Kong & Chaudhuri Alg. 3: the guided D (eq. 6) |
|                                   |                   | uses the classifier's gradient                |
| a ``validity`` set                | kong-validity     | Alg. 2: filters real and generated samples    |
| only ``data`` sets                | kong-data         | Alg. 1: the uploads are the negatives         |

Asked for by name: ``adapt-then-unlearn`` (Tiwary et al.: no training data at all, only
generated samples split by the spec's checks or a person's marks) and its baseline
``param-extrapolation``. Kong and Adapt-then-Unlearn train against the parent's
discriminator, so a VAE parent takes ``feedback`` only (``check_fits_model``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

from unlearning.errors import SpecError
from unlearning.methods import adapt_then_unlearn, feedback, kong
from unlearning.methods.base import GAN, Callbacks, MethodResult
from unlearning.spec.schema import ForgetSpec

# name -> (hyperparameter model, function(variant, gan, omega, train, hp, **kw))
METHODS: dict[str, tuple[type[BaseModel], Callable[..., MethodResult]]] = {
    **{name: (kong.KongHyperparameters, kong.redact) for name in kong.VARIANTS},
    **{name: (adapt_then_unlearn.AdaptThenUnlearnHyperparameters, adapt_then_unlearn.redact)
       for name in adapt_then_unlearn.VARIANTS},
    "feedback": (feedback.FeedbackHyperparameters, feedback.redact),
}
NOT_YET = {"i2i-encoder"}
USES_FEEDBACK_MARKS = {*adapt_then_unlearn.VARIANTS, "feedback"}
DATA_FREE_METHODS = frozenset(USES_FEEDBACK_MARKS)  # they get no training images
NEEDS_DISCRIMINATOR = {*kong.VARIANTS, *adapt_then_unlearn.VARIANTS}


def check_fits_model(method: str, has_discriminator: bool, model: str) -> None:
    """Adversarial methods need the parent's discriminator; a VAE decoder has none."""
    if method in NEEDS_DISCRIMINATOR and not has_discriminator:
        raise SpecError(f"method: '{method}' trains against the parent's discriminator, and model '{model}' "
                        "has none (a VAE decoder): use method 'feedback'")


def choose_method(spec: ForgetSpec) -> str:
    """The method a spec asks for, or the one ``auto`` picks from its kinds (table above)."""
    kinds = {s.kind for s in spec.sets}
    if spec.method != "auto":
        name = spec.method
    elif "feedback" in kinds:
        name = "feedback"
    elif "classifier" in kinds:
        name = "kong-classifier"
    elif "validity" in kinds:
        name = "kong-validity"
    else:
        name = "kong-data"
    if name in NOT_YET:
        raise SpecError(f"method: '{name}' is not available in this version of Lethe "
                        f"(available: {', '.join(METHODS)})")
    if "feedback" in kinds and name not in USES_FEEDBACK_MARKS:
        raise SpecError(f"sets: a 'feedback' set cannot be used by {name}; use feedback or adapt-then-unlearn")
    if name == "feedback" and "feedback" not in kinds:
        raise SpecError("method: 'feedback' needs a 'feedback' set (the samples a person marked)")
    return name


def hyperparameters(name: str, overrides: dict[str, Any], **defaults: Any) -> BaseModel:
    """The method's hyperparameters: its defaults, then ``defaults``, then the spec's overrides."""
    model = METHODS[name][0]
    try:
        return model(**{**defaults, **overrides})
    except ValidationError as exc:
        def reason(error: dict) -> str:
            if error["type"] == "extra_forbidden":
                return f"unknown hyperparameter for {name}; known: {', '.join(model.model_fields)}"
            return error["msg"]

        problems = "; ".join(
            f"hyperparameters.{'.'.join(str(p) for p in e['loc'])}: {reason(e)}" for e in exc.errors()
        )
        raise SpecError(problems) from None


def run_method(name: str, gan: GAN, omega, train_images, hp: BaseModel, **kwargs: Any) -> MethodResult:
    return METHODS[name][1](name, gan, omega, train_images, hp, **kwargs)


__all__ = ["METHODS", "DATA_FREE_METHODS", "check_fits_model", "GAN", "Callbacks", "MethodResult", "choose_method", "hyperparameters", "run_method"]
