"""ONNX export of generators and image-to-image models, parity checks against PyTorch,
and their ONNX Runtime sessions.

A generator's graph has one input ``z`` (float32, ``[batch, latent_dim]``, batch dynamic)
and one output ``images`` (float32 in [-1, 1], NCHW). ``OnnxGenerator.sample(n, seed)``
draws the same latents as ``runtime.latents`` so it reproduces the PyTorch samples for that
seed. An inpainter's graph maps ``images`` (NCHW in [-1, 1]) to ``restored``: the
degradation T is inside the graph, so the service only forwards pixels.
"""

from __future__ import annotations

import copy
import logging
import os
import uuid
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unlearning.models.inpainter import Inpainter, Restorer
from unlearning.models.subpixel import with_subpixel_convolutions
from unlearning.errors import LetheError
from unlearning.runtime import latents

log = logging.getLogger(__name__)

INPUT_NAME = "z"
OUTPUT_NAME = "images"
I2I_INPUT_NAME = "images"
I2I_OUTPUT_NAME = "restored"


class ParityError(LetheError):
    """An ONNX graph does not reproduce its PyTorch generator."""


def _latent_dim(generator: nn.Module) -> int:
    dim = getattr(generator, "latent_dim", None)
    if dim is None:
        dim = getattr(getattr(generator, "config", None), "latent_dim", None)
    if not isinstance(dim, int):
        raise LetheError(f"{type(generator).__name__} does not say its latent_dim")
    return dim


def _cpu_eval_copy(generator: nn.Module) -> nn.Module:
    """A CPU, eval-mode, grad-free copy: the caller's module is never touched."""
    model = copy.deepcopy(generator).to("cpu").eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path, opset: int, names: tuple[str, str]) -> None:
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=[names[0]],
        output_names=[names[1]],
        opset_version=opset,
        dynamo=True,
        external_data=False,  # one self-contained file (one checksum in the registry)
        dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),  # by position: any argument name
        verbose=False,
    )


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, opset: int, names: tuple[str, str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        # what a trace may have got wrong, _check_other_inputs finds (and falls back)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[names[0]],
            output_names=[names[1]],
            opset_version=opset,
            dynamo=False,
            dynamic_axes={names[0]: {0: "batch"}, names[1]: {0: "batch"}},
        )


# TorchScript first: for these convolutional nets it writes the same function (outputs
# bit-identical under ONNX Runtime, as fast) in 0.04 s where torch.export-based export
# takes 1.3-6.2 s and imports its whole stack, once per job. torch.export is the fallback, for
# modules tracing cannot take (or, in a later torch, once the TorchScript exporter is gone).
EXPORTERS = (("TorchScript", _export_torchscript), ("torch.export", _export_dynamo))


def _export(model: nn.Module, example: torch.Tensor, path: Path, opset: int, names: tuple[str, str], check) -> Path:
    """Export with the first exporter whose graph passes ``check(file)`` and computes what
    ``model`` does on inputs other than the example (a trace bakes in the example's batch
    size, or a value read out of it). Written under a temporary name and moved into place,
    so ``path`` is either absent or complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex}-{path.name}")
    try:
        for attempt, (exporter, export) in enumerate(EXPORTERS, start=1):
            try:
                export(model, example, tmp, opset, names)
                check(tmp)
                _check_other_inputs(model, example, tmp)
                break
            except Exception as exc:  # the exporters raise many kinds; the next one decides
                tmp.unlink(missing_ok=True)
                if attempt == len(EXPORTERS):
                    raise
                log.warning("%s ONNX export failed (%s); trying the next exporter", exporter, exc)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@torch.no_grad()
def _check_other_inputs(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    """ONNX Runtime on ``path`` matches ``model`` (loosely: the parity check comes later) on
    3 seeded inputs in [-1, 1]: neither the batch nor the example's values are baked in."""
    x = torch.rand(3, *example.shape[1:], generator=torch.Generator().manual_seed(0)) * 2 - 1
    got = _OnnxSession(path, providers=["CPUExecutionProvider"])._run(x.numpy())
    _max_difference(got, model(x).numpy(), path, "3 other inputs", atol=1e-3)


