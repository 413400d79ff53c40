"""What an import folder may hold, and which component each file belongs to.

A component is ``<stem>.safetensors`` + ``<stem>.json`` (weights and ``{"kind", "config"}``,
Lethe's own families or a ``lethe.models`` plugin), or ``<stem>.onnx`` (a graph that
onnx2torch converts). The stems:

* ``generator`` (required, unless the model is image-to-image): what is served and edited;
* ``discriminator`` (optional): what Kong's and Adapt-then-Unlearn's methods train against;
* ``encoder`` (optional, ``vae-encoder`` only): kept beside a VAE decoder, never served;
* ``inpainter`` (alone): an image-to-image model, served at ``/inpaint``.

Files are named exactly so; anything else in the folder is refused, so a typo
(``generater.onnx``) is not silently left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unlearning.errors import LetheError

STEMS = ("generator", "discriminator", "encoder", "inpainter")
ONNX_STEMS = ("generator", "discriminator")
UPLOAD_NAMES = frozenset(
    [f"{stem}.{ext}" for stem in STEMS for ext in ("safetensors", "json")] + [f"{stem}.onnx" for stem in ONNX_STEMS])
LAYOUT = ("generator.safetensors + generator.json, or generator.onnx; optionally the discriminator the same way "
          "(discriminator.*); encoder.safetensors + encoder.json beside a VAE decoder; or inpainter.safetensors + "
          "inpainter.json alone for an image-to-image model")
MAX_CONFIG_BYTES = 1 << 20


@dataclass(frozen=True)
class ComponentFiles:
    stem: str
    weights: Path | None = None  # <stem>.safetensors
    config: Path | None = None  # <stem>.json
    graph: Path | None = None  # <stem>.onnx

    @property
    def is_onnx(self) -> bool:
        return self.graph is not None

    @property
    def names(self) -> list[str]:
        return [p.name for p in (self.weights, self.config, self.graph) if p is not None]


def check_upload_name(name: str) -> None:
    """LetheError unless ``name`` is one of a component's file names."""
    if name in UPLOAD_NAMES:
        return
    if name.endswith(".onnx.data"):
        raise LetheError(f"{name}: ONNX external data is not accepted; export the graph as one file "
                         "(torch.onnx.export(..., external_data=False))")
    raise LetheError(f"unexpected file {name!r}: an import holds {LAYOUT}")


def find_components(folder: Path) -> dict[str, ComponentFiles]:
    """The components in ``folder``, by stem; LetheError naming what does not fit the layout."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LetheError(f"{folder}: not a folder; an import reads a folder holding {LAYOUT}")
    names = sorted(p.name for p in folder.iterdir())
    unexpected = [n for n in names if n not in UPLOAD_NAMES or not (folder / n).is_file()]
    if unexpected:
        check_upload_name(unexpected[0])
        raise LetheError(f"{unexpected[0]!r} is not a file: an import holds {LAYOUT}")
    found: dict[str, ComponentFiles] = {}
    for stem in STEMS:
        weights, config, graph = (folder / f"{stem}.{ext}" for ext in ("safetensors", "json", "onnx"))
        has = {p.suffix: p for p in (weights, config, graph) if p.name in names}
        if not has:
            continue
        if ".onnx" in has and (".safetensors" in has or ".json" in has):
            raise LetheError(f"{stem}: give either {stem}.onnx or {stem}.safetensors + {stem}.json, not both")
        if ".onnx" not in has and len(has) == 1:
            present, absent = (weights, config) if ".safetensors" in has else (config, weights)
            raise LetheError(f"{present.name} came without {absent.name}: a component is its weights "
                             "(safetensors) and its config ({\"kind\", \"config\"} JSON) together")
        found[stem] = ComponentFiles(stem, has.get(".safetensors"), has.get(".json"), has.get(".onnx"))
    if "inpainter" in found and len(found) > 1:
        raise LetheError("an image-to-image import holds inpainter.safetensors + inpainter.json only; "
                         f"remove {', '.join(n for s, c in found.items() if s != 'inpainter' for n in c.names)}")
    if "inpainter" not in found and "generator" not in found:
        raise LetheError(f"no generator: an import holds {LAYOUT}")
    if "encoder" in found and found["generator"].is_onnx:
        raise LetheError("encoder.* goes beside a VAE decoder given as generator.safetensors + generator.json")
    return found
