"""Images that users bring or upload: npz arrays, PNGs, zips of PNGs, MNIST files and
PNG folders.

Everything here reads untrusted bytes, so: nothing is unpickled (object arrays are
refused before their data is read), zip entries are checked against the sizes their
directory declares before anything is decompressed and the bytes actually read are
capped as well (declared sizes can lie), PNG headers are checked for pixel counts before
decoding, and every problem becomes an ``InputDataError`` that names the file or entry
in plain words. Nothing is resized behind the user's back.
"""

from __future__ import annotations

import gzip
import io
import re
import struct
import warnings
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import IO, Iterable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field

from unlearning.data.digits import LabelledImages
from unlearning.errors import InputDataError

SUPPORTED_SUFFIXES = (".npz", ".npy", ".png", ".zip")
_CHUNK = 1 << 20
_JUNK_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}
_MODE_FOR_CHANNELS = {1: "L", 3: "RGB", 4: "RGBA"}
_LAYOUTS = "(N, H, W), (N, H, W, C) or (N, C, H, W) with C = 1, 3 or 4"


class UploadLimits(BaseModel):
    """Caps on what one upload may make us read, decompress and decode."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    max_files: int = Field(10_000, gt=0, description="entries in a zip, all kinds counted")
    max_total_bytes: int = Field(512 * 2**20, gt=0, description="uncompressed bytes read from one upload")
    max_compression_ratio: float = Field(200.0, gt=0, description="uncompressed/compressed, per zip entry")
    max_pixels: int = Field(4096 * 4096, gt=0, description="width x height of one image")
    max_total_pixels: int = Field(2**27, gt=0, description="width x height summed over all images decoded")
    max_images: int = Field(100_000, gt=0, description="images in one upload")


class _Budget:
    """Bytes read and pixels decoded so far, against the limits, for one upload."""

    def __init__(self, limits: UploadLimits, label: str) -> None:
        self.limits, self.label = limits, label
        self.bytes = 0
        self.pixels = 0

    def add_bytes(self, n: int) -> None:
        self.bytes += n
        if self.bytes > self.limits.max_total_bytes:
            raise InputDataError(
                f"{self.label}: more than {_mib(self.limits.max_total_bytes)} of data once "
                "uncompressed; that is over the upload limit"
            )

    def add_pixels(self, n: int, what: str) -> None:
        self.pixels += n
        if self.pixels > self.limits.max_total_pixels:
            raise InputDataError(
                f"{what}: the images add up to more than {self.limits.max_total_pixels:,} pixels; "
                "that is over the upload limit"
            )


# --------------------------------------------------------------------------- public API


def load_images(
    path: Path,
    *,
    expected_shape: tuple[int, int, int] | None = None,
    max_count: int = 100_000,
    limits: UploadLimits | None = None,
) -> torch.Tensor:
    """Images from an ``.npz`` (or ``.npy``), a ``.png`` or a ``.zip`` of PNGs, as float32
    (N, C, H, W) in [-1, 1]. ``expected_shape`` is the model's (C, H, W): images of another
    size are refused, PNG colour modes are converted to its channel count. At most
    ``min(max_count, limits.max_images)`` images are accepted."""
    path = Path(path)
    limits = limits or UploadLimits()
    max_count = min(max_count, limits.max_images)
    if expected_shape is not None:
        expected_shape = _check_expected(expected_shape)
    label = path.name
    if not path.is_file():
        raise InputDataError(f"{label}: no such file")
    suffix = path.suffix.lower()
    budget = _Budget(limits, label)
    if suffix in (".npz", ".npy"):
        array, what = _read_image_array(path, None, budget, max_count)
        images = _array_to_images(array, what, expected_shape)
    elif suffix == ".png":
        data = _read_file(path, budget)
        images = _stack([_decode_png(data, label, expected_shape, budget)], label, expected_shape)
    elif suffix == ".zip":
        images = _load_png_zip(path, expected_shape, max_count, budget)
    else:
        raise InputDataError(
            f"{label}: unsupported file type {suffix or '(no suffix)'!r}; "
            "send an .npz of images, a .png, or a .zip of PNGs"
        )
    if len(images) == 0:
        raise InputDataError(f"{label}: contains no images")
    if len(images) > max_count:
        raise InputDataError(f"{label}: has {len(images):,} images; at most {max_count:,} are accepted")
    return images


def decode_pngs(blobs: list[bytes], *, expected_shape: tuple[int, int, int], label: str = "image") -> torch.Tensor:
    """PNG files held in memory (e.g. sent in a request) -> (N, C, H, W) float32 in [-1, 1],
    under the same limits and checks as uploaded files; errors name the image by position."""
    expected_shape = _check_expected(expected_shape)
    budget = _Budget(UploadLimits(), label)
    arrays = [_decode_png(data, f"{label} {i}", expected_shape, budget) for i, data in enumerate(blobs)]
    return _stack(arrays, label, expected_shape)


def load_mnist(path: Path, *, split: str = "train", limits: UploadLimits | None = None) -> LabelledImages:
    """MNIST-format digits (MNIST, Fashion-MNIST, ...) as (N, 1, 28, 28) in [-1, 1].

    ``path`` is an IDX images file, raw or gzipped (its labels file is picked up when it
    sits next to it under the usual name; without one every label is -1), a folder holding
    the IDX files (``split`` picks ``train-*`` or ``t10k-*``), or an npz with keras'
    ``x_train``/``y_train`` (``x_test``/``y_test`` for ``split='test'``) or ``images``/``labels``.
    """
    path = Path(path)
    limits = limits or UploadLimits()
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {split!r}")
    if path.is_dir():
        path = _find_idx_images(path, split)
    if not path.is_file():
        raise InputDataError(f"{path.name}: no such file")
    if path.suffix.lower() == ".npz":
        return _load_mnist_npz(path, split, limits)
    budget = _Budget(limits, path.name)
    pixels = _read_idx(path, 3, budget, limits.max_images)
    n, h, w = pixels.shape
    if h * w > limits.max_pixels:
        raise InputDataError(f"{path.name}: images of {h}x{w} pixels are over the limit")
    budget.add_pixels(n * h * w, path.name)
    images = torch.from_numpy(pixels.astype(np.float32)[:, None] / 127.5 - 1.0)
    labels_path = _labels_next_to(path)
    if labels_path is None:
        labels = torch.full((n,), -1, dtype=torch.int64)
    else:
        raw = _read_idx(labels_path, 1, budget, limits.max_images)
        if len(raw) != n:
            raise InputDataError(
                f"{labels_path.name}: has {len(raw):,} labels but {path.name} has {n:,} images"
            )
        labels = torch.from_numpy(raw.astype(np.int64))
    if n == 0:
        raise InputDataError(f"{path.name}: contains no images")
    return LabelledImages(images, labels)


def load_image_folder(
    root: Path,
    *,
    channels: int = 1,
    resolution: int | None = None,
    limits: UploadLimits | None = None,
) -> tuple[LabelledImages, list[str]]:
    """PNGs under ``root``: each subfolder is a class (labels follow the sorted folder
    names; PNGs are found at any depth inside it). A folder with PNGs and no class
    subfolders is one class named after it. With ``resolution``, images are centre-cropped
    to a square and resized to it (asked for, so not silent); without it they must all
    be the same size. Returns the images and the class names, index = label."""
    root = Path(root)
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, not {channels}")
    if resolution is not None and resolution < 1:
        raise ValueError(f"resolution must be positive, not {resolution}")
    limits = limits or UploadLimits()
    if not root.is_dir():
        raise InputDataError(f"{root.name}: no such folder")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    top_level = _pngs_in(root, recursive=False)
    if classes and top_level:
        raise InputDataError(
            f"{root.name}: has PNGs outside the class folders (e.g. {top_level[0].name!r}); "
            "put every image inside a class folder"
        )
    groups = [(root.name, top_level)] if not classes else [(c.name, _pngs_in(c, recursive=True)) for c in classes]
    for name, files in groups:
        if not files:
            raise InputDataError(f"{root.name}: class folder {name!r} has no PNG images")
    total = sum(len(files) for _, files in groups)
    if total > limits.max_images:
        raise InputDataError(f"{root.name}: has {total:,} images; at most {limits.max_images:,} are accepted")
    budget = _Budget(limits, root.name)
    arrays, labels = [], []
    first: tuple[str, tuple[int, ...]] | None = None
    for label, (_, files) in enumerate(groups):
        for file in files:
            name = file.relative_to(root).as_posix()
            what = f"{root.name}: {name!r}"
            array = _decode_png(_read_file(file, budget), what, None, budget, channels=channels, resize=resolution)
            if first is None:
                first = (name, array.shape[1:])
            elif array.shape[1:] != first[1]:
                (h, w), (fh, fw) = array.shape[1:], first[1]
                raise InputDataError(f"{root.name}: {name!r} is {w}x{h} pixels but {first[0]!r} is {fw}x{fh}; "
                                     "every image must be the same size")
            arrays.append(array)
            labels.append(label)
    images = _stack(arrays, root.name, None)
    return LabelledImages(images, torch.tensor(labels, dtype=torch.int64)), [name for name, _ in groups]


def save_images_npz(images: torch.Tensor, path: Path) -> Path:
    """Write (N, C, H, W) images in [-1, 1] as uint8 (N, C, H, W) under key ``images``,
    compressed: the file ``load_images`` reads back to within 1/255."""
    path = Path(path)
    array = to_uint8(images)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:  # an open file keeps numpy from appending ".npz"
        np.savez_compressed(fh, images=array)
    return path


def save_png(image: torch.Tensor, path: Path) -> Path:
    """Write one (C, H, W) image in [-1, 1] (C = 1, 3 or 4) as an 8-bit PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png_bytes(image))
    return path


