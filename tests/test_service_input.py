"""Auth and bad input against a real `lethe serve`: every admin route wants the token;
every bad request gets a 4xx naming the problem, and nothing stored changes."""

from __future__ import annotations

import io
import json
import shutil
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from serving import LetheServer, wait_until

ZERO_DATA = {"name": "bad", "sets": [{"kind": "data", "files": ["negatives.png"]}]}
ADMIN_ROUTES = [
    ("POST", "/admin/redactions"), ("GET", "/admin/redactions"), ("GET", "/admin/redactions/abc"),
    ("POST", "/admin/redactions/abc/cancel"), ("GET", "/admin/redactions/abc/report"),
    ("POST", "/admin/models/digits-v1/activate"), ("GET", "/admin/nothing-here"),
]


@pytest.fixture(scope="module")
def server(quick_home, tmp_path_factory):
    root = tmp_path_factory.mktemp("service-input")
    home = root / "home"
    shutil.copytree(quick_home, home)
    srv = LetheServer(home, root / "bentoml", workers=1).start()
    yield srv
    srv.stop()


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
    reply = server.submit({"name": "quick", "sets": [{"kind": "validity", "rule": {
        "type": "classifier_label", "classifier": "digits", "labels": [0]}}],
        "hyperparameters": {"epochs": 1}, "gates": {"eval_samples": 100}})
    assert reply.status_code == 202, reply.text
    return server.wait_job(reply.json()["job_id"])["id"]


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
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_4xx_and_changes_nothing(server, case, tmp_path):
    send, status, pattern = BAD[case]
    before = state(server)
    reply = send(server, tmp_path)
    assert reply.status_code == status, (reply.status_code, reply.text)
    body = reply.json()
    message = json.dumps(body)
    assert pytest.importorskip("re").search(pattern, message), message
    assert state(server) == before


def test_cancel_of_a_finished_job_is_409(server):
    job_id = finished_job(server)
    before = state(server)
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
