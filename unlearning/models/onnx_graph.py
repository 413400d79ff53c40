"""A generator or discriminator that arrived as an ONNX graph (``lethe import`` of
``generator.onnx``), converted by onnx2torch into a trainable module, so that a user who
only has the exported graph can still have it edited.

A component ``<stem>`` of this kind is three files in a version:

* ``<stem>.graph.onnx``: the graph, after the exact rewrites of ``importing/onnx_rewrite.py``
  (its own weights are the imported ones, kept for provenance);
* ``<stem>.safetensors``: the module's weights (a job's edit writes new ones here);
* ``<stem>.json``: ``{"kind": "onnx-generator", "config": {"latent_dim": 64}}`` (or
  ``onnx-discriminator`` with an empty config).

Loading converts the graph again (onnx2torch is deterministic) and loads the weights on
top, strictly. What is served is not this graph but the module exported again by
``torch.onnx`` (``generator.onnx``), as for every other generator.

onnx2torch keeps weights that no module owns (the weight of a ``MatMul``, a bias added
by ``Add``) as buffers; they are made parameters here (floating point, more than one
element), or training would leave those layers as they were. Scalars stay constants.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from unlearning.errors import LetheError

GRAPH_SUFFIX = ".graph.onnx"


class OnnxGraphConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    latent_dim: int | None = Field(None, ge=1, description="the generator's z size (None for a discriminator)")


def graph_file(stem: str) -> str:
    return f"{stem}{GRAPH_SUFFIX}"


def trainable_module(graph: bytes, label: str) -> nn.Module:
    """The onnx2torch module of a (rewritten, checked) graph, its free weights made parameters."""
    import onnx
    from onnx2torch import convert

    try:
        module = convert(onnx.load_from_string(graph))
    except Exception as exc:  # checked at import; a stored graph that fails is damaged
        raise LetheError(f"{label}: onnx2torch cannot convert the graph ({type(exc).__name__}: {exc})") from None
    _static_reshapes(module)
    holder = getattr(module, "initializers", None)  # onnx2torch's home of the graph's free initializers
    if holder is not None:
        for name, buffer in list(holder.named_buffers(recurse=False)):
            if buffer is not None and buffer.is_floating_point() and buffer.numel() > 1:
                delattr(holder, name)
                holder.register_parameter(name, nn.Parameter(buffer.detach().clone()))
    return module.eval()


class _StaticReshape(nn.Module):
    """``Reshape`` to a shape known when the graph was converted (no zeros in it): the same
    function as onnx2torch's module, which inspects the shape tensor at run time and so
    cannot be traced by torch.export (the served graph would need the older exporter)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor, shape: torch.Tensor | None = None) -> torch.Tensor:
        return torch.reshape(x, self.shape)


def _static_reshapes(module: nn.Module) -> None:
    """Replace each onnx2torch Reshape whose target shape is a constant without zeros."""
    from onnx2torch.node_converters.constant import OnnxConstant
    from onnx2torch.node_converters.reshape import OnnxReshape

    def constant(node) -> torch.Tensor | None:
        if node.op == "get_attr":
            value = module.get_submodule(node.target.rsplit(".", 1)[0]) if "." in node.target else module
            return getattr(value, node.target.rsplit(".", 1)[-1], None)
        if node.op == "call_module" and isinstance(module.get_submodule(node.target), OnnxConstant):
            return module.get_submodule(node.target).value
        return None

    for node in module.graph.nodes:
        if node.op != "call_module" or not isinstance(module.get_submodule(node.target), OnnxReshape):
            continue
        shape = constant(node.args[1]) if len(node.args) > 1 and hasattr(node.args[1], "op") else None
        if isinstance(shape, torch.Tensor) and shape.dim() == 1 and not bool((shape == 0).any()):
            module.add_submodule(node.target, _StaticReshape(tuple(int(v) for v in shape.tolist())))


class _GraphModel(nn.Module):
    """The converted graph, with the file it came from (written again when the model is saved)."""

    kind = ""

    def __init__(self, config: OnnxGraphConfig, graph: bytes, label: str = "graph"):
        super().__init__()
        self.config = config
        # not `graph`: a GraphModule's fx graph is `.graph`, and export rebuilds modules around these names
        self.converted = trainable_module(graph, label)
        self._graph_bytes = graph

    @classmethod
    def from_folder(cls, config: OnnxGraphConfig, directory: Path, stem: str) -> "_GraphModel":
        path = Path(directory) / graph_file(stem)
        if not path.is_file():
            raise LetheError(f"{path}: missing (an ONNX-graph model keeps its graph beside its weights)")
        return cls(config, path.read_bytes(), str(path))

    def save_files(self, directory: Path, stem: str) -> list[Path]:
        path = Path(directory) / graph_file(stem)
        path.write_bytes(self._graph_bytes)
        return [path]


class OnnxGraphGenerator(_GraphModel):
    """z (N, latent_dim) -> images (N, C, H, W), as the graph computes them."""

    kind = "onnx-generator"

    @property
    def latent_dim(self) -> int:
        return int(self.config.latent_dim)  # type: ignore[arg-type]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.converted(z)


class OnnxGraphDiscriminator(_GraphModel):
    """images -> one logit each, shape (N,) (a graph's (N, 1) output is flattened)."""

    kind = "onnx-discriminator"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.converted(x).reshape(x.shape[0])
