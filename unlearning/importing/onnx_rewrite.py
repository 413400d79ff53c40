"""Reading an uploaded ONNX graph and making it convertible by onnx2torch, with rewrites
that change nothing it computes. Each rewrite is recorded, and the converted module is
checked against ONNX Runtime on the graph as uploaded (``checks.py``), so an inexact one
could not pass unnoticed.

* **Opset.** torch 2.14's exporters write opset 20 by default; onnx2torch 1.5 has no
  converters for the opset-19/20 versions of common operators (``Reshape``, ``Identity``,
  ...) although their behaviour on float tensors did not change. A graph above opset 18
  is brought down to 18 by onnx's own version converter.
* **Reshape(allowzero=1).** torch's default (dynamo) exporter writes it; onnx2torch refuses
  it. ``allowzero`` only matters where the target shape holds a 0 (1: an empty dimension,
  0: copy the input's). Where the shape is a constant without zeros the attribute is set
  to 0, which is exact. A shape computed at run time is left alone and refused.

Nothing else is changed: any other operator onnx2torch cannot convert is named.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from unlearning.errors import LetheError

TARGET_OPSET = 18  # the newest opset whose operators onnx2torch 1.5 converts


@dataclass
class PreparedGraph:
    """The graph as uploaded (``original``) and as converted (``graph``), with what changed."""

    original: bytes
    graph: bytes
    rewrites: list[str] = field(default_factory=list)
    opset: int = 0


def read_graph(data: bytes, label: str):
    """An uploaded file as a checked ONNX model; external data is refused (an upload must
    not make us read other files)."""
    import onnx
    from onnx import external_data_helper

    try:
        proto = onnx.load_from_string(data)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise LetheError(f"{label}: not a readable ONNX model ({type(exc).__name__})") from None
    if any(external_data_helper.uses_external_data(t) for t in proto.graph.initializer):
        raise LetheError(f"{label}: ONNX models with external data files are not accepted; export with "
                         "external_data=False")
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise LetheError(f"{label}: invalid ONNX model ({str(exc).strip()[:300]})") from None
    if len(proto.graph.output) != 1:
        raise LetheError(f"{label}: the graph has {len(proto.graph.output)} outputs; a generator or discriminator "
                         "graph has one")
    return proto


def prepare(data: bytes, label: str) -> PreparedGraph:
    """The rewritten graph, ready for onnx2torch; LetheError naming what cannot be converted."""
    proto = read_graph(data, label)
    opset = _default_opset(proto)
    rewrites: list[str] = []
    if opset > TARGET_OPSET:
        from onnx import version_converter

        try:
            proto = version_converter.convert_version(proto, TARGET_OPSET)
        except Exception as exc:
            raise LetheError(f"{label}: opset {opset} cannot be brought down to {TARGET_OPSET}, the newest onnx2torch "
                             f"converts ({str(exc).strip()[:200]}); export with opset_version={TARGET_OPSET}") from None
        rewrites.append(f"opset {opset} -> {TARGET_OPSET} (onnx.version_converter)")
    rewrites += _reshape_allowzero(proto)
    _check_converters(proto, label)
    return PreparedGraph(original=data, graph=proto.SerializeToString(), rewrites=rewrites, opset=opset)


def _default_opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _constants(proto) -> dict[str, np.ndarray]:
    """Values known before the graph runs: initializers and Constant nodes' tensors."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attribute in node.attribute:
                if attribute.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attribute.t)
    return values


def _reshape_allowzero(proto) -> list[str]:
    """allowzero=1 -> 0 on every Reshape whose shape is a constant without zeros."""
    constants = _constants(proto)
    changed = 0
    for node in proto.graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        shape = constants.get(node.input[1])
        for attribute in node.attribute:
            if attribute.name == "allowzero" and attribute.i == 1 and shape is not None and not (shape == 0).any():
                attribute.i = 0
                changed += 1
    return [f"Reshape allowzero=1 -> 0 on {changed} node(s) with a constant shape without zeros"] if changed else []


def _check_converters(proto, label: str) -> None:
    """Name the first operator onnx2torch has no converter for (or refuses as it is)."""
    from onnx2torch.node_converters.registry import get_converter

    opsets = {o.domain: o.version for o in proto.opset_import}
    for node in proto.graph.node:
        domain = node.domain or ""
        version = opsets.get(domain, opsets.get("ai.onnx" if domain == "" else domain))
        where = f"operator {node.op_type}" + (f" (domain {domain})" if domain else "") \
            + (f" at opset {version}" if version is not None else "") + (f" (node {node.name!r})" if node.name else "")
        if version is None:
            raise LetheError(f"{label}: {where} belongs to no opset the graph imports")
        try:
            get_converter(operation_type=node.op_type, version=version, domain=domain)
        except NotImplementedError:
            raise LetheError(f"{label}: {where} cannot be converted to PyTorch by onnx2torch, so the model could "
                             "not be edited; export without it, or publish the architecture as a lethe.models "
                             "entry point") from None
        if node.op_type == "Reshape" and any(a.name == "allowzero" and a.i == 1 for a in node.attribute):
            raise LetheError(f"{label}: {where} has allowzero=1 with a shape computed at run time, which onnx2torch "
                             "refuses (and which cannot be rewritten exactly without knowing the shape); export with "
                             "a constant target shape or with the TorchScript exporter (dynamo=False)")
