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

An image-to-image model (an inpainter) takes ``i2i-encoder`` only (Li et al.), and
``auto`` picks it for one: the forget set is the training images in Omega plus any
uploaded negatives.

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
from unlearning.methods import adapt_then_unlearn, feedback, i2i, kong
from unlearning.methods.base import GAN, Callbacks, MethodResult
from unlearning.spec.schema import ForgetSpec

# name -> (hyperparameter model, function(variant, gan, omega, train, hp, **kw))
METHODS: dict[str, tuple[type[BaseModel], Callable[..., MethodResult]]] = {
    **{name: (kong.KongHyperparameters, kong.redact) for name in kong.VARIANTS},
    **{name: (adapt_then_unlearn.AdaptThenUnlearnHyperparameters, adapt_then_unlearn.redact)
       for name in adapt_then_unlearn.VARIANTS},
    "feedback": (feedback.FeedbackHyperparameters, feedback.redact),
    # edits an image-to-image model, not a GAN: called by jobs.image_to_image, not run_method
    "i2i-encoder": (i2i.I2IHyperparameters, i2i.unlearn_encoder),
}
IMAGE_TO_IMAGE_METHODS = frozenset({"i2i-encoder"})
USES_FEEDBACK_MARKS = {*adapt_then_unlearn.VARIANTS, "feedback"}
DATA_FREE_METHODS = frozenset(USES_FEEDBACK_MARKS)  # they get no training images
NEEDS_DISCRIMINATOR = {*kong.VARIANTS, *adapt_then_unlearn.VARIANTS}


def check_fits_model(method: str, has_discriminator: bool, model: str) -> None:
    """Adversarial methods need the parent's discriminator; a VAE decoder has none."""
    if method in NEEDS_DISCRIMINATOR and not has_discriminator:
        raise SpecError(f"method: '{method}' trains against the parent's discriminator, and model '{model}' "
                        "has none (a VAE decoder): use method 'feedback'")


def choose_method(spec: ForgetSpec, *, image_to_image: bool = False, model: str = "this model") -> str:
    """The method a spec asks for, or the one ``auto`` picks from its kinds (table above),
    for a generator or (``image_to_image``) an image-to-image model."""
    kinds = {s.kind for s in spec.sets}
    if image_to_image:
        if spec.method not in ("auto", *IMAGE_TO_IMAGE_METHODS):
            raise SpecError(f"method: '{spec.method}' edits generators, and '{model}' is an image-to-image model: "
                            "use 'i2i-encoder' (or auto)")
        if "feedback" in kinds:
            raise SpecError(f"sets: marks on generated samples cannot describe what the image-to-image model "
                            f"'{model}' must forget: use data, validity or classifier sets")
        return "i2i-encoder"
    if spec.method in IMAGE_TO_IMAGE_METHODS:
        raise SpecError(f"method: '{spec.method}' edits image-to-image models, and '{model}' is a generator")
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


__all__ = ["METHODS", "DATA_FREE_METHODS", "IMAGE_TO_IMAGE_METHODS", "check_fits_model", "GAN", "Callbacks", "MethodResult", "choose_method", "hyperparameters", "run_method"]