def save_png_zip(images: torch.Tensor, path: Path, *, prefix: str = "") -> Path:
    """Write (N, C, H, W) images as ``{prefix}{i:05d}.png`` inside a zip (stored, since
    PNGs are compressed already)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for i, image in enumerate(images):
            zf.writestr(f"{prefix}{i:05d}.png", png_bytes(image))
    return path


def png_bytes(image: torch.Tensor) -> bytes:
    """One (C, H, W) image in [-1, 1] encoded as PNG."""
    array = to_uint8(image[None])[0]  # (C, H, W)
    channels = array.shape[0]
    pil = Image.fromarray(array[0] if channels == 1 else np.moveaxis(array, 0, -1), _MODE_FOR_CHANNELS[channels])
    buffer = io.BytesIO()
    pil.save(buffer, format="PNG")
    return buffer.getvalue()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) in [-1, 1] -> uint8 array of the same shape (values outside are clipped)."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] not in (1, 3, 4):
        shape = tuple(images.shape) if hasattr(images, "shape") else type(images).__name__
        raise ValueError(f"expected a (N, C, H, W) tensor with C = 1, 3 or 4, got {shape}")
    scaled = (images.detach().to("cpu", torch.float32).clamp(-1, 1) + 1) * 127.5
    return scaled.round().to(torch.uint8).numpy()


# ------------------------------------------------------------------------- numpy arrays


def _read_image_array(
    path: Path, keys: tuple[str, ...] | None, budget: _Budget, max_count: int
) -> tuple[np.ndarray, str]:
    """The image array of an npz (key ``images``, else the only array; or the first of
    ``keys`` present) or an npy, checked before its data is read."""
    label = path.name
    if path.suffix.lower() == ".npy":
        with open(path, "rb") as fh:
            return _read_npy(fh, label, budget, max_count, path.stat().st_size, images=True), label
    with _open_zip(path) as zf:
        members = {
            info.filename[:-4] if info.filename.endswith(".npy") else info.filename: info
            for info in zf.infolist()
            if not info.is_dir()
        }
        if not members:
            raise InputDataError(f"{label}: contains no arrays")
        wanted = keys or ("images",)
        key = next((k for k in wanted if k in members), None)
        if key is None and keys is None and len(members) == 1:
            key = next(iter(members))
        if key is None:
            raise InputDataError(
                f"{label}: has arrays {', '.join(sorted(members))}; expected one named "
                f"{' or '.join(repr(k) for k in wanted)}" + (" or a single array" if keys is None else "")
            )
        what = f"{label}: array {key!r}"
        return _read_npz_member(zf, members[key], what, budget, max_count, images=True), what


def _read_npz_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str, budget: _Budget, max_count: int, *, images: bool
) -> np.ndarray:
    if info.file_size > budget.limits.max_total_bytes - budget.bytes:
        raise InputDataError(
            f"{what}: is {_mib(info.file_size)} uncompressed; the upload limit is "
            f"{_mib(budget.limits.max_total_bytes)}"
        )
    _check_ratio(info, what, budget.limits)  # an npz is a zip: the same bomb check as a zip of PNGs
    try:
        with zf.open(info) as fh:
            return _read_npy(fh, what, budget, max_count, info.file_size, images=images)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as exc:
        raise InputDataError(f"{what}: could not be read ({_plain(exc)}); the file is corrupted") from exc


def _read_npy(
    fh: IO[bytes], what: str, budget: _Budget, max_count: int, declared: int, *, images: bool
) -> np.ndarray:
    """Parse an .npy stream by hand: header first (dtype, shape), refuse what we will not
    read, then exactly the data bytes. Never touches pickle."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = fmt.read_array_header_2_0(fh)
        else:
            raise InputDataError(f"{what}: uses .npy format version {version}, which is not supported")
    except InputDataError:
        raise
    except (ValueError, SyntaxError, EOFError, OSError, zlib.error, zipfile.BadZipFile) as exc:
        raise InputDataError(f"{what}: is not a readable numpy array ({_plain(exc)})") from exc
    if dtype.hasobject:
        raise InputDataError(
            f"{what}: holds Python objects (stored with pickle), which are never loaded; "
            "save plain uint8 or float arrays"
        )
    if dtype.fields is not None or dtype.subdtype is not None:
        raise InputDataError(f"{what}: has a structured dtype ({dtype}); save a plain uint8 or float array")
    if images and not (dtype.kind == "f" or (dtype.kind == "u" and dtype.itemsize == 1)):
        raise InputDataError(f"{what}: has dtype {dtype}; images must be uint8 (0..255) or float in [0, 1]")
    if not images and dtype.kind not in "iu":
        raise InputDataError(f"{what}: has dtype {dtype}; labels must be integers")
    if images and len(shape) >= 1 and shape[0] > max_count:
        raise InputDataError(f"{what}: has {shape[0]:,} images; at most {max_count:,} are accepted")
    values = int(np.prod(shape, dtype=np.int64))
    if images:  # before a byte of data is read: every value becomes a float32
        budget.add_pixels(values, what)
    nbytes = values * dtype.itemsize
    if nbytes > declared:
        raise InputDataError(f"{what}: is truncated (shape {tuple(shape)} needs more bytes than the file has)")
    data = _read_capped(fh, nbytes, budget)
    if len(data) < nbytes:
        raise InputDataError(f"{what}: is truncated ({len(data):,} of {nbytes:,} data bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


def _array_to_images(array: np.ndarray, what: str, expected: tuple[int, int, int] | None) -> torch.Tensor:
    if array.ndim == 3:
        nchw = array[:, None]
    elif array.ndim == 4:
        nchw = _to_nchw(array, what, expected)
    else:
        raise InputDataError(f"{what}: has shape {tuple(array.shape)}; expected images as {_LAYOUTS}")
    n, c, h, w = nchw.shape
    _check_size(c, h, w, what, expected)
    if array.dtype.kind == "u":
        values = nchw.astype(np.float32) / 127.5 - 1.0
    else:
        values = nchw.astype(np.float32)
        if values.size and not np.isfinite(values).all():
            raise InputDataError(f"{what}: contains NaN or infinite values")
        if values.size and (values.min() < 0 or values.max() > 1):
            raise InputDataError(
                f"{what}: float values range from {values.min():.3g} to {values.max():.3g}; "
                "float images must be in [0, 1] (or send uint8 0..255)"
            )
        values = values * 2.0 - 1.0
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def _to_nchw(array: np.ndarray, what: str, expected: tuple[int, int, int] | None) -> np.ndarray:
    _, a, b, c = array.shape
    as_nchw, as_nhwc = (a, b, c), (c, a, b)
    if expected is not None and as_nchw == expected:
        return array
    if expected is not None and as_nhwc == expected:
        return np.moveaxis(array, 3, 1)
    nchw_ok, nhwc_ok = a in (1, 3, 4), c in (1, 3, 4)
    if nchw_ok and nhwc_ok:  # e.g. (N, 4, 4, 3): prefer the reading with square images, then NCHW
        nhwc_ok = a == b and b != c
        nchw_ok = not nhwc_ok
    if nchw_ok:
        return array
    if nhwc_ok:
        return np.moveaxis(array, 3, 1)
    raise InputDataError(f"{what}: has shape {tuple(array.shape)}; expected images as {_LAYOUTS}")


# ------------------------------------------------------------------------- PNGs and zips


def _load_png_zip(
    path: Path, expected: tuple[int, int, int] | None, max_count: int, budget: _Budget
) -> torch.Tensor:
    label, limits = path.name, budget.limits
    with _open_zip(path) as zf:
        infos = zf.infolist()
        if len(infos) > limits.max_files:
            raise InputDataError(f"{label}: has {len(infos):,} entries; at most {limits.max_files:,} are accepted")
        pngs = []
        for info in infos:
            _check_entry_path(info.filename, label)
            if _skipped(info):
                continue
            what = f"{label}: entry {info.filename!r}"
            if not info.filename.lower().endswith(".png"):
                raise InputDataError(f"{what} is not a PNG; the zip may contain only PNG images")
            if info.flag_bits & 0x1:
                raise InputDataError(f"{what} is encrypted; send an unencrypted zip")
            _check_ratio(info, what, limits)
            pngs.append(info)
        if not pngs:
            raise InputDataError(f"{label}: contains no PNG images")
        if len(pngs) > max_count:
            raise InputDataError(f"{label}: has {len(pngs):,} images; at most {max_count:,} are accepted")
        declared = sum(info.file_size for info in pngs)
        if declared > limits.max_total_bytes:
            raise InputDataError(
                f"{label}: declares {_mib(declared)} of uncompressed data; the upload limit is "
                f"{_mib(limits.max_total_bytes)}"
            )
        arrays = []
        for info in pngs:
            what = f"{label}: entry {info.filename!r}"
            arrays.append(_decode_png(_read_zip_entry(zf, info, what, budget), what, expected, budget))
    return _stack(arrays, label, expected)


def _check_ratio(info: zipfile.ZipInfo, what: str, limits: UploadLimits) -> None:
    """Refuse an entry that claims to expand more than ``max_compression_ratio`` times
    (bytes actually read are capped at what it declares, so it cannot claim less)."""
    ratio = info.file_size / max(info.compress_size, 1)
    if ratio > limits.max_compression_ratio:
        raise InputDataError(
            f"{what} expands {ratio:,.0f}x when uncompressed (limit {limits.max_compression_ratio:,.0f}x); "
            "this looks like a zip bomb"
        )


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError, NotImplementedError) as exc:
        raise InputDataError(f"{path.name}: is not a readable zip archive ({_plain(exc)})") from exc


