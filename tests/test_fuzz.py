"""Fuzzing a running `lethe serve` through its two OpenAPI documents with schemathesis:
BentoML's ``/docs.json`` (``/generate``, ``/grid``, ``/inpaint`` and the probes) and
``/admin/openapi.json`` (``/models`` and the admin API with a valid token, specs as JSON,
YAML and multipart; see ``service/openapi.py``); then hostile YAML specs (anchors and
aliases, alias bombs, deep nesting, tags, fragments inside a valid spec).

Cases that follow the schemas and cases that break them, derandomized and bounded
(``EXAMPLES`` per document and mode). Every request must be answered within
``REQUEST_TIMEOUT_S`` (no hang), never with a 5xx, and every refusal must say what was
wrong, without a traceback (as JSON: ``{"error": "..."}``, whichever route). Afterwards
the service still serves the same version, nothing it stored is damaged, and its log
holds no traceback."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
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
    if document.startswith("/admin"):  # with the token: every admin operation got past the auth
        admin = {label for label in operations if " /admin/" in label}
        authorised = {label for label, status in answers if " /admin/" in label and status != 401}
        assert admin and authorised == admin, f"operations never authorised: {admin - authorised}\n{report}"
        assert any(status == 200 for label, status in answers if label == "GET /admin/redactions"), report
    assert sum(answers.values()) >= EXAMPLES, report  # it did run its cases
    assert any(isinstance(status, int) and 400 <= status < 500 for _, status in answers), report

    # afterwards: still serving the same version, every stored version intact
    assert server.client.get("/readyz").status_code == 200
    assert server.generate(n=1, seed=0).json()["model_version"] == serving
    for manifest in registry.list_versions():
        registry.verify(manifest.version)
    assert "Traceback" not in server.log_path.read_text(errors="replace")


# ------------------------------------------------------------------------ hostile YAML specs

YAML_EXAMPLES = 150
SKELETON = ("name: fuzzed\nsets: [{kind: classifier, classifier: digits, score: {type: one_minus_prob, label: 0}}]\n"
            "gates: {eval_samples: 100}\n")

_scalars = st.one_of(
    st.integers(-10**12, 10**12).map(str),
    st.sampled_from(["null", "~", "true", "1e12", "-.inf", ".nan", "0x1F", "'x'", '"\\u0000"', "!!binary aGk=",
                     "!!python/object/apply:os.system [id]", "!!set {a, b}", "!!timestamp 2026-11-24", "digits",
                     "../../x.onnx", "*undefined", "<<: *a0"]),
    st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12).map(json.dumps),
)


@st.composite
def _fragments(draw, depth: int = 0) -> str:
    """A YAML node in flow style, perhaps anchored (&aN) or an alias to an earlier anchor."""
    kind = draw(st.sampled_from(["scalar", "scalar", "alias", "list", "map"] if depth < 6 else ["scalar"]))
    if kind == "scalar":
        node = draw(_scalars)
    elif kind == "alias":
        node = f"*a{draw(st.integers(0, 5))}"
    elif kind == "list":
        node = "[" + ", ".join(draw(st.lists(_fragments(depth + 1), max_size=4))) + "]"
    else:
        keys = draw(st.lists(st.sampled_from(["a", "b", "epochs", "type", "rules", "kind", "lr", "<<"]), max_size=4))
        node = "{" + ", ".join(f"{key}: {draw(_fragments(depth + 1))}" for key in keys) + "}"
    if kind != "alias" and draw(st.booleans()):
        node = f"&a{draw(st.integers(0, 5))} {node}"
    return node


def _bomb(width: int, levels: int) -> str:
    text = SKELETON + "hyperparameters:\n  l0: &l0 [" + ", ".join(["1"] * width) + "]\n"
    for level in range(1, levels):
        text += f"  l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]\n"
    return text


YAML_SPECS = st.one_of(
    _fragments(),  # the whole document
    _fragments().map(lambda node: SKELETON.replace("gates:", f"hyperparameters: {node}\ngates:")),
    _fragments().map(lambda node: SKELETON.replace("sets: [", f"sets: [{{kind: validity, rule: {node}}}, ")),
    _fragments().map(lambda node: SKELETON + f"method: {node}\n"),
    st.builds(_bomb, st.integers(2, 12), st.integers(2, 10)),
    # a spec that may well be valid: its hyperparameters at and around their bounds, some aliased
    st.builds(lambda epochs, batch, lr, alias: SKELETON + f"hyperparameters: {{epochs: &e {epochs}, patience: "
              f"{'*e' if alias else 4}, batch_size: {batch}, lr: {lr}, monitor_samples: 200}}\n",
              st.integers(-1, 10_001), st.sampled_from([1, 2, 64, 4096, 4097, "1e9"]),
              st.sampled_from(["2e-4", "0", "1.0", ".inf", "abc"]), st.booleans()),
    st.integers(20, 5000).map(lambda depth: SKELETON + "hyperparameters: {x: " + "[" * depth + "]" * depth + "}\n"),
)


def test_hostile_yaml_specs_are_refused_cleanly(server):
    registry = Registry(server.home)
    serving = server.generate(n=1, seed=0).json()["model_version"]
    answers: Counter = Counter()
    problems: list[str] = []

    @settings(max_examples=YAML_EXAMPLES, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(text=YAML_SPECS, multipart=st.booleans())
    def run(text: str, multipart: bool) -> None:
        started = time.monotonic()
        try:
            if multipart:
                reply = server.client.post("/admin/redactions", files={"spec": (None, text, "application/yaml")},
                                           headers=server.auth, timeout=REQUEST_TIMEOUT_S)
            else:
                reply = server.client.post("/admin/redactions", content=text.encode(), timeout=REQUEST_TIMEOUT_S,
                                           headers={**server.auth, "Content-Type": "application/yaml"})
        except httpx.TimeoutException:
            problems.append(f"no answer within {REQUEST_TIMEOUT_S:g} s to {text[:200]!r}")
            return
        answers[reply.status_code] += 1
        took = time.monotonic() - started
        if reply.status_code >= 500 or took > 10:
            problems.append(f"{reply.status_code} after {took:.1f} s to {text[:200]!r}: {reply.text[:300]}")
        elif reply.status_code >= 400:
            body = reply.json()
            if not (isinstance(body, dict) and isinstance(body.get("error"), str)) or "Traceback" in reply.text:
                problems.append(f"a refusal not shaped {{'error': ...}} to {text[:200]!r}: {reply.text[:300]}")

    run()
    print(f"hostile YAML: {sorted(answers.items())}")
    assert not problems, "\n".join(problems[:20])
    assert sum(answers.values()) == YAML_EXAMPLES and answers[400] >= YAML_EXAMPLES // 2, answers
    assert server.client.get("/readyz").status_code == 200
    assert server.generate(n=1, seed=0).json()["model_version"] == serving
    for manifest in registry.list_versions():
        registry.verify(manifest.version)
    assert "Traceback" not in server.log_path.read_text(errors="replace")
