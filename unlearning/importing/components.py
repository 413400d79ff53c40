"""Building each imported component as a module: safetensors + JSON through the models'
one save/load convention (Lethe's own kinds and ``lethe.models`` plugins alike), ONNX
through the exact rewrites and onnx2torch. Every message names the uploaded file, never
where it was staged."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from unlearning.errors import LetheError
from unlearning.importing.onnx_rewrite import PreparedGraph, prepare
from unlearning.importing.sources import MAX_CONFIG_BYTES, ComponentFiles
from unlearning.models.io import MODEL_KINDS, build_model, load_weights, read_weights
from unlearning.models.onnx_graph import OnnxGraphConfig, OnnxGraphDiscriminator, OnnxGraphGenerator
from unlearning.models.plugins import GeneratorModel, model_plugins

# which of Lethe's own kinds each stem takes (a plugin kind is judged by what it does)
ROLE_KINDS: dict[str, tuple[str, ...]] = {
    "generator": ("dcgan-generator", "vae-decoder"),
    "discriminator": ("dcgan-discriminator",),
    "encoder": ("vae-encoder",),
    "inpainter": ("inpainter",),
}


@dataclass
class Component:
    stem: str
    module: nn.Module
    kind: str
    source: str  # "safetensors", "plugin <dist> <version>" or "onnx"
    graph: PreparedGraph | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "source": self.source, **self.details}
        if self.graph is not None:
            out.update(opset=self.graph.opset, rewrites=self.graph.rewrites)
        return out


def build_component(files: ComponentFiles) -> Component:
    return _from_onnx(files) if files.is_onnx else _from_safetensors(files)


def _from_safetensors(files: ComponentFiles) -> Component:
    config_name, weights_name = files.config.name, files.weights.name  # type: ignore[union-attr]
    if files.config.stat().st_size > MAX_CONFIG_BYTES:  # type: ignore[union-attr]
        raise LetheError(f"{config_name}: larger than {MAX_CONFIG_BYTES // 1024} KiB; a model config is a few lines")
    try:
        meta = json.loads(files.config.read_text())  # type: ignore[union-attr]
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LetheError(f"{config_name}: not JSON ({exc})") from None
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if isinstance(kind, str) and kind in MODEL_KINDS and kind not in ROLE_KINDS[files.stem]:
        takes = ", ".join(ROLE_KINDS[files.stem])
        raise LetheError(f"{config_name}: kind {kind!r} is not a {files.stem} (a {files.stem} is {takes}"
                         + (", a lethe.models plugin, or a graph given as generator.onnx" if files.stem == "generator"
                            else "") + ")")
    module = build_model(meta, config_name)
    state = read_weights(files.weights, weights_name)  # type: ignore[arg-type]
    _require_finite(state, weights_name)
    load_weights(module, state, weights_name)
    source = "safetensors"
    if kind not in MODEL_KINDS:
        dist = model_plugins()[kind].dist
        source = f"plugin {dist.name} {dist.version}" if dist is not None else "plugin"
        if files.stem == "generator" and not isinstance(module, GeneratorModel):
            raise LetheError(f"{config_name}: {type(module).__name__} (kind {kind!r}) is not a generator: it lacks "
                             "what unlearning/models/plugins.py's GeneratorModel asks for (latent_dim, config, forward)")
    return Component(files.stem, module.eval(), kind, source)


def _from_onnx(files: ComponentFiles) -> Component:
    name = files.graph.name  # type: ignore[union-attr]
    prepared = prepare(files.graph.read_bytes(), name)  # type: ignore[union-attr]
    import onnx

    proto = onnx.load_from_string(prepared.graph)
    _require_finite_initializers(proto, name)
    inputs = [i for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    if len(inputs) != 1:
        raise LetheError(f"{name}: the graph takes {len(inputs)} inputs; a {files.stem} takes one")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
    if files.stem == "generator":
        if len(dims) != 2 or not dims[1]:
            raise LetheError(f"{name}: its input has shape {_shape(dims)}; a generator takes one input "
                             "[batch, latent_dim] with a fixed latent_dim")
        module: nn.Module = OnnxGraphGenerator(OnnxGraphConfig(latent_dim=dims[1]), prepared.graph, name)
        kind = OnnxGraphGenerator.kind
    else:
        module = OnnxGraphDiscriminator(OnnxGraphConfig(), prepared.graph, name)
        kind = OnnxGraphDiscriminator.kind
    return Component(files.stem, module, kind, "onnx", prepared, {"input_shape": _shape(dims)})


def _shape(dims: list[int | None]) -> str:
    return "[" + ", ".join("batch" if d is None else str(d) for d in dims) + "]"


def _require_finite(state: dict[str, torch.Tensor], label: str) -> None:
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            what = "NaN" if bool(torch.isnan(tensor).any()) else "infinite values"
            raise LetheError(f"{label}: tensor {key!r} holds {what}; a model with them cannot be served or edited")


def _require_finite_initializers(proto, label: str) -> None:
    from onnx import numpy_helper

    for tensor in proto.graph.initializer:
        if tensor.data_type in (1, 10, 11, 16):  # float, float16, double, bfloat16
            values = torch.from_numpy(numpy_helper.to_array(tensor).astype("float64"))
            _require_finite({tensor.name: values}, label)
