"""Bring your own generator (``lethe import`` and ``POST /admin/models``): a Fashion-MNIST
DCGAN trained by a plain PyTorch script, a user's own architecture published as a
``lethe.models`` entry point, and ONNX graphs from both of torch's exporters, each imported, served and
redacted like a bootstrapped model; and the imports that must be refused, by name, with
nothing stored.

One server (for the module) on a copy of ``quick_home`` (the digits domain and its models)
merged with ``fashion_home`` (the Fashion-MNIST domain), with the test plugin package
(``tests/plugins/lethe-test-models``) on its PYTHONPATH."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from clirun import lethe as run_lethe
from conftest import snapshot
from homes import merge_homes
from serving import LetheServer, decode
from unlearning.cli import main as lethe
from unlearning.export import OnnxGenerator, check_onnx_parity
from unlearning.models import DCGANConfig, Discriminator, Generator, save_model
from unlearning.registry import Registry
from unlearning.runtime import latents

TESTS = Path(__file__).parent
PLUGIN_PACKAGE = TESTS / "plugins" / "lethe-test-models"
BYO_DCGAN = TESTS / "fixtures" / "byo-fashion-dcgan"  # python tests/train_dcgan.py tests/fixtures/byo-fashion-dcgan
FORGET_TROUSERS = {
    "name": "forget-trousers", "method": "kong-classifier",
    "sets": [{"kind": "classifier", "classifier": "fashion", "score": {"type": "one_minus_prob", "label": "Trouser"}}],
    "hyperparameters": {"epochs": 6, "monitor_samples": 1000},
    # the judge's limit (1 %), the FID ratio (2) and the class balance (0.5) are the service's defaults;
    # the guide's limit is the judge's (the default 0.1 % is for the digits' 2,000 samples)
    "gates": {"eval_samples": 3000, "max_invalidity": 0.01, "attack_starts": 0},
}
FORGET_ZERO_QUICKLY = {  # Kong Alg. 3 on digits, one epoch, permissive gates: the edit and its export are the point
    "name": "onnx-forget-zero", "method": "kong-classifier",
    "sets": [{"kind": "classifier", "classifier": "digits", "score": {"type": "one_minus_prob", "label": 0},
              "tau": 0.5}],
    "hyperparameters": {"epochs": 1, "monitor_samples": 200},
    "gates": {"eval_samples": 200, "max_invalidity": 1.0, "max_fid_ratio": 1e6, "min_class_share_ratio": 0.0,
              "attack_starts": 8},
}


# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def plugin_dir(tmp_path_factory):
    """The test plugin package, installed: its module and a ``.dist-info`` carrying the
    entry points its pyproject.toml declares, in a folder on sys.path here and on the
    server's PYTHONPATH (no pip, no network, nothing left in the venv)."""
    folder = tmp_path_factory.mktemp("plugin")
    project = tomllib.loads((PLUGIN_PACKAGE / "pyproject.toml").read_text())["project"]
    shutil.copy(PLUGIN_PACKAGE / "lethe_test_models.py", folder)
    info = folder / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in points.items())
        for group, points in project["entry-points"].items()))
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    yield folder
    sys.path.remove(str(folder))
    sys.modules.pop("lethe_test_models", None)
    importlib.invalidate_caches()


@pytest.fixture(scope="module")
def home(quick_home, fashion_home, tmp_path_factory) -> Path:
    target = tmp_path_factory.mktemp("import") / "home"
    shutil.copytree(quick_home, target)
    return merge_homes(target, fashion_home)


@pytest.fixture(scope="module")
def server(home, plugin_dir, tmp_path_factory):
    path = os.pathsep.join(p for p in (str(plugin_dir), os.environ.get("PYTHONPATH")) if p)
    srv = LetheServer(home, tmp_path_factory.mktemp("bentoml") / "bentoml", workers=1,
                      env={"PYTHONPATH": path, "LETHE_MAX_UPLOAD_MB": "4"}).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def dcgan_folder(tmp_path_factory) -> Path:
    """The Fashion-MNIST DCGAN that tests/train_dcgan.py wrote with its defaults (committed:
    training it takes half an hour; ``test_the_training_script_writes_what_is_committed`` runs it)."""
    out = tmp_path_factory.mktemp("dcgan") / "trained"
    shutil.copytree(BYO_DCGAN, out)
    return out