def _check_graph(path: Path, names: tuple[str, str], shape: tuple[int, ...]) -> None:
    """The file is valid ONNX with one input ``names[0]`` of ``[batch, *shape]`` (batch
    symbolic) and one output ``names[1]``."""
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if [i.name for i in inputs] != [names[0]] or [o.name for o in proto.graph.output] != [names[1]]:
        raise LetheError(f"{path}: exported graph has unexpected inputs/outputs")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 1 + len(shape) or not dims[0].dim_param or tuple(d.dim_value for d in dims[1:]) != shape:
        raise LetheError(f"{path}: exported input is not [batch, {', '.join(map(str, shape))}] with a dynamic batch")


def export_generator_onnx(generator: nn.Module, path: Path, *, opset: int = 18) -> Path:
    """Export ``generator`` (on CPU, in eval mode, as a copy) to ``path``; return ``path``."""
    # same function, faster graph: ONNX Runtime's ConvTranspose is its slowest kernel here
    model = with_subpixel_convolutions(_cpu_eval_copy(generator)).eval()
    latent_dim = _latent_dim(model)
    example = torch.zeros(2, latent_dim)  # batch 2: keeps the exporter from specialising on 1
    names = (INPUT_NAME, OUTPUT_NAME)
    return _export(model, example, path, opset, names, lambda f: _check_graph(f, names, (latent_dim,)))


def export_inpainter_onnx(inpainter: Inpainter, path: Path, *, opset: int = 18) -> Path:
    """Export x -> h(T(x)) of ``inpainter`` (a CPU eval copy) to ``path``; return ``path``."""
    model = Restorer(_cpu_eval_copy(inpainter)).eval()
    shape = inpainter.image_shape
    names = (I2I_INPUT_NAME, I2I_OUTPUT_NAME)
    return _export(model, torch.zeros(2, *shape), path, opset, names, lambda f: _check_graph(f, names, shape))


