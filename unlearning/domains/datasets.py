"""A user's labelled dataset for ``lethe domain add``: MNIST-style IDX files (plain or
gzipped), an npz (read without pickle), or a folder of PNGs whose sub-folder names are the
labels. Everything is checked before anything is registered, and every problem names the
file and says what is wrong.

What each format may hold:

* IDX: a folder with ``train-images-idx3-ubyte[.gz]`` and ``train-labels-idx1-ubyte[.gz]``
  (and, optionally, the ``t10k-*`` pair as the held-out split), or the path of an images
  file whose labels file sits next to it. Labels are named "0", "1", ...
* npz: ``x_train``/``y_train`` (and optionally ``x_test``/``y_test``), or ``images``/``labels``;
  an optional ``label_names`` array of strings names the classes.
* PNG folder: one sub-folder per class (its name is the label's name); PNGs at any depth
  inside it. Grey or RGB; every image the same size.

A dataset without its own held-out split gets a stratified 20 % one (``splits.py``).
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from unlearning.data.digits import LabelledImages
from unlearning.data.files import UploadLimits, load_image_folder, load_mnist
from unlearning.errors import InputDataError

MIN_SIDE = 8
MAX_SIDE = 256
MIN_PER_CLASS = 4  # a held-out image and one for each of the guide's and the judge's halves, at least
DATASET_LIMITS = UploadLimits(max_images=1_000_000, max_total_bytes=4 << 30, max_total_pixels=2**32)


@dataclass(frozen=True)
class UserDataset:
    """Images in [-1, 1] (N, C, H, W) with labels 0..K-1, and the class names."""

    train: LabelledImages
    held_out: LabelledImages | None
    labels: list[str]
    source: str  # "idx", "npz" or "png-folder"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.images.shape[1:])  # type: ignore[return-value]


def read_dataset(path: Path, *, label_names: list[str] | None = None) -> UserDataset:
    """Read and check ``path``; ``label_names`` overrides the names the data gives."""
    path = Path(path)
    if not path.exists():
        raise InputDataError(f"{path}: no such file or folder")
    if path.is_dir() and _has_idx(path):
        data = _read_idx(path)
    elif path.is_file() and path.suffix.lower() == ".npz":
        data = _read_npz(path)
    elif path.is_file() and ("idx" in path.name.lower()):
        data = _read_idx_file(path)
    elif path.is_dir():
        images, names = load_image_folder(path, channels=_folder_channels(path), limits=DATASET_LIMITS)
        data = UserDataset(images, None, names, "png-folder")
    else:
        raise InputDataError(f"{path.name}: not a dataset Lethe reads; give an IDX file or folder, "
                             "an npz, or a folder of PNGs with one sub-folder per class")
    if label_names is not None:
        if len(label_names) != len(data.labels):
            raise InputDataError(f"--labels names {len(label_names)} classes but {path.name} has {len(data.labels)}")
        data = UserDataset(data.train, data.held_out, list(label_names), data.source)
    _check(data, path.name)
    return data


def _has_idx(folder: Path) -> bool:
    return any(p.name.startswith("train-images") for p in folder.iterdir())


def _read_idx(folder: Path) -> UserDataset:
    train = load_mnist(folder, split="train", limits=DATASET_LIMITS)
    _require_labels(train, f"{folder.name}: train-images")
    held_out = None
    if any(p.name.startswith("t10k-images") for p in folder.iterdir()):
        held_out = load_mnist(folder, split="test", limits=DATASET_LIMITS)
        _require_labels(held_out, f"{folder.name}: t10k-images")
    return UserDataset(train, held_out, _numbered(train, held_out), "idx")


def _read_idx_file(path: Path) -> UserDataset:
    train = load_mnist(path, limits=DATASET_LIMITS)
    _require_labels(train, path.name)
    return UserDataset(train, None, _numbered(train, None), "idx")


def _require_labels(data: LabelledImages, what: str) -> None:
    if bool((data.labels < 0).any()):
        raise InputDataError(f"{what}: has no labels file next to it (e.g. train-labels-idx1-ubyte[.gz]); "
                             "a domain needs a label for every image")


def _numbered(train: LabelledImages, held_out: LabelledImages | None) -> list[str]:
    top = int(train.labels.max()) if len(train) else -1
    if held_out is not None and len(held_out):
        top = max(top, int(held_out.labels.max()))
    return [str(k) for k in range(top + 1)]


def _read_npz(path: Path) -> UserDataset:
    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename.removesuffix(".npy") for i in zf.infolist()}
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputDataError(f"{path.name}: not a readable npz file ({exc})") from None
    if "x_train" in members or "images" in members:
        train = load_mnist(path, split="train", limits=DATASET_LIMITS) if "x_train" in members \
            else _npz_images(path, "images", "labels")
    else:
        raise InputDataError(f"{path.name}: has arrays {', '.join(sorted(members)) or '(none)'}; expected "
                             "'x_train'/'y_train' (and optionally 'x_test'/'y_test') or 'images'/'labels'")
    _require_npz_labels(train, path.name, "y_train" if "x_train" in members else "labels")
    held_out = None
    if "x_test" in members:
        held_out = load_mnist(path, split="test", limits=DATASET_LIMITS)
        _require_npz_labels(held_out, path.name, "y_test")
    names = _npz_label_names(path) if "label_names" in members else _numbered(train, held_out)
    return UserDataset(train, held_out, names, "npz")


def _npz_images(path: Path, image_key: str, label_key: str) -> LabelledImages:
    # load_mnist reads 'images'/'labels' too, but only greyscale: read colour arrays here
    from unlearning.data.files import load_images

    images = load_images(path, limits=DATASET_LIMITS, max_count=DATASET_LIMITS.max_images)
    labels = _npz_array(path, label_key)
    if labels is None:
        return LabelledImages(images, torch.full((len(images),), -1, dtype=torch.int64))
    if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
        raise InputDataError(f"{path.name}: array {label_key!r} must hold one integer label per image "
                             f"({len(images):,}), got shape {labels.shape} of {labels.dtype}")
    return LabelledImages(images, torch.from_numpy(labels.astype(np.int64)))


def _npz_array(path: Path, key: str) -> np.ndarray | None:
    with np.load(path, allow_pickle=False) as npz:  # never unpickle: object arrays raise
        return npz[key] if key in npz.files else None


def _npz_label_names(path: Path) -> list[str]:
    try:
        names = _npz_array(path, "label_names")
    except ValueError as exc:
        raise InputDataError(f"{path.name}: array 'label_names' must be strings ({exc})") from None
    if names is None or names.ndim != 1 or names.dtype.kind not in "US":
        raise InputDataError(f"{path.name}: array 'label_names' must be a 1-d array of strings")
    return [str(n) for n in names.tolist()]


def _require_npz_labels(data: LabelledImages, name: str, key: str) -> None:
    if bool((data.labels < 0).any()):
        raise InputDataError(f"{name}: has no {key!r} array; a domain needs a label for every image")


def _folder_channels(root: Path) -> int:
    """1 when every PNG is grey, else 3 (checked on the first PNG of each class)."""
    from PIL import Image

    for cls in sorted(p for p in root.iterdir() if p.is_dir()):
        first = next((f for f in sorted(cls.rglob("*.png"))), None)
        if first is None:
            continue
        try:
            with Image.open(first) as image:
                if image.mode not in ("1", "L", "LA", "I", "I;16", "F"):
                    return 3
        except OSError as exc:
            raise InputDataError(f"{root.name}: {first.relative_to(root).as_posix()!r} is not a readable PNG "
                                 f"({exc})") from None
    return 1


def _check(data: UserDataset, name: str) -> None:
    c, h, w = data.image_shape
    if h != w:
        raise InputDataError(f"{name}: images are {w}x{h}; a domain's images must be square")
    if not MIN_SIDE <= h <= MAX_SIDE:
        raise InputDataError(f"{name}: images are {w}x{h}; a domain's side must be {MIN_SIDE} to {MAX_SIDE} pixels")
    if c not in (1, 3):
        raise InputDataError(f"{name}: images have {c} channels; a domain's images are grey (1) or RGB (3)")
    k = len(data.labels)
    if k < 2:
        raise InputDataError(f"{name}: has one class ({repr(data.labels[0]) if data.labels else 'unnamed'}); "
                             "a domain needs at least two, so that a class can be forgotten and others kept")
    if len(set(data.labels)) != k:
        raise InputDataError(f"{name}: class names repeat ({', '.join(data.labels)})")
    for split, part in (("train", data.train), ("held-out", data.held_out)):
        if part is None:
            continue
        if part.images.shape[1:] != data.train.images.shape[1:]:
            raise InputDataError(f"{name}: {split} images are {tuple(part.images.shape[1:])}, "
                                 f"train images {tuple(data.train.images.shape[1:])}")
        bad = (part.labels < 0) | (part.labels >= k)
        if bool(bad.any()):
            raise InputDataError(f"{name}: {split} label {int(part.labels[bad][0])} is outside 0..{k - 1} "
                                 f"({k} class names)")
    counts = torch.bincount(data.train.labels, minlength=k)
    need = MIN_PER_CLASS if data.held_out is None else MIN_PER_CLASS - 1
    for label, count in enumerate(counts.tolist()):
        if count < need:
            raise InputDataError(f"{name}: class {data.labels[label]!r} has {count} training image"
                                 f"{'s' if count != 1 else ''}; each class needs at least {need}")