def _check_entry_path(name: str, label: str) -> None:
    parts = name.replace("\\", "/").split("/")
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in parts or "\0" in name:
        raise InputDataError(
            f"{label}: entry {name!r} has an unsafe path (absolute or containing '..'); the archive is refused"
        )


def _skipped(info: zipfile.ZipInfo) -> bool:
    """Folders and the clutter that archivers add (macOS resource forks, Finder/Explorer files)."""
    path = PurePosixPath(info.filename.replace("\\", "/"))
    return (
        info.is_dir()
        or (path.parts and path.parts[0] == "__MACOSX")
        or path.name in _JUNK_NAMES
        or path.name.startswith("._")
    )


def _read_zip_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, what: str, budget: _Budget) -> bytes:
    try:
        with zf.open(info) as fh:
            data = _read_capped(fh, info.file_size, budget)
            if fh.read(1):
                raise InputDataError(f"{what} holds more data than the archive declares; the archive is refused")
    except InputDataError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as exc:
        raise InputDataError(f"{what} could not be read ({_plain(exc)}); the archive is corrupted") from exc
    if len(data) != info.file_size:
        raise InputDataError(f"{what} is shorter than the archive declares; the archive is corrupted")
    return data


def _read_capped(fh: IO[bytes], n: int, budget: _Budget) -> bytes:
    """Read at most ``n`` bytes, in chunks, counting every chunk against the budget."""
    parts, left = [], n
    while left > 0:
        chunk = fh.read(min(_CHUNK, left))
        if not chunk:
            break
        budget.add_bytes(len(chunk))
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _read_file(path: Path, budget: _Budget) -> bytes:
    size = path.stat().st_size
    if size > budget.limits.max_total_bytes - budget.bytes:
        raise InputDataError(f"{path.name}: is {_mib(size)}; that is over the upload limit")
    with open(path, "rb") as fh:
        return _read_capped(fh, size, budget)


