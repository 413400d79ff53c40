"""Fuzzing a running `lethe serve` through its two OpenAPI documents with schemathesis:
BentoML's ``/docs.json`` (``/generate``, ``/grid``, ``/inpaint`` and the probes) and
``/admin/openapi.json`` (``/models`` and the admin API, see ``service/openapi.py``).

Cases that follow the schemas and cases that break them, derandomized and bounded
(``EXAMPLES`` per document and mode). Every request must be answered within
``REQUEST_TIMEOUT_S`` (no hang), never with a 5xx, and every refusal must say what was
wrong, without a traceback (as JSON: ``{"error": "..."}``, whichever route). Afterwards
the service still serves the same version and nothing it stored is damaged."""

from __future__ import annotations

import json
import shutil
from collections import Counter

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from serving import LetheServer
from unlearning.registry import Registry

pytestmark = pytest.mark.slow

EXAMPLES = 250
REQUEST_TIMEOUT_S = 30.0
DOCUMENTS = ("/docs.json", "/admin/openapi.json")


@pytest.fixture(scope="module")
def server(quick_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    home = root / "home"
    shutil.copytree(quick_home, home)
    # no job worker: a valid spec the fuzzer happens to submit is queued, never trained
    srv = LetheServer(home, root / "bentoml", workers=1, job_worker=False).start()
    yield srv
    srv.stop()


def refusal_problem(response: requests.Response) -> str | None:
    """What is wrong with an answer, if anything."""
    text = response.content.decode("utf-8", errors="replace")
    if response.status_code >= 500:
        return f"server error: {text[:300]!r}"
    if response.status_code >= 400:
        if "Traceback" in text or 'File "' in text:
            return f"a traceback in the answer: {text[:300]!r}"
        if not text.strip():
            return "an empty refusal: it should say what was wrong"
        content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis: lists of values
        if content_type.startswith("application/json"):
            body = json.loads(text)
            if not (isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"]):
                return f'a refusal not shaped {{"error": "..."}}: {text[:300]!r}'
    return None


def fuzz(server: LetheServer, document: str, mode: GenerationMode) -> tuple[Counter, list[str]]:
    schema = schemathesis.openapi.from_url(server.url + document, headers=server.auth, timeout=30)
    answers: Counter = Counter()
    problems: list[str] = []

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=schema.as_strategy(generation_mode=mode))
    def run(case) -> None:
        label = f"{case.method} {case.path}"
        try:
            response = case.call(base_url=server.url, headers=server.auth, timeout=REQUEST_TIMEOUT_S)
        except requests.Timeout:
            problems.append(f"{label}: no answer within {REQUEST_TIMEOUT_S:g} s")
            return
        except requests.ConnectionError as exc:
            problems.append(f"{label}: the connection failed ({exc})")
            return
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, UnicodeError, ValueError):
            answers[(label, "not sendable")] += 1  # the HTTP client refused to send it
            return
        answers[(label, response.status_code)] += 1
        problem = refusal_problem(response)
        if problem:
            problems.append(f"{label} -> {response.status_code}: {problem}")

    run()
    return answers, problems


@pytest.mark.parametrize("document", DOCUMENTS)
def test_fuzzing_finds_no_server_error_and_no_hang(server, document):
    registry = Registry(server.home)
    serving = server.generate(n=1, seed=0).json()["model_version"]
    answers: Counter = Counter()
    problems: list[str] = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        seen, found = fuzz(server, document, mode)
        answers.update(seen)
        problems.extend(found)

    report = "\n".join(f"  {label} -> {status}: {count}" for (label, status), count in sorted(
        answers.items(), key=str))
    print(f"{document}: {sum(answers.values())} requests\n{report}")  # shown with -s or -rP
    assert not problems, "\n".join(problems[:20]) + f"\nanswers:\n{report}"
    operations = {label for label, _ in answers}
    assert len(operations) >= 4, f"the fuzzer reached too few operations:\n{report}"
    assert sum(answers.values()) >= EXAMPLES, report  # it did run its cases
    assert any(isinstance(status, int) and 400 <= status < 500 for _, status in answers), report

    # afterwards: still serving the same version, every stored version intact
    assert server.client.get("/readyz").status_code == 200
    assert server.generate(n=1, seed=0).json()["model_version"] == serving
    for manifest in registry.list_versions():
        registry.verify(manifest.version)
