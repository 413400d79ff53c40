"""One log line for a refused request, not an ERROR with a traceback.

BentoML 1.4.39 logs every exception its ``@bentoml.api`` routes raise through
``log_exception``: an ERROR with the full traceback, even for a 400 that names the
caller's mistake (``n`` below 1, a PNG that is not one). A log full of tracebacks for
clients' typos hides the ones that matter. This filter turns those records into a single
INFO line with the reason (``refused POST /generate (400): n: Input should be ...``) and
leaves every 5xx, and anything it does not recognise, exactly as BentoML logged it.
Remove it once BentoML logs client errors without tracebacks.
"""

from __future__ import annotations

import logging

from bentoml.exceptions import BentoMLException
from pydantic import ValidationError

BENTOML_LOGGER = "bentoml._internal.server.http_app"  # where log_exception logs


def _client_error(exc: BaseException) -> tuple[int, str] | None:
    """(status, one-line reason) when ``exc`` is answered with a 4xx, else None."""
    if isinstance(exc, ValidationError):
        reasons = [f"{'.'.join(str(part) for part in error['loc']) or 'body'}: {error['msg']}"
                   for error in exc.errors(include_url=False, include_context=False, include_input=False)]
        return 400, "; ".join(reasons)
    if isinstance(exc, BentoMLException) and 400 <= exc.error_code.value < 500:
        return exc.error_code.value, " ".join(str(exc).split())
    return None


class RefusalsWithoutTracebacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        refusal = _client_error(exc) if exc is not None else None
        if refusal is None:
            return True
        status, reason = refusal
        # "Exception on %s [%s]" % (path, method) is what log_exception passes
        path, method = (record.args + ("?", "?"))[:2] if isinstance(record.args, tuple) else ("?", "?")
        record.msg, record.args = "refused %s %s (%d): %s", (method, path, status, reason)
        record.exc_info = record.exc_text = None
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install() -> None:
    logger = logging.getLogger(BENTOML_LOGGER)
    if not any(isinstance(f, RefusalsWithoutTracebacks) for f in logger.filters):
        logger.addFilter(RefusalsWithoutTracebacks())
