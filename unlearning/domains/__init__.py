"""Domains: a dataset (train and held-out splits, class names, image shape) with two
classifiers, the *guide* that specs name and methods may train against, and the *judge*,
trained apart (the other half of the training data, another architecture and seed), which
no method, spec or attack is ever handed. Gates, reports and benchmarks say which of the
two made each number; "independent" means the judge.

* ``BUILTIN_DOMAINS``: the domains ``lethe bootstrap --domain`` builds from data that ships
  with the dependencies or Debian (one file each, registered here);
* ``register.py``: training the two classifiers and storing a domain (``lethe domain add``);
* ``loaded.py``: a registered domain, loaded to judge models (``load_domain``).
"""

from __future__ import annotations

from unlearning.domains import digits, fashion_mnist
from unlearning.domains.builtin import BuiltinDomain, ModelRecipe
from unlearning.runtime import DEFAULT_DOMAIN

BUILTIN_DOMAINS: dict[str, BuiltinDomain] = {d.name: d for d in (digits.DOMAIN, fashion_mnist.DOMAIN)}


def builtin_for_model(model: str) -> BuiltinDomain | None:
    """The built-in domain whose bootstrap makes ``model``, if any."""
    return next((d for d in BUILTIN_DOMAINS.values() if d.recipe(model) is not None), None)


__all__ = ["BUILTIN_DOMAINS", "DEFAULT_DOMAIN", "BuiltinDomain", "ModelRecipe", "builtin_for_model"]