@pytest.fixture
def cli_home(home, monkeypatch) -> Path:
    monkeypatch.setenv("LETHE_HOME", str(home))
    return home


def upload(server: LetheServer, folder: Path, model: str, domain: str, **fields: str):
    files = {p.name: (p.name, p.read_bytes(), "application/octet-stream") for p in sorted(folder.iterdir())}
    return server.client.post("/admin/models", data={"model": model, "domain": domain, **fields}, files=files,
                              headers=server.auth, timeout=180)


def submit(server: LetheServer, spec: dict, model: str) -> dict:
    reply = server.client.post("/admin/redactions", params={"model": model}, headers=server.auth,
                               files={"spec": (None, json.dumps(spec), "application/json")})
    assert reply.status_code == 202, reply.text
    return server.wait_job(reply.json()["job_id"])


def served(server: LetheServer, model: str, n: int, seed: int) -> tuple[str, list[str]]:
    reply = server.generate(n=n, seed=seed, model=model)
    assert reply.status_code == 200, reply.text
    return reply.json()["model_version"], reply.json()["images"]


def quantised(images: torch.Tensor) -> torch.Tensor:
    """What a PNG of ``images`` holds, back in [-1, 1] (as ``unlearning.data.files.png_bytes`` rounds)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


# --------------------------------------------------------------- a DCGAN trained elsewhere


def test_the_training_script_writes_what_is_committed(tmp_path):
    """The committed weights are the script's: a short run (one epoch of 640 images) writes
    the same files, kinds, configs, tensor names and shapes (the committed ones are its
    default run)."""
    out = tmp_path / "short"
    subprocess.run([sys.executable, str(TESTS / "train_dcgan.py"), str(out), "--epochs", "1", "--images", "640"],
                   check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300, capture_output=True)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in BYO_DCGAN.iterdir())
    for stem in ("generator", "discriminator"):
        assert json.loads((out / f"{stem}.json").read_text()) == json.loads((BYO_DCGAN / f"{stem}.json").read_text())
        short, committed = load_file(str(out / f"{stem}.safetensors")), load_file(str(BYO_DCGAN / f"{stem}.safetensors"))
        assert {k: v.shape for k, v in short.items()} == {k: v.shape for k, v in committed.items()}


def test_a_plain_pytorch_dcgan_is_imported_served_redacted_and_rolled_back(server, dcgan_folder, cli_home):
    registry = Registry(cli_home)
    done = run_lethe(cli_home, "import", "fashion-byo", "--domain", "fashion-mnist", dcgan_folder)  # the program
    assert done.returncode == 0, done.stderr
    assert "imported fashion-byo-v1 (domain fashion-mnist): generator dcgan-generator (safetensors), " \
           "discriminator dcgan-discriminator (safetensors)" in done.stdout
    manifest = registry.get("fashion-byo-v1")
    assert registry.active("fashion-byo") == "fashion-byo-v1" and manifest.status == "promoted"
    assert manifest.domain == "fashion-mnist" and manifest.metrics["onnx_parity"] <= 1e-4
    quality = manifest.metrics["quality"]
    assert quality["extractor"] == "judge:fashion-mnist" and quality["samples"] == 10_000 and quality["fid"] > 0
    assert {"generator.onnx", "generator.safetensors", "discriminator.safetensors"} <= set(manifest.files)

    # the same folder over HTTP: another model, the same weights
    reply = upload(server, dcgan_folder, "fashion-http", "fashion-mnist")
    assert reply.status_code == 201, reply.text
    body = reply.json()
    assert body["version"] == "fashion-http-v1" and body["active"] \
        and body["quality"]["fid"] == pytest.approx(quality["fid"])
    audit = server.client.get("/admin/audit", params={"action": "import"}, headers=server.auth).json()["entries"]
    assert {e["version"] for e in audit} == {"fashion-byo-v1", "fashion-http-v1"}

    # served bit-exact for a seed: same bytes every time and from both imports, and the
    # script's own PyTorch model's images (up to the PNG's rounding of ONNX Runtime's floats)
    version, first = served(server, "fashion-byo", 16, 5)
    assert version == "fashion-byo-v1"
    assert served(server, "fashion-byo", 16, 5)[1] == first
    assert served(server, "fashion-http", 16, 5)[1] == first
    sys.path.insert(0, str(TESTS))
    try:
        from train_dcgan import build
    finally:
        sys.path.remove(str(TESTS))
    script_model, _, latent = build("fashion-mnist")
    script_model.load_state_dict(load_file(str(dcgan_folder / "generator.safetensors")))
    with torch.no_grad():
        expected = quantised(script_model.eval()(latents(16, latent, 5)))
    assert expected.shape == (16, 1, 28, 28) and (decode(first) - expected).abs().max() <= 1 / 127.5 + 1e-6
    listed = {m["model"]: m for m in server.client.get("/models").json()["models"]}
    assert listed["fashion-byo"]["domain"] == "fashion-mnist" and listed["fashion-byo"]["active"] == "fashion-byo-v1"

    # forget the trousers: every gate passes by the domain's judge
    job = submit(server, FORGET_TROUSERS, "fashion-byo")
    gates = {g["name"]: g for g in job["metrics"]["gates"]}
    before, after = job["metrics"]["before"], job["metrics"]["after"]
    print(json.dumps({"judge": [before["judge_invalidity"], after["judge_invalidity"]],
                      "guide": [before["invalidity"], after["invalidity"]],
                      "fid": [before["filtered_fid"], after["fid"]], "balance": gates["class_balance"]["value"]}))
    assert job["state"] == "promoted", json.dumps(job["metrics"], indent=1)[:3000]
    assert {"invalidity", "judge_invalidity", "fid_ratio", "class_balance", "onnx_parity"} <= set(gates)
    assert all(g["passed"] for g in gates.values())
    assert after["judged_by"]["judge_invalidity"] == "judge:fashion-mnist"
    assert before["judge_invalidity"] >= 0.05 and after["judge_invalidity"] <= 0.01
    server.wait_serving("fashion-byo-v2", timeout=10, model="fashion-byo")

    # and rolled back: the imported version is served again, the same bytes
    assert server.activate("fashion-byo-v1").status_code == 200
    server.wait_serving("fashion-byo-v1", timeout=10, model="fashion-byo")
    assert served(server, "fashion-byo", 16, 5)[1] == first


# ----------------------------------------------------------------- a user's own architecture


def train_plugin_generator(folder: Path) -> Path:
    """The plugin's MLPGenerator as the decoder of a small VAE on the 1,797 digits (plain
    PyTorch: a few seconds), saved as its kind names it."""
    from sklearn.datasets import load_digits

    from lethe_test_models import MLPGenerator, MLPGeneratorConfig

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny MLP: a second thread only adds synchronisation
    torch.manual_seed(0)
    images = torch.from_numpy(load_digits().images.astype(np.float32) / 8.0 - 1.0).unsqueeze(1)
    decoder = MLPGenerator(MLPGeneratorConfig(latent_dim=8, hidden=128))
    encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 128), torch.nn.SiLU(), torch.nn.Linear(128, 16))
    optimiser = torch.optim.Adam([*decoder.parameters(), *encoder.parameters()], lr=2e-3)
    for _ in range(40):
        for batch in torch.randperm(len(images)).split(64):
            x = images[batch]
            mean, log_var = encoder(x).chunk(2, dim=1)
            z = mean + torch.randn_like(mean) * (0.5 * log_var).exp()
            loss = ((decoder(z) - x) ** 2).flatten(1).sum(1).mean() * 4 \
                + 0.5 * (mean ** 2 + log_var.exp() - 1 - log_var).sum(1).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    torch.set_num_threads(threads)
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in decoder.eval().state_dict().items()}, str(folder / "generator.safetensors"))
    (folder / "generator.json").write_text(json.dumps({"kind": MLPGenerator.kind, "config": decoder.config.model_dump()}))
    return folder


def test_a_plugin_architecture_is_imported_served_and_redacted_without_data(server, plugin_dir, cli_home, tmp_path):
    registry = Registry(cli_home)
    folder = train_plugin_generator(tmp_path / "plugin-model")
    reply = upload(server, folder, "digits-mlp", "digits")
    assert reply.status_code == 201, reply.text
    assert reply.json()["import"]["components"]["generator"]["source"] == "plugin lethe-test-models 0.1"
    version, images = served(server, "digits-mlp", 256, 31)
    assert version == "digits-mlp-v1"
    module = registry.load_generator("digits-mlp-v1")
    assert type(module).__name__ == "MLPGenerator"
    with torch.no_grad():
        assert (decode(images) - quantised(module(latents(256, 8, 31)))).abs().max() <= 1 / 127.5 + 1e-6

    # it has no discriminator: a method that needs one says so
    refused = server.client.post("/admin/redactions", params={"model": "digits-mlp"}, headers=server.auth,
                                 files={"spec": (None, json.dumps(FORGET_ZERO_QUICKLY), "application/json")})
    assert refused.status_code == 400 and "has none" in refused.json()["error"] \
        and "discriminator.safetensors" in refused.json()["error"]

    # a person marks the zeros among the 256 samples they saw (the guide stands in for them)
    guide = registry.load_classifier("digits")
    with torch.no_grad():
        zeros = (guide(decode(images)).argmax(1) == 0).nonzero().flatten().tolist()
    assert 5 <= len(zeros) <= 100
    spec = {"name": "mlp-forget-zero", "method": "feedback",
            "sets": [{"kind": "feedback", "marked": {"seed": 31, "n": 256, "indices": zeros}}],
            "hyperparameters": {"steps": 300, "check_every": 100, "monitor_samples": 500},
            "gates": {"eval_samples": 1000, "max_invalidity": 1.0, "max_fid_ratio": 1e6, "min_class_share_ratio": 0.0,
                      "attack_starts": 8}}
    job = submit(server, spec, "digits-mlp")
    assert job["state"] == "promoted", job
    before, after = job["metrics"]["before"], job["metrics"]["after"]
    assert after["invalidity"] < before["invalidity"] / 2, (before["invalidity"], after["invalidity"])
    server.wait_serving("digits-mlp-v2", timeout=10, model="digits-mlp")
    assert type(registry.load_generator("digits-mlp-v2")).__name__ == "MLPGenerator"


def test_a_vae_with_its_encoder_and_an_inpainter_are_imported_as_files(server, cli_home, tmp_path, capsys):
    """Lethe's other families from their files, as another installation would hand them over."""
    registry = Registry(cli_home)
    for source, model, files in (("digits-vae-v1", "vae-again", ("generator", "encoder")),
                                 ("digits-inpainter-v1", "inpainter-again", ("inpainter",))):
        folder = tmp_path / model
        folder.mkdir()
        for stem in files:
            for suffix in (".safetensors", ".json"):
                shutil.copy(registry.file_path(source, stem + suffix), folder / (stem + suffix))
        assert lethe(["import", model, "--domain", "digits", str(folder), "--no-activate"]) == 0
        assert "not activated" in capsys.readouterr().out and registry.active(model) is None
        manifest = registry.get(f"{model}-v1")
        assert manifest.files[f"{files[0]}.safetensors"] == registry.get(source).files[f"{files[0]}.safetensors"]
        assert manifest.image_to_image == (model == "inpainter-again")
    assert server.activate("inpainter-again-v1").status_code == 200
    images = torch.full((2, 1, 8, 8), -1.0)
    version, restored = server.restored(images, model="inpainter-again")
    assert version == "inpainter-again-v1" and restored.shape == (2, 1, 8, 8)


