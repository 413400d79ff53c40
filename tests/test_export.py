"""ONNX export: registry -> ONNX -> ONNX Runtime reproduces the PyTorch samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from unlearning.errors import LetheError
from unlearning.export import OnnxGenerator, ParityError, check_onnx_parity, export_generator_onnx
from unlearning.models import DCGANConfig, Discriminator, Generator, save_model
from unlearning.registry import Registry
from unlearning.runtime import latents


def _generator(config: DCGANConfig, seed: int) -> Generator:
    """Untrained, but with non-trivial BatchNorm running statistics."""
    torch.manual_seed(seed)
    generator = Generator(config).train()
    with torch.no_grad():
        for _ in range(3):
            generator(torch.randn(32, config.latent_dim) * 1.5 + 0.3)
    return generator.eval()


def _cpu_only() -> dict:
    return {"providers": ["CPUExecutionProvider"], "intra_op_threads": 2}


@pytest.mark.parametrize("resolution,channels", [(8, 1), (32, 3)])
def test_registry_onnx_round_trip_reproduces_pytorch_samples(tmp_path, resolution, channels):
    config = DCGANConfig(resolution=resolution, channels=channels)
    generator = _generator(config, seed=0)
    registry = Registry(tmp_path / "lethe")

    def write(folder: Path) -> None:
        save_model(generator, folder, "generator")
        save_model(Discriminator(config), folder, "discriminator")
        export_generator_onnx(generator, folder / "generator.onnx")

    manifest = registry.create_version("digits", write)
    assert "generator.onnx" in manifest.files
    assert not [p for p in registry.version_dir(manifest.version).iterdir() if p.name.startswith(".")]

    loaded = registry.load_generator(manifest.version)
    onnx_path = registry.file_path(manifest.version, "generator.onnx")
    assert check_onnx_parity(loaded, onnx_path, n=256, seed=7) <= 1e-4

    session = OnnxGenerator(onnx_path, **_cpu_only())
    assert session.latent_dim == config.latent_dim
    images = session.sample(256, seed=7)
    assert images.shape == (256, channels, resolution, resolution) and images.dtype == np.float32
    with torch.no_grad():
        expected = loaded(latents(256, config.latent_dim, 7)).numpy()
    assert np.abs(images - expected).max() <= 1e-4
    assert images.min() >= -1.0 and images.max() <= 1.0

    # batch 1, and the same seed gives the same images whatever the batching
    one = session.generate(latents(1, config.latent_dim, 7).numpy())
    assert one.shape == (1, channels, resolution, resolution)
    assert np.abs(one - expected[:1]).max() <= 1e-4
    assert np.abs(session.sample(256, seed=7, batch_size=100) - images).max() <= 1e-5


def test_parity_error_for_onnx_of_another_generator(tmp_path):
    config = DCGANConfig()
    path = export_generator_onnx(_generator(config, seed=0), tmp_path / "a.onnx")
    other = _generator(config, seed=1)
    with pytest.raises(ParityError, match="differs from the PyTorch model"):
        check_onnx_parity(other, path)
    assert issubclass(ParityError, LetheError)

    wider = _generator(DCGANConfig(latent_dim=64), seed=0)
    with pytest.raises(ParityError, match="latent_dim"):
        check_onnx_parity(wider, path)


def test_export_does_not_touch_the_callers_module(tmp_path):
    generator = Generator(DCGANConfig()).train()
    before = {k: v.clone() for k, v in generator.state_dict().items()}
    path = export_generator_onnx(generator, tmp_path / "sub" / "g.onnx")
    assert path == tmp_path / "sub" / "g.onnx" and path.is_file()
    assert sorted(p.name for p in path.parent.iterdir()) == ["g.onnx"]  # one self-contained file
    assert generator.training
    assert all(p.requires_grad for p in generator.parameters())
    assert all(torch.equal(before[k], v) for k, v in generator.state_dict().items())
    assert check_onnx_parity(generator, path) <= 1e-4  # parity is against eval mode


def test_onnx_generator_input_checks(tmp_path):
    path = export_generator_onnx(_generator(DCGANConfig(latent_dim=16), seed=0), tmp_path / "g.onnx")
    session = OnnxGenerator(path, **_cpu_only())
    assert session.latent_dim == 16 and session.providers == ["CPUExecutionProvider"]
    with pytest.raises(LetheError, match=r"\[n >= 1, 16\]"):
        session.generate(np.zeros((2, 8), np.float32))
    with pytest.raises(LetheError, match="does not exist"):
        OnnxGenerator(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(LetheError, match="cannot load"):
        OnnxGenerator(tmp_path / "bad.onnx")
    with pytest.raises(LetheError, match="not available"):
        OnnxGenerator(path, providers=["NoSuchExecutionProvider"])
    default = OnnxGenerator(path)  # CUDA first when present, CPU always
    assert default.providers[-1] == "CPUExecutionProvider"
    assert np.array_equal(default.sample(3, seed=1).shape, (3, 1, 8, 8))


class _ScalesByItsInput(torch.nn.Module):
    """A generator that divides by a number read out of its input (``.item()``): a
    TorchScript trace bakes in the example's value, torch.export keeps it in the graph."""

    latent_dim = 4

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(4, 64)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.linear(z) / (1 + z.abs().max().item())).view(-1, 1, 8, 8)


def test_a_graph_the_trace_got_wrong_is_exported_again_by_torch_export(tmp_path, caplog):
    generator = _ScalesByItsInput().eval()
    with caplog.at_level("WARNING", logger="unlearning.export"):
        path = export_generator_onnx(generator, tmp_path / "g.onnx")
    assert "TorchScript ONNX export failed" in caplog.text and "3 other inputs" in caplog.text
    session = OnnxGenerator(path, **_cpu_only())
    for n in (1, 5, 64):
        with torch.no_grad():
            expected = generator(latents(n, 4, 2)).numpy()
        assert np.abs(session.sample(n, seed=2) - expected).max() <= 1e-5
    assert check_onnx_parity(generator, path) <= 1e-5