def _decode_png(
    data: bytes,
    what: str,
    expected: tuple[int, int, int] | None,
    budget: _Budget,
    *,
    channels: int | None = None,
    resize: int | None = None,
) -> np.ndarray:
    """PNG bytes -> (C, H, W) uint8. The size is checked from the header, before decoding."""
    limits = budget.limits
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=["PNG"])
            width, height = image.size
            if width * height > limits.max_pixels:
                raise InputDataError(
                    f"{what} is {width}x{height} pixels, over the limit of {limits.max_pixels:,} pixels per image"
                )
            if expected is not None and resize is None and (height, width) != expected[1:]:
                raise InputDataError(
                    f"{what} is {width}x{height} pixels; this model makes {expected[2]}x{expected[1]} images"
                )
            budget.add_pixels(width * height, what)
            image.load()
            image = _to_mode(image, channels if channels is not None else (expected[0] if expected else None))
            if resize is not None and image.size != (resize, resize):
                side = min(image.size)
                left, top = (image.width - side) // 2, (image.height - side) // 2
                image = image.crop((left, top, left + side, top + side)).resize(
                    (resize, resize), Image.Resampling.LANCZOS
                )
            array = np.asarray(image, dtype=np.uint8)
    except InputDataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InputDataError(
            f"{what} declares an enormous image ({_plain(exc)}); refused as a decompression bomb"
        ) from exc
    except UnidentifiedImageError as exc:
        raise InputDataError(f"{what} is not a PNG image (its bytes are not PNG data)") from exc
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise InputDataError(f"{what} is not a readable PNG image ({_plain(exc)}); the file is corrupted") from exc
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def _to_mode(image: Image.Image, channels: int | None) -> Image.Image:
    """8-bit L, RGB or RGBA: the requested channel count, else L for grey images and RGB
    for the rest (alpha dropped)."""
    if image.mode.startswith("I") or image.mode == "F":  # 16-bit grey: scale, PIL would clip
        grey = np.asarray(image, dtype=np.float64)
        top = 65535.0 if grey.max(initial=0) > 255 or image.mode.startswith("I;16") else 255.0
        image = Image.fromarray(np.clip(np.round(grey / top * 255), 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if channels is None:
        channels = 1 if image.mode in ("1", "L", "LA") else 3
    return image.convert(_MODE_FOR_CHANNELS[channels]) if image.mode != _MODE_FOR_CHANNELS[channels] else image


def _stack(arrays: list[np.ndarray], label: str, expected: tuple[int, int, int] | None) -> torch.Tensor:
    """(C, H, W) uint8 arrays -> (N, C, H, W) float32 in [-1, 1]; grey is promoted to RGB
    when the images are mixed and no channel count was asked for."""
    if not arrays:
        raise InputDataError(f"{label}: contains no images")
    if expected is None and len({a.shape[0] for a in arrays}) > 1:
        arrays = [np.repeat(a, 3, axis=0) if a.shape[0] == 1 else a for a in arrays]
    sizes = {a.shape[1:] for a in arrays}
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:4])
        raise InputDataError(f"{label}: images have different sizes ({shown}); all must be the same size")
    batch = np.stack(arrays).astype(np.float32) / 127.5 - 1.0
    return torch.from_numpy(batch)


