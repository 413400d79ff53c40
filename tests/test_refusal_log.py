"""The refusal filter on BentoML's exception logger: 4xx become one line, 5xx keep their traceback."""

from __future__ import annotations

import logging
from http import HTTPStatus

import pytest
from bentoml.exceptions import BentoMLException, InvalidArgument
from pydantic import BaseModel, Field, ValidationError

from service.refusal_log import BENTOML_LOGGER, install


class Body(BaseModel):
    n: int = Field(ge=1)


@pytest.fixture
def records():
    install()
    install()  # twice, as two imports of the service would: still one filter
    logger = logging.getLogger(BENTOML_LOGGER)
    assert sum(type(f).__name__ == "RefusalsWithoutTracebacks" for f in logger.filters) == 1
    caught: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            caught.append(record)

    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    yield caught
    logger.removeHandler(handler)


def log_from_handler(exc: BaseException) -> None:
    """What bentoml's log_exception does inside its except block."""
    try:
        raise exc
    except BaseException:
        logging.getLogger(BENTOML_LOGGER).error("Exception on %s [%s]", "/generate", "POST", exc_info=True)


def test_a_validation_error_becomes_one_info_line(records):
    with pytest.raises(ValidationError) as caught:
        Body.model_validate({"n": 0})
    log_from_handler(caught.value)
    (record,) = records
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == "refused POST /generate (400): n: Input should be greater than or equal to 1"


def test_a_4xx_bentoml_error_becomes_one_info_line(records):
    log_from_handler(InvalidArgument("images: every item must be\n a base64-encoded PNG"))
    (record,) = records
    assert record.levelno == logging.INFO and record.exc_info is None
    assert record.getMessage() == "refused POST /generate (400): images: every item must be a base64-encoded PNG"


@pytest.mark.parametrize("exc", [BentoMLException("boom", error_code=HTTPStatus.INTERNAL_SERVER_ERROR),
                                 RuntimeError("a real fault")])
def test_a_fault_keeps_its_error_and_traceback(records, exc):
    log_from_handler(exc)
    (record,) = records
    assert record.levelno == logging.ERROR and record.exc_info[1] is exc
    assert record.getMessage() == "Exception on /generate [POST]"