# ------------------------------------------------------------------------------- ONNX graphs


def export_onnx(module: torch.nn.Module, example: torch.Tensor, path: Path, *, dynamo: bool) -> Path:
    """As a user would: torch.onnx with a dynamic batch, default opset, one file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module.eval(), (example,), str(path), dynamo=True, external_data=False, verbose=False,
                              dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        else:
            torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, input_names=["input"],
                              dynamic_axes={"input": {0: "batch"}})
    return path


def test_onnx_graphs_from_both_exporters_are_imported_and_edited_by_kong(server, cli_home, tmp_path, capsys):
    registry = Registry(cli_home)
    generator, discriminator = registry.load_generator("digits-v1"), registry.load_discriminator("digits-v1")
    folders = {}
    for exporter in ("dynamo", "torchscript"):
        folder = tmp_path / exporter
        export_onnx(generator, torch.zeros(2, generator.latent_dim), folder / "generator.onnx",
                    dynamo=exporter == "dynamo")
        export_onnx(discriminator, torch.zeros(2, 1, 8, 8), folder / "discriminator.onnx", dynamo=exporter == "dynamo")
        folders[exporter] = folder
    assert lethe(["import", "onnx-dynamo", "--domain", "digits", str(folders["dynamo"])]) == 0
    assert "generator onnx-generator (onnx), discriminator onnx-discriminator (onnx)" in capsys.readouterr().out
    reply = upload(server, folders["torchscript"], "onnx-ts", "digits")
    assert reply.status_code == 201, reply.text
    rewrites = registry.get("onnx-dynamo-v1").metrics["import"]["components"]["generator"]["rewrites"]
    assert any("allowzero" in r for r in rewrites) and any("opset 20 -> 18" in r for r in rewrites)
    # Lethe's own served graph (ConvTranspose rewritten to Conv + DepthToSpace) imports too
    (tmp_path / "served").mkdir()
    shutil.copy(registry.file_path("digits-v1", "generator.onnx"), tmp_path / "served" / "generator.onnx")
    assert lethe(["import", "digits-own-onnx", "--domain", "digits", str(tmp_path / "served")]) == 0

    with torch.no_grad():
        expected = quantised(generator(latents(32, generator.latent_dim, 3)))
    for model in ("onnx-dynamo", "onnx-ts", "digits-own-onnx"):
        version, images = served(server, model, 32, 3)
        assert version == f"{model}-v1" and (decode(images) - expected).abs().max() <= 1 / 127.5 + 1e-6

    job = submit(server, FORGET_ZERO_QUICKLY, "onnx-dynamo")
    assert job["state"] == "promoted", job
    parity = next(g for g in job["metrics"]["gates"] if g["name"] == "onnx_parity")
    assert parity["passed"] and parity["value"] <= 1e-4
    edited = registry.get("onnx-dynamo-v2")
    assert {"generator.graph.onnx", "discriminator.graph.onnx", "discriminator.safetensors"} <= set(edited.files)
    module = registry.load_generator(edited.version)
    assert type(module).__name__ == "OnnxGraphGenerator"
    assert check_onnx_parity(module, registry.file_path(edited.version, "generator.onnx")) <= 1e-4
    z = latents(64, generator.latent_dim, 0)
    with torch.no_grad():
        assert (module(z) - registry.load_generator("onnx-dynamo-v1")(z)).abs().max() > 0.01  # edited
    assert OnnxGenerator(registry.file_path(edited.version, "generator.onnx")).sample(4, 0).shape == (4, 1, 8, 8)


# ---------------------------------------------------------------------------- bad imports


def tiny_dcgan(folder: Path, *, resolution: int = 8, discriminator: bool = True) -> Path:
    torch.manual_seed(0)
    config = DCGANConfig(resolution=resolution, channels=1, latent_dim=8, width=8)
    save_model(Generator(config), folder, "generator")
    if discriminator:
        save_model(Discriminator(config), folder, "discriminator")
    return folder


def onnx_graph(folder: Path, *, activation: str = "Tanh") -> Path:
    """z [batch, 8] -> MatMul -> ``activation`` -> Reshape [-1, 1, 8, 8], written by hand."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).normal(0, 3, (8, 64)).astype(np.float32), "w")
    shape = numpy_helper.from_array(np.array([-1, 1, 8, 8], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["z", "w"], ["h"]), helper.make_node(activation, ["h"], ["a"]),
         helper.make_node("Reshape", ["a", "shape"], ["images"])],
        "g", [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 1, 8, 8])], [weight, shape])
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(folder / "generator.onnx"))
    return folder


