"""Auth and bad input against a real `lethe serve`: every admin route wants the token;
every bad request gets a 4xx naming the problem, nothing stored changes, and the server
logs no traceback. Then what an outside probe of a running server tried (issue 14): paths
that would grow the metrics, names that would reach the file system, chunked bodies over
the limit, forged log lines, a forged Host, YAML alias bombs and deep nesting, unchecked
hyperparameters, classifier paths, ``?from=`` on multipart, npz bombs, audit actors, and
the bounded queue with its paging."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import socket
import stat
import threading
import time
import uuid
import zipfile
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import torch
import yaml
from PIL import Image

from conftest import snapshot
from serving import FINAL, LetheServer, wait_until

ZERO_DATA = {"name": "bad", "sets": [{"kind": "data", "files": ["negatives.png"]}]}
ADMIN_ROUTES = [
    ("POST", "/admin/redactions"), ("GET", "/admin/redactions"), ("GET", "/admin/redactions/abc"),
    ("POST", "/admin/redactions/abc/cancel"), ("GET", "/admin/redactions/abc/report"),
    ("POST", "/admin/models/digits-v1/activate"), ("GET", "/admin/nothing-here"),
]


MAX_UPLOAD_MB = 8  # small, so a chunked upload over it is cheap to send


@pytest.fixture(scope="module")
def server(quick_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("service-input")
    home = root / "home"
    shutil.copytree(quick_home, home)
    srv = LetheServer(home, root / "bentoml", workers=1, env={"LETHE_MAX_UPLOAD_MB": str(MAX_UPLOAD_MB)}).start()
    yield srv
    srv.stop()


def stored(home) -> dict[str, bytes]:
    """Every file the home holds (``snapshot``), less SQLite's shared-memory index, which a read changes."""
    return {name: data for name, data in snapshot(home).items() if not name.endswith("-shm")}


@contextlib.contextmanager
def refused_cleanly(server):
    """Around requests that must be refused: nothing stored changes, and the server logs
    neither a traceback nor an ERROR for them."""
    before = stored(server.home)
    start = server.log_path.stat().st_size
    yield
    time.sleep(0.3)  # the access log line comes after the answer
    after = stored(server.home)
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    assert not changed, f"a refused request changed {changed}"
    logged = server.log_path.read_bytes()[start:].decode(errors="replace")
    assert "Traceback" not in logged and "[ERROR]" not in logged, logged[-3000:]


def png(side: int, value: int = 0) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), value, np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def zip_bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("bomb.png", "w") as fh:
            for _ in range(20):
                fh.write(bytes(1 << 20))
    return buffer.getvalue()


def onnx_with_wrong_output(tmp_path) -> bytes:
    """An image-to-image 'classifier': (N, 1, 8, 8) in, (N, 1, 8, 8) out, not (N, classes)."""
    model = torch.nn.Conv2d(1, 1, 3, padding=1).eval()
    path = tmp_path / "wrong.onnx"
    torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False,
                      input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
    return path.read_bytes()


class RawReply:
    def __init__(self, raw: bytes):
        head, _, self.content = raw.partition(b"\r\n\r\n")
        self.status_code = int(head.split()[1])
        self.text = self.content.decode(errors="replace")

    def json(self):
        return json.loads(self.content)


def declare_2gb(server) -> RawReply:
    """Declare a 2 GB body, send 1 KB: the answer must come before the rest is read."""
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /admin/redactions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {server.auth['Authorization'].split()[1]}\r\n".encode()
            + f"Content-Length: {2 << 30}\r\nConnection: close\r\n\r\n".encode() + b"x" * 1024
        )
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    return RawReply(raw)


def finished_job(server) -> str:
    """Run a quick job to its end, watching its state every 50 ms: once validating (the
    gates, the attack check), it never goes back to running."""
    reply = server.submit({"name": "quick", "sets": [{"kind": "validity", "rule": {
        "type": "classifier_label", "classifier": "digits", "labels": [0]}}],
        "hyperparameters": {"epochs": 1}, "gates": {"eval_samples": 100}})
    assert reply.status_code == 202, reply.text
    job_id, seen = reply.json()["job_id"], []
    deadline = time.monotonic() + 900
    while not seen or seen[-1] not in FINAL:
        assert time.monotonic() < deadline, seen
        state_now = server.job(job_id)["state"]
        if not seen or seen[-1] != state_now:
            seen.append(state_now)
        time.sleep(0.05)
    assert "validating" in seen and seen.index("validating") > seen.index("running"), seen
    assert "running" not in seen[seen.index("validating"):], f"validating went back to running: {seen}"
    return job_id


