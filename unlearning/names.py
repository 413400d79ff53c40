"""The one rule for names that become file names: models, versions, classifiers.

A name a client sends (a version in a request, a model in a query, a classifier in a
spec) is checked here before it reaches the file system: a name that breaks the rule is
refused with a short message, never turned into a path (a megabyte of digits would be
``OSError: File name too long``; ``../x.onnx`` would leave the folder).
"""

from __future__ import annotations

import re

from unlearning.errors import LetheError

NAME_RULE = "1-64 letters, digits, '_', '.' or '-', starting with a letter or digit"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# <model>-v<N>: the model part follows NAME, N has at most 9 digits
VERSION = re.compile(r"^(?P<model>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})-v(?P<n>[0-9]{1,9})$")
_SHOWN = 80


def shown(name: object) -> str:
    """``repr(name)``, cut short: a refusal must not echo a megabyte back (or into the log)."""
    text = repr(name)
    if len(text) <= _SHOWN:
        return text
    size = f" ({len(name):,} characters)" if isinstance(name, str) else ""
    return f"{text[:_SHOWN - 3]}...{size}"


def is_name(name: object) -> bool:
    return isinstance(name, str) and NAME.match(name) is not None


def is_version(name: object) -> bool:
    return isinstance(name, str) and VERSION.match(name) is not None


def check_name(name: object, what: str) -> str:
    """``name`` if it follows the rule, else LetheError naming it (shortened) and the rule."""
    if not is_name(name):
        raise LetheError(f"{what} name {shown(name)} is not allowed: use {NAME_RULE}")
    return name  # type: ignore[return-value]