def _weights_of_another_width(folder: Path) -> None:
    tiny_dcgan(folder)
    meta = json.loads((folder / "generator.json").read_text())
    meta["config"]["width"] = 16
    (folder / "generator.json").write_text(json.dumps(meta))


def _kind(kind: str):
    def build(folder: Path) -> None:
        tiny_dcgan(folder, discriminator=False)
        meta = json.loads((folder / "generator.json").read_text())
        (folder / "generator.json").write_text(json.dumps({**meta, "kind": kind}))
    return build


def _nan_weights(folder: Path) -> None:
    tiny_dcgan(folder)
    state = load_file(str(folder / "generator.safetensors"))
    state["project.0.weight"][0, 0] = float("nan")
    save_file(state, str(folder / "generator.safetensors"))


def _external_data(folder: Path) -> None:
    onnx_graph(folder)
    (folder / "generator.onnx.data").write_bytes(b"\0" * 64)


# name, how the folder is made, the error's words, HTTP status (None: CLI only), model, domain
BAD = [
    ("weights-not-fitting", _weights_of_another_width,
     r"generator.safetensors: the weights do not fit the config: shape of project.0.weight is \[64, 8\], "
     r"the model's \[128, 8\]", None, "bad", "digits"),
    ("unknown-kind", _kind("stylegan9"), r"unknown model kind 'stylegan9'.*lethe-test-mlp", None, "bad", "digits"),
    ("entry-point-that-does-not-load", _kind("lethe-test-broken"),
     r"entry point 'lethe_test_models:NoSuchClass' cannot be loaded", None, "bad", "digits"),
    ("a-discriminator-as-generator", _kind("dcgan-discriminator"), r"kind 'dcgan-discriminator' is not a generator",
     None, "bad", "digits"),
    ("image-shape-not-the-domains", lambda f: tiny_dcgan(f, resolution=16),
     r"makes images of shape \[1, 1, 16, 16\] from 1 latents; domain 'digits' wants \[1, 1, 8, 8\]", None, "bad",
     "digits"),
    ("pixels-outside-minus-one-to-one", lambda f: onnx_graph(f, activation="Relu"),
     r"generator.onnx: makes pixels from 0 to \d", None, "bad", "digits"),
    ("nan-weights", _nan_weights, r"tensor 'project.0.weight' holds NaN", 400, "bad", "digits"),
    ("unconvertible-onnx-operator", lambda f: onnx_graph(f, activation="Mish"),
     r"generator.onnx: operator Mish at opset 18 cannot be converted to PyTorch by onnx2torch", 400, "bad", "digits"),
    ("onnx-external-data", _external_data, r"generator.onnx.data: ONNX external data is not accepted", 400, "bad",
     "digits"),
    ("config-without-weights", lambda f: (tiny_dcgan(f), (f / "generator.safetensors").unlink()),
     r"generator.json came without generator.safetensors", 400, "bad", "digits"),
    ("a-taken-name", tiny_dcgan, r"model name 'digits' is taken", 409, "digits", "digits"),
    ("an-unknown-domain", tiny_dcgan, r"domain 'cats' not found; known domains: digits", 404, "bad",
     "cats"),
]