# --------------------------------------------------------------------------------- MNIST


def _find_idx_images(folder: Path, split: str) -> Path:
    prefix = "train" if split == "train" else "t10k"
    for name in (f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"):
        for suffix in ("", ".gz"):
            if (folder / (name + suffix)).is_file():
                return folder / (name + suffix)
    raise InputDataError(f"{folder.name}: has no {prefix}-images-idx3-ubyte[.gz] file")


def _labels_next_to(images: Path) -> Path | None:
    name = images.name.replace("images", "labels").replace("idx3", "idx1")
    if name == images.name:
        return None
    stem = name[:-3] if name.endswith(".gz") else name
    for candidate in (stem, stem + ".gz"):
        if (images.parent / candidate).is_file():
            return images.parent / candidate
    return None


def _read_idx(path: Path, ndim: int, budget: _Budget, max_count: int) -> np.ndarray:
    """An IDX file (raw or gzipped) of unsigned bytes with ``ndim`` dimensions."""
    what = path.name
    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        opener = gzip.open if gzipped else open
        with opener(path, "rb") as fh:
            header = fh.read(4)
            if len(header) < 4 or header[:2] != b"\0\0":
                raise InputDataError(f"{what}: is not an IDX file (MNIST format); its header is wrong")
            if header[2] != 0x08:
                raise InputDataError(
                    f"{what}: holds IDX type 0x{header[2]:02x}; only unsigned bytes (0x08) are supported"
                )
            if header[3] != ndim:
                kind = "images (3 dimensions)" if ndim == 3 else "labels (1 dimension)"
                raise InputDataError(f"{what}: holds {header[3]}-dimensional data; expected {kind}")
            dims_raw = fh.read(4 * ndim)
            if len(dims_raw) < 4 * ndim:
                raise InputDataError(f"{what}: is truncated inside its header")
            dims = struct.unpack(f">{ndim}I", dims_raw)
            if dims[0] > max_count:
                raise InputDataError(f"{what}: has {dims[0]:,} entries; at most {max_count:,} are accepted")
            n = int(np.prod(dims, dtype=np.int64))
            data = _read_capped(fh, n, budget)
            if len(data) < n:
                raise InputDataError(f"{what}: is truncated ({len(data):,} of {n:,} data bytes)")
            if fh.read(1):
                raise InputDataError(f"{what}: has extra bytes after the {n:,} its header declares")
    except InputDataError:
        raise
    except (gzip.BadGzipFile, EOFError, OSError, zlib.error) as exc:
        raise InputDataError(f"{what}: could not be read ({_plain(exc)}); the file is corrupted") from exc
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _load_mnist_npz(path: Path, split: str, limits: UploadLimits) -> LabelledImages:
    label, budget = path.name, _Budget(limits, path.name)
    with _open_zip(path) as zf:
        members = {i.filename[:-4] if i.filename.endswith(".npy") else i.filename: i for i in zf.infolist()}
        x_key = "x_train" if split == "train" else "x_test"
        for image_key, label_key in ((x_key, "y" + x_key[1:]), ("images", "labels")):
            if image_key in members:
                break
        else:
            raise InputDataError(
                f"{label}: has arrays {', '.join(sorted(members)) or '(none)'}; expected {x_key!r} "
                f"(keras' mnist.npz) or 'images'"
            )
        what = f"{label}: array {image_key!r}"
        array = _read_npz_member(zf, members[image_key], what, budget, limits.max_images, images=True)
        images = _array_to_images(array, what, None)
        if images.shape[1] != 1:
            raise InputDataError(f"{what}: has {images.shape[1]} channels; MNIST images are greyscale")
        if label_key in members:
            lwhat = f"{label}: array {label_key!r}"
            raw = _read_npz_member(zf, members[label_key], lwhat, budget, limits.max_images, images=False)
            if raw.ndim != 1 or len(raw) != len(images):
                raise InputDataError(
                    f"{lwhat}: has shape {tuple(raw.shape)}; expected one label per image ({len(images):,})"
                )
            labels = torch.from_numpy(raw.astype(np.int64))
        else:
            labels = torch.full((len(images),), -1, dtype=torch.int64)
    if len(images) == 0:
        raise InputDataError(f"{what}: contains no images")
    return LabelledImages(images, labels)


# ------------------------------------------------------------------------------- helpers


def _pngs_in(folder: Path, *, recursive: bool) -> list[Path]:
    found: Iterable[Path] = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p
        for p in found
        if p.is_file()
        and p.suffix.lower() == ".png"
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _check_size(c: int, h: int, w: int, what: str, expected: tuple[int, int, int] | None) -> None:
    if expected is None:
        return
    ec, eh, ew = expected
    if (h, w) != (eh, ew):
        raise InputDataError(f"{what}: images are {w}x{h} pixels; this model makes {ew}x{eh} images")
    if c != ec:
        raise InputDataError(
            f"{what}: images have {c} channel{'s' if c != 1 else ''}; this model makes {ec}-channel images"
        )


def _check_expected(expected: tuple[int, int, int]) -> tuple[int, int, int]:
    shape = tuple(int(v) for v in expected)
    if len(shape) != 3 or shape[0] not in (1, 3, 4) or min(shape) < 1:
        raise ValueError(f"expected_shape must be (C, H, W) with C = 1, 3 or 4, not {expected}")
    return shape  # type: ignore[return-value]


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _plain(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text if len(text) < 200 else text[:200] + "..."