def _session_options(intra_op_threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if intra_op_threads is None:
        intra_op_threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    options.intra_op_num_threads = max(1, int(intra_op_threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


class _OnnxSession:
    """One ONNX Runtime session (CUDA when available, else CPU) of a graph with one input."""

    what = "ONNX model"

    def __init__(
        self,
        path: Path,
        *,
        intra_op_threads: int | None = None,
        providers: list[str] | None = None,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise LetheError(f"{self.what} {str(self.path)!r} does not exist")
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        else:
            missing = [p for p in providers if p not in available]
            if missing:
                raise LetheError(
                    f"ONNX Runtime providers {missing} are not available here (available: {available})"
                )
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=_session_options(intra_op_threads), providers=providers
            )
        except Exception as exc:
            raise LetheError(f"{self.path}: ONNX Runtime cannot load it ({exc})") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise LetheError(f"{self.path}: not a {self.what} graph (want one input)")
        self._input = inputs[0].name
        self._input_shape = inputs[0].shape
        self._output = self.session.get_outputs()[0].name

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def _run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run([self._output], {self._input: x})[0]


class OnnxGenerator(_OnnxSession):
    """An exported generator: latents -> images."""

    what = "ONNX generator"

    def __init__(self, path: Path, **kwargs):
        super().__init__(path, **kwargs)
        shape = self._input_shape
        if len(shape) != 2 or not isinstance(shape[1], int):
            raise LetheError(f"{self.path}: not a generator graph (want one input [batch, latent_dim])")
        self.latent_dim: int = shape[1]

    def generate(self, z: np.ndarray) -> np.ndarray:
        """Images (float32 NCHW in [-1, 1]) for latents ``z`` of shape [n, latent_dim]."""
        z = np.ascontiguousarray(z, dtype=np.float32)
        if z.ndim != 2 or z.shape[1] != self.latent_dim or z.shape[0] < 1:
            raise LetheError(f"latents must have shape [n >= 1, {self.latent_dim}], got {list(z.shape)}")
        return self._run(z)

    def sample(self, n: int, seed: int, *, batch_size: int = 256) -> np.ndarray:
        """The images for ``(seed, n)``: same latents as ``runtime.latents``, so the same as
        the PyTorch generator's samples for that seed."""
        if n < 1:
            raise LetheError(f"n must be at least 1, got {n}")
        z = latents(n, self.latent_dim, seed).numpy()
        parts = [self.generate(z[i : i + batch_size]) for i in range(0, n, batch_size)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def warm_up(self, batch: int) -> None:
        self.sample(batch, seed=0)


class OnnxInpainter(_OnnxSession):
    """An exported image-to-image model: images -> restored images (T applied inside)."""

    what = "ONNX inpainter"

    def __init__(self, path: Path, **kwargs):
        super().__init__(path, **kwargs)
        shape = self._input_shape
        if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]):
            raise LetheError(f"{self.path}: not an image-to-image graph (want one input [batch, C, H, W])")
        self.image_shape: tuple[int, int, int] = tuple(shape[1:])

    def restore(self, images: np.ndarray, *, batch_size: int = 256) -> np.ndarray:
        """h(T(x)) for images (float32 NCHW in [-1, 1]) of the model's shape."""
        images = np.ascontiguousarray(images, dtype=np.float32)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.image_shape or len(images) < 1:
            raise LetheError(f"images must have shape [n >= 1, {', '.join(map(str, self.image_shape))}], "
                             f"got {list(images.shape)}")
        parts = [self._run(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def warm_up(self, batch: int) -> None:
        self.restore(np.zeros((batch, *self.image_shape), np.float32))


def check_onnx_parity(
    generator: nn.Module,
    onnx_path: Path,
    *,
    n: int = 256,
    seed: int = 0,
    atol: float = 1e-4,
) -> float:
    """Max abs difference between PyTorch (CPU) and ONNX Runtime (CPU) on
    ``latents(n, latent_dim, seed)``; ParityError if it exceeds ``atol``."""
    model = _cpu_eval_copy(generator)
    latent_dim = _latent_dim(model)
    session = OnnxGenerator(onnx_path, providers=["CPUExecutionProvider"])
    if session.latent_dim != latent_dim:
        raise ParityError(
            f"{onnx_path}: ONNX graph takes latent_dim {session.latent_dim}, the generator {latent_dim}"
        )
    z = latents(n, latent_dim, seed)
    with torch.no_grad():
        expected = model(z).numpy()
    return _max_difference(session.generate(z.numpy()), expected, onnx_path, f"{n} latents, seed {seed}", atol)


def _max_difference(got: np.ndarray, expected: np.ndarray, onnx_path: Path, what: str, atol: float) -> float:
    if got.shape != expected.shape:
        raise ParityError(f"{onnx_path}: ONNX output shape {list(got.shape)} != PyTorch {list(expected.shape)}")
    diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
    if not np.isfinite(diff) or diff > atol:
        raise ParityError(f"{onnx_path}: ONNX output differs from the PyTorch model by {diff:.3g} "
                          f"(max allowed {atol:g}) on {what}")
    return diff


def check_inpainter_parity(
    inpainter: Inpainter, onnx_path: Path, images: torch.Tensor, *, atol: float = 1e-4,
) -> float:
    """Max abs difference between PyTorch and ONNX Runtime (both CPU) restoring ``images``;
    ParityError if it exceeds ``atol``."""
    model = _cpu_eval_copy(inpainter)
    session = OnnxInpainter(onnx_path, providers=["CPUExecutionProvider"])
    x = images.detach().to("cpu", torch.float32)
    with torch.no_grad():
        expected = model.restore(x).numpy()
    return _max_difference(session.restore(x.numpy()), expected, onnx_path, f"{len(x)} images", atol)