def _registry_state(home: Path) -> dict[str, bytes]:
    return {k: v for k, v in snapshot(home).items() if k.split("/")[0] in ("versions", "active", "classifiers")}


@pytest.mark.parametrize("name,build,words,status,model,domain", BAD, ids=[row[0] for row in BAD])
def test_a_bad_import_is_refused_by_name_and_stores_nothing(server, cli_home, tmp_path, capsys, name, build, words,
                                                            status, model, domain):
    import re

    folder = tmp_path / "upload"
    folder.mkdir()
    build(folder)
    before = _registry_state(cli_home)
    assert lethe(["import", model, "--domain", domain, str(folder)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("lethe: error: ") and re.search(words, error), error
    if status is not None:
        reply = upload(server, folder, model, domain)
        assert reply.status_code == status and re.search(words, reply.json()["error"]), reply.text
    assert _registry_state(cli_home) == before
    assert not [p for p in (cli_home / "uploads").glob(".tmp-*-import-*")]


def test_an_upload_over_the_size_limit_is_refused(server, cli_home, tmp_path):
    folder = onnx_graph(tmp_path / "big")
    (folder / "generator.onnx").write_bytes((folder / "generator.onnx").read_bytes() + b"\0" * (5 << 20))
    before = _registry_state(cli_home)
    reply = upload(server, folder, "too-big", "digits")
    assert reply.status_code == 413 and "exceeds the limit" in reply.json()["error"]
    assert _registry_state(cli_home) == before
