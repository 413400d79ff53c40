"""Every log line stays one line: control characters in what is logged are escaped.

A request path is client text, and it reaches the log through BentoML's access log, our
refusal lines and our own messages: ``/admin/audit%0d%0a2026-... [WARNING] ...`` wrote a
convincing second line into the server log. This record factory escapes CR, LF and every
other control character (and the Unicode line separators) in a record's message and its
string arguments as ``\\r``, ``\\n``, ``\\x1b`` ..., and cuts a string argument longer
than ``MAX_ARG_CHARS``, before any handler formats them, for every logger in the process.
Tracebacks are not touched: they are the handler's, not the client's.
"""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
MAX_ARG_CHARS = 2000  # an 8,000-character path is logged as its first 2,000 and its length


def escape(text: str) -> str:
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: _NAMED.get(m.group(), m.group().encode("unicode_escape").decode("ascii")), text)


def _escaped(value):
    if isinstance(value, BaseException):
        value = str(value)
    if not isinstance(value, str):
        return value
    if len(value) > MAX_ARG_CHARS:
        value = f"{value[:MAX_ARG_CHARS]}... ({len(value):,} characters)"
    return escape(value)


def install() -> None:
    """Idempotent: wraps the current record factory once."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "lethe_escapes", False):
        return

    def factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        if isinstance(record.msg, str):
            record.msg = escape(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_escaped(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: _escaped(value) for key, value in record.args.items()}
        return record

    factory.lethe_escapes = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