def state(server) -> dict:
    """What must not change: jobs, versions, the active pointer, leftover uploads."""
    return {
        "jobs": [(j["id"], j["state"]) for j in server.client.get("/admin/redactions", headers=server.auth).json()["jobs"]],
        "models": server.client.get("/models").json(),
        "uploads": sorted(p.name for p in (server.home / "uploads").glob("*")) if (server.home / "uploads").exists() else [],
    }


def test_every_admin_route_needs_the_token(server):
    for method, path in ADMIN_ROUTES:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dGVzdA=="},
                        {"Authorization": "Bearer"}):
            reply = server.client.request(method, path, headers=headers)
            assert reply.status_code == 401, (method, path, headers, reply.status_code)
            assert "token" in reply.json()["error"]
    assert server.generate(n=2, seed=1).status_code == 200  # sampling stays open


BAD = {
    "malformed-json": (lambda s, t: s.client.post("/admin/redactions", content=b"{not json",
                       headers={**s.auth, "Content-Type": "application/json"}), 400, r"(?i)json|yaml|pars"),
    "unknown-kind": (lambda s, t: s.submit({"name": "x", "sets": [{"kind": "wishes"}]}), 400, r"kind"),
    "no-spec": (lambda s, t: s.client.post("/admin/redactions", files={"other": ("a.png", png(8))},
                headers=s.auth), 400, r"spec|not referenced"),
    "n-zero": (lambda s, t: s.generate(n=0), 400, r"greater than or equal to 1"),
    "n-too-many": (lambda s, t: s.generate(n=100_000), 400, r"less than or equal to 1024"),
    "seed-negative": (lambda s, t: s.generate(n=1, seed=-1), 400, r"seed"),
    "seed-text": (lambda s, t: s.generate(n=1, seed="7"), 400, r"seed"),
    "seed-float": (lambda s, t: s.generate(n=1, seed=1.5), 400, r"seed"),
    "unknown-version": (lambda s, t: s.generate(n=1, version="digits-v999"), 404, r"digits-v999"),
    "upload-not-an-image": (lambda s, t: s.submit(ZERO_DATA, {"negatives.png": b"hello, not a png"}), 400,
                            r"negatives\.png"),
    "png-wrong-size": (lambda s, t: s.submit(ZERO_DATA, {"negatives.png": png(16)}), 400, r"16"),
    "upload-not-referenced": (lambda s, t: s.submit({**ZERO_DATA, "sets": [{"kind": "data", "files": ["negatives.png"]}]},
                              {"negatives.png": png(8), "extra.png": png(8)}), 400, r"extra\.png"),
    "zip-bomb": (lambda s, t: s.submit({"name": "bomb", "sets": [{"kind": "data", "files": ["bomb.zip"]}]},
                 {"bomb.zip": zip_bomb()}), 400, r"zip bomb"),
    "huge-content-length": (lambda s, t: declare_2gb(s), 413, r"exceeds the limit"),
    "onnx-classifier-wrong-output": (
        lambda s, t: s.submit({"name": "onnx", "sets": [{"kind": "classifier", "classifier": "wrong.onnx",
                               "score": {"type": "one_minus_prob", "label": 0}, "tau": 0.5}]},
                              {"wrong.onnx": onnx_with_wrong_output(t)}), 400, r"wrong\.onnx.*shape|shape.*wrong\.onnx"),
    "activate-unknown-version": (lambda s, t: s.activate("digits-v999"), 404, r"digits-v999"),
    "upload-missing-with-another-uploaded": (
        lambda s, t: s.submit({"name": "miss", "sets": [{"kind": "data", "files": ["a.png"]}]}, {"b.png": png(8)}),
        400, r"'a\.png' was not uploaded with the request"),
    "33-files": (lambda s, t: s.submit(ZERO_DATA, {f"f{i}.png": png(8) for i in range(33)}), 400,
                 r"(?i)too many files"),
    "unknown-admin-route": (lambda s, t: s.client.get("/admin/nothing-here", headers=s.auth), 404, r"Not Found"),
    "wrong-method": (lambda s, t: s.client.delete("/admin/redactions", headers=s.auth), 405, r"Method Not Allowed"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_4xx_and_changes_nothing(server, case, tmp_path):
    send, status, pattern = BAD[case]
    before = state(server)
    with refused_cleanly(server):
        reply = send(server, tmp_path)
    assert reply.status_code == status, (reply.status_code, reply.text)
    body = reply.json()
    message = json.dumps(body)
    assert re.search(pattern, message), message
    assert str(server.home) not in message  # where the server keeps its files is its own
    assert state(server) == before


def settled_state(server) -> dict:
    """``state`` once it stops changing: just after a job's state is final, its promotion is
    still reaching the serving workers and the worker is still deleting its uploads."""
    previous, deadline = state(server), time.monotonic() + 60
    while True:
        time.sleep(0.5)
        current = state(server)
        if current == previous:
            return current
        assert time.monotonic() < deadline, (previous, current)
        previous = current


def test_cancel_of_a_finished_job_is_409(server):
    job_id = finished_job(server)
    before = settled_state(server)
    reply = server.client.post(f"/admin/redactions/{job_id}/cancel", headers=server.auth)
    assert reply.status_code == 409 and "nothing to cancel" in reply.json()["error"]
    assert state(server) == before


def test_a_refusal_is_one_log_line_not_a_traceback(server):
    """Client mistakes are logged as one INFO line with the reason; tracebacks stay for real faults."""
    start = server.log_path.stat().st_size
    assert server.generate(n=0).status_code == 400
    assert server.generate(n=1, version="digits-v999").status_code == 404
    assert server.client.post("/inpaint", json={"images": ["not base64"]}).status_code == 400
    wait_until(lambda: server.log_path.read_bytes()[start:].count(b"refused POST") >= 3, 10, "the refusals logged")
    logged = server.log_path.read_bytes()[start:].decode(errors="replace")
    assert "Traceback" not in logged and "[ERROR]" not in logged, logged
    assert "refused POST /generate (400): n: Input should be greater than or equal to 1" in logged, logged
    assert "refused POST /generate (404): version 'digits-v999' not found" in logged, logged
    assert "refused POST /inpaint (400): images:" in logged, logged


# --------------------------------------------------------------- without a token (issue 14)


def metric_endpoints(server) -> set[str]:
    return set(re.findall(r'endpoint="([^"]*)"', server.client.get("/metrics").text))


def raw_request(server, head: bytes, body_chunks=(), *, chunked: bool = False) -> RawReply:
    """Send a request as bytes (paths and headers no HTTP client would send), the body in
    chunks from a thread while the answer is read: a server may answer, and close, before
    the whole body is in."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head)

        def send_body() -> None:
            with contextlib.suppress(OSError):  # the server answered and closed: fine
                for chunk in body_chunks:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                if chunked:
                    sock.sendall(b"0\r\n\r\n")

        sender = threading.Thread(target=send_body)
        sender.start()
        raw = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                raw += chunk
        sender.join()
    return RawReply(raw)


def test_paths_no_route_serves_create_no_metric_series(server):
    """Item 1: the request metrics are labelled by route; a path no route serves is 'other'."""
    known_before = metric_endpoints(server)
    size_before = len(server.client.get("/metrics").content)
    with refused_cleanly(server):
        for i in range(200):
            assert server.client.get(f"/nope-{i}-" + "x" * 8000).status_code == 404
            assert server.client.get(f"/admin/redactions/{uuid.uuid4().hex}").status_code == 401
        for i in range(20):
            assert server.client.get(f"/admin/nope-{i}", headers=server.auth).status_code == 404
            for path in (b"/nope%0d%0aforged-" + str(i).encode(), b"/%ff%fe%00-" + str(i).encode()):
                reply = raw_request(server, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                assert reply.status_code == 404, reply.text
    labels = metric_endpoints(server)
    assert "other" in labels and "/admin/redactions/{job_id}" in labels, labels  # counted, by route
    assert all(label == "other" or re.fullmatch(r"(/[A-Za-z0-9_.{}-]*)+", label) for label in labels), labels
    assert not any("nope" in label or "forged" in label for label in labels), labels
    assert len(labels - known_before) <= 3, labels - known_before  # other, the two templates
    # 440 requests to 440 distinct paths added a few series, not 440 times a 8 KB label
    assert len(server.client.get("/metrics").content) - size_before < 30_000


LONG_VERSION = "digits-v" + "1" * 10**6
LONG_NAME_CASES = {
    "generate-version-1MB": (lambda s: s.generate(n=1, version=LONG_VERSION), 400),
    "grid-version-1MB": (lambda s: s.client.post("/grid", json={"n": 1, "version": LONG_VERSION}), 400),
    "inpaint-version-1MB": (lambda s: s.inpaint(["AAAA"], version=LONG_VERSION), 400),
    "generate-version-not-a-name": (lambda s: s.generate(n=1, version="../../../etc/passwd-v1"), 404),
    "generate-version-too-many-digits": (lambda s: s.generate(n=1, version="digits-v" + "1" * 60), 404),
    "activate-long-path": (lambda s: s.activate("digits-v" + "1" * 5000), 404),
    "activate-dot-dot": (lambda s: s.client.post("/admin/models/..%2F..%2Fx-v1/activate", headers=s.auth), 404),
    "from-long": (lambda s: s.client.post("/admin/redactions", params={"from": "d" * 5000}, json=ZERO_DATA,
                                          headers=s.auth), 404),
    "model-long": (lambda s: s.client.post("/admin/redactions", params={"model": "d" * 5000}, json=ZERO_DATA,
                                           headers=s.auth), 400),
    "job-id-long": (lambda s: s.client.get("/admin/redactions/" + "a" * 5000, headers=s.auth), 404),
    "data-file-long": (lambda s: s.submit({"name": "long", "sets": [{"kind": "data", "files": ["a" * 100_000]}]}), 400),
    "retain-file-long": (lambda s: s.client.post("/admin/redactions", params={"model": "digits-inpainter"}, json={
        "name": "long", "sets": [{"kind": "validity", "rule": {"type": "classifier_label", "classifier": "digits",
                                                                "labels": [0]}}],
        "hyperparameters": {"retain_files": ["a" * 100_000]}}, headers=s.auth), 400),
}


@pytest.mark.parametrize("case", list(LONG_NAME_CASES))
def test_names_are_checked_before_they_reach_the_file_system(server, case):
    """Item 2: a name breaking the registry's rule is refused, briefly, never made a path."""
    send, status = LONG_NAME_CASES[case]
    with refused_cleanly(server):
        reply = send(server)
    assert reply.status_code == status, (reply.status_code, reply.text[:500])
    assert isinstance(reply.json()["error"], str) and len(reply.content) < 2000, reply.text[:500]


@pytest.mark.parametrize("path", ["/generate", "/grid", "/inpaint", "/admin/redactions"])
def test_a_chunked_body_over_the_limit_is_413(server, path):
    """Item 3: a body sent without a length is counted as it arrives, on every route."""
    limit = MAX_UPLOAD_MB << 20 if path.startswith("/admin") else 1 << 20
    head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
            f"Authorization: {server.auth['Authorization']}\r\nConnection: close\r\n\r\n").encode()
    with refused_cleanly(server):
        reply = raw_request(server, head, (b"x" * 65536 for _ in range(limit // 65536 + 16)), chunked=True)
    assert reply.status_code == 413, reply.text
    assert reply.json() == {"error": f"request body exceeds the limit of {limit} bytes"}


def test_client_text_cannot_forge_a_log_line(server):
    """Item 4: CR/LF (and other control characters) from a client are logged escaped."""
    forged = b"2026-11-24T00:00:00+0000 [WARNING] [cli] forged"
    start = server.log_path.stat().st_size
    with refused_cleanly(server):
        for path in (b"/admin/audit%0d%0a", b"/nope%0a", b"/admin/redactions/x%0d%0a"):
            for auth in (b"", f"Authorization: {server.auth['Authorization']}\r\n".encode()):
                target = path + forged.replace(b" ", b"%20")
                reply = raw_request(server, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n" + auth + b"Connection: close\r\n\r\n")
                assert 400 <= reply.status_code < 500, reply.text
        assert server.generate(n=1, version="digits-v1\r\n" + forged.decode()).status_code == 404
    wait_until(lambda: server.log_path.read_bytes()[start:].count(b"forged") >= 7, 10, "the requests logged")
    logged = server.log_path.read_bytes()[start:]
    assert b"\r" not in logged, logged[-2000:]
    lines = logged.decode(errors="replace").splitlines()
    assert not [line for line in lines if line.startswith(forged.decode()[:20])], "a forged line in the log"
    assert any("\\r\\n2026-11-24T00:00:00+0000 [WARNING]" in line for line in lines), lines[-5:]


def test_a_redirect_never_names_the_host_a_client_sent(server):
    """Item 5: /admin -> /admin/ is a relative redirect, whatever the Host header says."""
    with refused_cleanly(server):
        for host in ("evil.example", "evil.example:8443", "127.0.0.1"):
            reply = server.client.get("/admin", headers={"Host": host}, follow_redirects=False)
            assert 300 <= reply.status_code < 400, reply.status_code
            assert reply.headers["location"] == "/admin/", reply.headers["location"]


# ------------------------------------------------------------------ with the token (issue 14)


def alias_bomb(width: int = 9, levels: int = 8) -> str:
    """A few hundred bytes of YAML whose aliases expand to width ** levels scalars."""
    text = ("name: bomb\nsets: [{kind: classifier, classifier: digits, score: {type: one_minus_prob, label: 0}}]\n"
            "hyperparameters:\n  l0: &l0 [" + ", ".join(["1"] * width) + "]\n")
    for level in range(1, levels):
        text += f"  l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]\n"
    return text


def nested_rule(depth: int) -> dict:
    rule = {"type": "classifier_label", "classifier": "digits", "labels": [0]}
    for _ in range(depth):
        rule = {"type": "any_of", "rules": [rule]}
    return {"name": "deep", "sets": [{"kind": "validity", "rule": rule}]}


def submit_text(server, text: str, how: str) -> httpx.Response:
    if how == "multipart":
        return server.client.post("/admin/redactions", files={"spec": (None, text, "application/yaml")},
                                  headers=server.auth)
    return server.client.post("/admin/redactions", content=text.encode(),
                              headers={**server.auth, "Content-Type": how})


HOSTILE_SPECS = {
    "alias-bomb-9^8-multipart": (lambda: alias_bomb(), "multipart", r"100,000 values once its aliases are expanded"),
    "alias-bomb-9^8-yaml-body": (lambda: alias_bomb(), "application/yaml", r"aliases are expanded"),
    "alias-bomb-wide-strings": (lambda: "a: &a " + "x" * 20_000 + "\nb: [" + ", ".join(["*a"] * 90) + "]\n",
                                "text/yaml", r"larger than 1,048,576 bytes once its aliases are expanded"),
    "alias-cycle": (lambda: "name: x\nsets: &s [{kind: data, files: *s}]\n", "multipart", r"cycle"),
    "too-many-aliases": (lambda: "a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]\n", "multipart", r"100 YAML aliases"),
    "any_of-126-deep": (lambda: json.dumps(nested_rule(126)), "application/json", r"more than 32 deep"),
    "any_of-126-deep-yaml": (lambda: yaml.safe_dump(nested_rule(126)), "multipart", r"more than 32 deep"),
    "json-lists-100000-deep": (lambda: "[" * 100_000 + "]" * 100_000, "application/json", r"more than 32 deep"),
    "yaml-flow-100000-deep": (lambda: "a: " + "[" * 100_000 + "]" * 100_000, "application/yaml", r"more than 32 deep"),
    "spec-over-1MiB": (lambda: json.dumps({**ZERO_DATA, "hyperparameters": {"pad": "x" * (1 << 20)}}),
                       "application/json", r"at most 1,048,576 are accepted"),
}


@pytest.mark.parametrize("case", list(HOSTILE_SPECS))
def test_a_spec_is_bounded_while_it_is_parsed(server, case):
    """Items 6 and 7: alias expansion, nesting and size are refused before anything is
    built or stored, in well under a second; the job list still answers quickly."""
    make, how, pattern = HOSTILE_SPECS[case]
    with refused_cleanly(server):
        started = time.monotonic()
        reply = submit_text(server, make(), how)
        took = time.monotonic() - started
    assert reply.status_code == 400, (reply.status_code, reply.text[:500])
    assert re.search(pattern, reply.json()["error"]), reply.text[:500]
    assert took < 5, f"refused after {took:.1f} s"
    listed = server.client.get("/admin/redactions", headers=server.auth)
    assert listed.status_code == 200 and listed.elapsed.total_seconds() < 5


HYPERPARAMETERS = {
    "epochs-text": ({"epochs": "abc"}, r"hyperparameters\.epochs: .*integer"),
    "epochs-zero": ({"epochs": 0}, r"hyperparameters\.epochs: .*greater than or equal to 1"),
    "unknown": ({"nonsense": 1}, r"hyperparameters\.nonsense: unknown hyperparameter for kong-classifier"),
    "samples_per_round-1e12": ({"samples_per_round": 1e12}, r"hyperparameters\.samples_per_round: .*less than"),
    "batch_size-1e9": ({"batch_size": 1e9}, r"hyperparameters\.batch_size: .*less than"),
    "lr-infinite": ({"lr": float("inf")}, r"hyperparameters\.lr"),
}


@pytest.mark.parametrize("case", list(HYPERPARAMETERS))
def test_hyperparameters_are_checked_before_queueing(server, case):
    """Item 8: against the method's model, with upper bounds."""
    hyperparameters, pattern = HYPERPARAMETERS[case]
    spec = {"name": "hp", "sets": [{"kind": "classifier", "classifier": "digits",
                                    "score": {"type": "one_minus_prob", "label": 0}}],
            "hyperparameters": hyperparameters}
    with refused_cleanly(server):
        reply = server.client.post("/admin/redactions", content=json.dumps(spec).encode(),
                                   headers={**server.auth, "Content-Type": "application/json"})
    assert reply.status_code == 400, reply.text
    assert re.search(pattern, reply.json()["error"]), reply.text


def test_a_classifier_is_a_name_never_a_path(server, tmp_path):
    """Item 9: only a registry classifier or an ONNX file uploaded with the request may be
    named; a path is refused the same way whether it exists on the server or not."""
    onnx = onnx_with_wrong_output(tmp_path)
    existing = str(server.home / "versions" / "digits-v1" / "generator.onnx")
    messages = {}
    with refused_cleanly(server):
        for name in ("../../../elsewhere/x.onnx", "../x.onnx", existing, "/nonexistent/x.onnx", "x.onnx/"):
            for rule in (False, True):
                where = {"kind": "classifier", "classifier": name, "score": {"type": "one_minus_prob", "label": 0}}
                if rule:
                    where = {"kind": "validity", "rule": {"type": "classifier_label", "classifier": name, "labels": [0]}}
                reply = server.submit({"name": "path", "sets": [where]}, {"x.onnx": onnx})
                assert reply.status_code == 400, reply.text
                assert "is not a classifier name" in reply.json()["error"], reply.text
                error = reply.json()["error"]  # "<field>: <the name> is not a classifier name: <the rule>"
                messages[(name, rule)] = (error.split(":")[0], error.split(" is not a classifier name")[1])
    # the same words for a path that exists on the server and one that does not (a set's, a rule's)
    assert len({text for (name, _), text in messages.items() if name.startswith("/")}) == 2, messages


def test_from_is_read_the_same_way_on_multipart_and_json(server):
    """Item 10: ?from= on a multipart submit is the parent, as on a JSON one."""
    spec = {"name": "from", "sets": [{"kind": "classifier", "classifier": "digits",
                                      "score": {"type": "one_minus_prob", "label": 0}}]}
    parts = {"spec": (None, json.dumps(spec), "application/json")}
    with refused_cleanly(server):
        for send in (
            lambda: server.client.post("/admin/redactions?from=nonexistent-v9", files=parts, headers=server.auth),
            lambda: server.client.post("/admin/redactions?from=nonexistent-v9", json=spec, headers=server.auth),
            lambda: server.client.post("/admin/redactions", files={**parts, "from": (None, "nonexistent-v9")},
                                       headers=server.auth),
        ):
            reply = send()
            assert reply.status_code == 404 and "'nonexistent-v9' not found" in reply.json()["error"], reply.text
        reply = server.client.post("/admin/redactions?from=digits-v1", files={**parts, "from": (None, "digits-v2")},
                                   headers=server.auth)
        assert reply.status_code == 400 and "send one" in reply.json()["error"], reply.text


def peak_rss(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), bytes."""
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_an_npz_bomb_is_refused_before_it_is_decompressed(server):
    """Item 11: 256 MiB of zeros in a 255 KB npz: refused by its compression ratio, and the
    serving worker's peak memory does not move."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=np.zeros((4096, 8192, 8), np.uint8))
    assert len(buffer.getvalue()) < 300_000
    worker, = server.serving_worker_pids()
    server.generate(n=1)  # whatever a first request allocates, before the peak is read
    peak = peak_rss(worker)
    with refused_cleanly(server):
        reply = server.submit({"name": "npz", "sets": [{"kind": "data", "files": ["zeros.npz"]}]},
                              {"zeros.npz": buffer.getvalue()})
    assert reply.status_code == 400, reply.text
    assert re.search(r"zeros\.npz: array 'images' expands [\d,]+x .*zip bomb", reply.json()["error"]), reply.text
    assert peak_rss(worker) - peak < 64 << 20, (peak, peak_rss(worker))


def test_one_token_is_one_actor_and_two_headers_are_refused(server):
    """Item 13: the header is parsed once; spacing and case of 'Bearer' do not change the
    actor; the actor is a keyed hash of the token, not a hash of the header."""
    token = server.auth["Authorization"].split()[1]
    with refused_cleanly(server):
        for method, path in ADMIN_ROUTES:
            for pair in ((f"Bearer {token}", "Bearer wrong"), ("Bearer wrong", f"Bearer {token}"),
                         (f"Bearer {token}", f"Bearer {token}")):
                reply = server.client.request(method, path, headers=[("Authorization", value) for value in pair])
                assert reply.status_code == 401 and "one Authorization header" in reply.json()["error"], reply.text
    active = server.client.get("/models").json()["models"][0]["active"]
    since = server.client.get("/admin/audit", params={"limit": 1}, headers=server.auth).json()["entries"]
    since_seq = since[0]["seq"] if since else 0
    for header in (f"Bearer {token}", f"bearer {token}", f"BEARER   {token}", f"  Bearer {token}  "):
        reply = raw_request(server, f"POST /admin/models/{active}/activate HTTP/1.1\r\nHost: x\r\n"
                                    f"Authorization:{header}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode())
        assert reply.status_code == 200, (header, reply.text)
    entries = server.client.get("/admin/audit", params={"since_seq": since_seq, "action": "activate"},
                                headers=server.auth).json()["entries"]
    assert len(entries) == 4 and len({e["actor"] for e in entries}) == 1, entries
    actor = entries[0]["actor"]
    assert re.fullmatch(r"token:[0-9a-f]{16}", actor), actor
    assert actor != "token:" + hashlib.sha256(f"Bearer {token}".encode()).hexdigest()[:12]  # the old, unkeyed one
    key = server.home / "audit.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_bytes()) == 32


def test_cancelled_jobs_leave_no_uploads(server):
    """Item 14: a job that ends without a served version takes its uploads with it (here
    cancelled by the admin API while queued, and by the job worker while running)."""
    uploads = server.home / "uploads"
    long_data = {"name": "long", "sets": [{"kind": "data", "files": ["negatives.png"]}],
                 "hyperparameters": {"epochs": 500, "patience": 500}}
    first = server.submit(long_data, {"negatives.png": png(8, 255)}).json()["job_id"]
    second = server.submit(long_data, {"negatives.png": png(8, 255)}).json()["job_id"]
    wait_until(lambda: server.job(first)["state"] == "running", 120, "the first job running")
    folders = {job_id: server.job(job_id)["uploads_dir"] for job_id in (first, second)}
    assert all(os.path.isdir(folder) for folder in folders.values()), folders
    assert server.job(second)["state"] == "queued"
    for job_id in (second, first):
        assert server.client.post(f"/admin/redactions/{job_id}/cancel", headers=server.auth).status_code in (200, 202)
    assert not os.path.exists(folders[second])  # cancelled while queued: at once
    assert server.wait_job(first, timeout=120)["state"] == "cancelled"
    wait_until(lambda: not os.path.exists(folders[first]), 30, "the running job's uploads deleted")
    assert server.job(first)["spec"]["sets"][0]["files"] == ["negatives.png"]  # the record keeps the names
    assert sorted(p.name for p in uploads.iterdir()) == []


def test_only_the_serving_workers_load_torch(server):
    """`lethe serve` and BentoML's arbiter (which imports the service module to read its
    definition) never load torch: each held 550 MB and 2 s of CPU when they did. The serving
    workers do (seeded latents), and each job in its own process."""
    workers = set(server.serving_worker_pids())
    assert len(workers) == server.workers
    seen = set()
    for process in server.processes():
        command = " ".join(process.cmdline())
        role = next((r for r in ("lethe serve", "bentoml serve", "_bentoml_impl.worker") if r in command), None)
        if role is None:
            continue  # the job worker (its own test: tests/test_cli.py) and any job's process
        loads_torch = any(Path(m.path).name.startswith("libtorch") for m in process.memory_maps())
        assert loads_torch == (process.pid in workers), (command, loads_torch)
        seen.add(role)
    assert seen == {"lethe serve", "bentoml serve", "_bentoml_impl.worker"}


# --------------------------------------------- the queue, paging and how `lethe serve` starts


@pytest.fixture(scope="module")
def queued(quick_home, tmp_path_factory):
    """`lethe serve` as it starts by default (no --host, no LETHE_ADMIN_TOKEN), with no job
    worker, so that jobs stay queued, and room for 3 of them."""
    root = tmp_path_factory.mktemp("queued")
    home = root / "home"
    shutil.copytree(quick_home, home)
    srv = LetheServer(home, root / "bentoml", workers=1, job_worker=False, host=None,
                      env={"LETHE_ADMIN_TOKEN": "", "LETHE_MAX_QUEUED_JOBS": "3"}).start()
    yield srv
    srv.stop()


def test_lethe_serve_listens_on_loopback_and_keeps_its_token_in_a_file(queued):
    token_file = queued.home / "admin-token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    log = queued.log_path.read_text(errors="replace")
    assert f"the admin token is in {token_file}" in log
    assert token not in log
    listening = {conn.laddr for process in queued.processes() for conn in process.net_connections("tcp")
                 if conn.status == psutil.CONN_LISTEN and conn.laddr.port == queued.port}
    assert listening and {address.ip for address in listening} == {"127.0.0.1"}, listening
    assert queued.client.get("/admin/redactions", headers=queued.auth).status_code == 200


def test_the_queue_is_bounded_and_the_job_list_is_paged(queued):
    spec = {**ZERO_DATA, "name": "queued"}
    ids = []
    for _ in range(3):
        reply = queued.submit(spec, {"negatives.png": png(8, 255)})
        assert reply.status_code == 202, reply.text
        ids.append(reply.json()["job_id"])
    with refused_cleanly(queued):
        full = queued.submit(spec, {"negatives.png": png(8, 255)})
    assert full.status_code == 429, full.text
    assert "LETHE_MAX_QUEUED_JOBS=3" in full.json()["error"]

    listed = queued.client.get("/admin/redactions", params={"limit": 2}, headers=queued.auth).json()
    assert [job["id"] for job in listed["jobs"]] == ids[::-1][:2]
    rest = queued.client.get(listed["next"], headers=queued.auth).json()
    assert [job["id"] for job in rest["jobs"]] == ids[:1] and "next" not in rest
    queued_only = queued.client.get("/admin/redactions", params={"state": "queued"}, headers=queued.auth).json()
    assert [job["id"] for job in queued_only["jobs"]] == ids[::-1]
    with refused_cleanly(queued):
        for params, status, pattern in (({"limit": 0}, 400, "limit"), ({"limit": "ten"}, 400, "limit"),
                                        ({"limit": 1001}, 400, "limit"), ({"state": "sleeping"}, 400, "state"),
                                        ({"before": "nope"}, 404, "'nope' not found"), ({"page": 2}, 400, "page")):
            reply = queued.client.get("/admin/redactions", params=params, headers=queued.auth)
            assert reply.status_code == status and pattern in reply.json()["error"], (params, reply.text)

    uploads = queued.job(ids[0])["uploads_dir"]
    assert os.path.isdir(uploads)
    assert queued.client.post(f"/admin/redactions/{ids[0]}/cancel", headers=queued.auth).status_code == 200
    assert not os.path.exists(uploads)
    assert queued.submit(spec, {"negatives.png": png(8, 255)}).status_code == 202  # room again
