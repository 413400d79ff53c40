"""A user's own generator (and discriminator) architecture, published as a Python entry
point in the group ``lethe.models`` (as validity rules are in ``lethe.validity``).

The entry point's name is the model's *kind*: what ``generator.json`` names in ``"kind"``,
the way diffusers' ``model_index.json`` names each component's class. It loads to an
``nn.Module`` class that keeps the contract below; Lethe then stores, loads, trains,
exports and serves it like its own families (``models/io.py`` looks a kind up in its own
table first, then here)::

    # pyproject.toml of the user's package
    [project.entry-points."lethe.models"]
    my-generator = "my_package.models:MyGenerator"
    my-discriminator = "my_package.models:MyDiscriminator"

Nothing is unpickled: the class comes from installed code, the weights from safetensors,
the configuration from JSON validated by the class's own pydantic model.
"""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import ClassVar, Protocol, runtime_checkable

import torch
from pydantic import BaseModel
from torch import nn

from unlearning.errors import LetheError

ENTRY_POINT_GROUP = "lethe.models"


@runtime_checkable
class GeneratorModel(Protocol):
    """What a generator class must offer.

    * ``kind``: the entry point's name (written into ``generator.json``);
    * ``config_class``: a pydantic model of the constructor's settings; the class is built
      as ``cls(config_class(**json["config"]))`` and keeps it as ``config``;
    * ``latent_dim``: the size of z; Lethe draws z ~ N(0, I) of shape (N, latent_dim);
    * ``forward(z)``: images (N, C, H, W) in [-1, 1] (a final tanh is the usual way), of
      the domain's image shape, for any batch size N >= 1;
    * everything in ``state_dict()`` (safetensors holds the weights), and exportable by
      ``torch.onnx.export`` (what is served is its ONNX graph).
    """

    kind: ClassVar[str]
    config_class: ClassVar[type[BaseModel]]
    config: BaseModel
    latent_dim: int

    def forward(self, z: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class DiscriminatorModel(Protocol):
    """What a discriminator class must offer: ``kind``, ``config_class`` and ``config`` as
    for the generator, and ``forward(x)``: one logit per image, shape (N,), for images
    (N, C, H, W) in [-1, 1] (D(x) in the papers is its sigmoid)."""

    kind: ClassVar[str]
    config_class: ClassVar[type[BaseModel]]
    config: BaseModel

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...


def model_plugins() -> dict[str, EntryPoint]:
    """The installed entry points of group ``lethe.models``, by name (the first one wins
    if two distributions publish the same name)."""
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def plugin_model_class(kind: str, known: list[str]) -> tuple[type[nn.Module], type[BaseModel]]:
    """The class the entry point ``kind`` names and its config class; LetheError naming
    the kinds Lethe knows (``known``, its own) and the installed plugins otherwise."""
    ep = model_plugins().get(kind)
    if ep is None:
        plugins = ", ".join(sorted(model_plugins())) or "none installed"
        raise LetheError(f"unknown model kind {kind!r}: Lethe's own kinds are {', '.join(known)}; plugins "
                         f"(entry point group {ENTRY_POINT_GROUP}): {plugins}")
    try:
        cls = ep.load()
    except Exception as exc:  # an import error in the user's package: say which entry point
        raise LetheError(f"model kind {kind!r}: entry point {ep.value!r} cannot be loaded "
                         f"({type(exc).__name__}: {exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise LetheError(f"model kind {kind!r}: entry point {ep.value!r} is not a torch.nn.Module class")
    config_class = getattr(cls, "config_class", None)
    if not (isinstance(config_class, type) and issubclass(config_class, BaseModel)):
        raise LetheError(f"model kind {kind!r}: {cls.__name__} has no config_class (a pydantic model of its "
                         "settings; see unlearning/models/plugins.py)")
    if getattr(cls, "kind", None) != kind:
        raise LetheError(f"model kind {kind!r}: {cls.__name__}.kind is {getattr(cls, 'kind', None)!r}; it must be "
                         "the entry point's name, which generator.json names")
    return cls, config_class
