"""Loaders for images users bring (real files under tmp_path) and the shapes dataset."""

from __future__ import annotations

import gzip
import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unlearning.data import (
    COLOURS,
    SHAPES,
    SIZES,
    UploadLimits,
    load_image_folder,
    load_images,
    load_mnist,
    make_shapes,
    png_bytes,
    save_images_npz,
    save_png,
    save_png_zip,
)
from unlearning.errors import InputDataError, LetheError

STEP = 1 / 255 + 1e-6  # uint8 rounding in [-1, 1] is at most half of 2/255


def random_images(n: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, c, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def png_of(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("channels", [1, 3])
def test_npz_round_trip(tmp_path: Path, channels: int) -> None:
    images = random_images(7, channels, 8, 8)
    path = save_images_npz(images, tmp_path / "imgs.npz")
    loaded = load_images(path, expected_shape=(channels, 8, 8))
    assert loaded.dtype == torch.float32 and loaded.shape == images.shape
    assert torch.allclose(loaded, images, atol=STEP)
    assert torch.allclose(load_images(path), loaded)  # layout found without a hint too


def test_npz_layouts_and_dtypes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)  # NHWC
    np.savez(tmp_path / "nhwc.npz", images=u8)
    out = load_images(tmp_path / "nhwc.npz")
    assert out.shape == (5, 3, 6, 6)
    assert torch.allclose(out, torch.from_numpy(u8).permute(0, 3, 1, 2).float() / 127.5 - 1)

    grey = rng.random((4, 5, 7), dtype=np.float32)  # NHW floats in [0, 1], the only array
    np.savez_compressed(tmp_path / "nhw.npz", whatever=grey)
    out = load_images(tmp_path / "nhw.npz", expected_shape=(1, 5, 7))
    assert out.shape == (4, 1, 5, 7) and torch.allclose(out[:, 0], torch.from_numpy(grey) * 2 - 1, atol=1e-6)

    ambiguous = rng.integers(0, 256, (2, 3, 3, 3), dtype=np.uint8)  # NCHW or NHWC: the hint decides
    np.savez(tmp_path / "amb.npz", images=ambiguous)
    as_nhwc = load_images(tmp_path / "amb.npz", expected_shape=(3, 3, 3))
    assert as_nhwc.shape == (2, 3, 3, 3)
    assert torch.equal(load_images(tmp_path / "amb.npz"), torch.from_numpy(ambiguous).float() / 127.5 - 1)

    square_rgb = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)  # reads as 4x4 RGB, not 4x3 RGBA
    np.savez(tmp_path / "sq.npz", images=square_rgb)
    assert load_images(tmp_path / "sq.npz").shape == (2, 3, 4, 4)

    np.save(tmp_path / "plain.npy", u8)
    assert load_images(tmp_path / "plain.npy").shape == (5, 3, 6, 6)


def test_png_loading_and_mode_conversion(tmp_path: Path) -> None:
    image = random_images(1, 3, 5, 6)[0]
    path = save_png(image, tmp_path / "one.png")
    loaded = load_images(path)
    assert loaded.shape == (1, 3, 5, 6) and torch.allclose(loaded[0], image, atol=STEP)
    grey = load_images(path, expected_shape=(1, 5, 6))
    assert grey.shape == (1, 1, 5, 6)

    grey_path = tmp_path / "grey.png"
    grey_path.write_bytes(png_of(np.full((4, 4), 255, np.uint8), "L"))
    assert torch.equal(load_images(grey_path), torch.ones(1, 1, 4, 4))
    rgb = load_images(grey_path, expected_shape=(3, 4, 4))
    assert rgb.shape == (1, 3, 4, 4) and torch.equal(rgb, torch.ones(1, 3, 4, 4))

    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba_path = tmp_path / "rgba.png"
    rgba_path.write_bytes(png_of(rgba, "RGBA"))
    out = load_images(rgba_path)  # alpha dropped
    assert out.shape == (1, 3, 4, 4) and torch.equal(out[0, 0], torch.ones(4, 4))

    deep_path = tmp_path / "deep.png"  # 16-bit grey is scaled, not clipped
    Image.fromarray(np.full((3, 3), 32768, np.uint16)).save(deep_path)
    assert abs(load_images(deep_path).mean().item()) < 0.01


def test_zip_of_pngs(tmp_path: Path) -> None:
    images = random_images(4, 3, 8, 8, seed=1)
    path = tmp_path / "negatives.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("set/", b"")
        for i, image in enumerate(images):
            zf.writestr(f"set/{i}.png", png_bytes(image))
        zf.writestr("__MACOSX/set/._0.png", b"\0\5\26\7 resource fork")
        zf.writestr("set/.DS_Store", b"Bud1")
    loaded = load_images(path, expected_shape=(3, 8, 8))
    assert loaded.shape == (4, 3, 8, 8) and torch.allclose(loaded, images, atol=STEP)

    helper = save_png_zip(images[:2], tmp_path / "two.zip")
    assert torch.allclose(load_images(helper), images[:2], atol=STEP)


def test_zip_of_mixed_grey_and_rgb_is_rgb(tmp_path: Path) -> None:
    path = tmp_path / "mixed.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("a.png", png_of(np.zeros((4, 4), np.uint8), "L"))
        zf.writestr("b.png", png_of(np.zeros((4, 4, 3), np.uint8), "RGB"))
    assert load_images(path).shape == (2, 3, 4, 4)
    assert load_images(path, expected_shape=(1, 4, 4)).shape == (2, 1, 4, 4)


# --------------------------------------------------------------------------------- MNIST


def write_idx(path: Path, array: np.ndarray, *, compress: bool) -> Path:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if compress else payload)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_idx(tmp_path: Path, compress: bool) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 6, dtype=np.uint8)
    gz = ".gz" if compress else ""
    images_path = write_idx(tmp_path / f"train-images-idx3-ubyte{gz}", pixels, compress=compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{gz}", labels, compress=compress)
    for source in (images_path, tmp_path):  # the file, or the folder holding it
        data = load_mnist(source)
        assert data.images.shape == (6, 1, 28, 28) and data.images.dtype == torch.float32
        assert torch.allclose(data.images[:, 0], torch.from_numpy(pixels).float() / 127.5 - 1)
        assert torch.equal(data.labels, torch.from_numpy(labels).long())


def test_mnist_idx_without_labels(tmp_path: Path) -> None:
    path = write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8), compress=False)
    data = load_mnist(path)
    assert len(data) == 3 and torch.equal(data.labels, torch.full((3,), -1))
    assert torch.equal(data.images, -torch.ones(3, 1, 28, 28))


def test_mnist_npz_keras_and_plain(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    x_train, x_test = rng.integers(0, 256, (5, 28, 28), np.uint8), rng.integers(0, 256, (2, 28, 28), np.uint8)
    y_train, y_test = np.arange(5, dtype=np.uint8), np.array([7, 8], np.uint8)
    np.savez_compressed(tmp_path / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    train = load_mnist(tmp_path / "mnist.npz")
    assert train.images.shape == (5, 1, 28, 28) and train.labels.tolist() == [0, 1, 2, 3, 4]
    assert torch.allclose(train.images[:, 0], torch.from_numpy(x_train).float() / 127.5 - 1)
    test = load_mnist(tmp_path / "mnist.npz", split="test")
    assert test.labels.tolist() == [7, 8]

    np.savez(tmp_path / "plain.npz", images=x_test, labels=np.array([3, 1], np.int64))
    assert load_mnist(tmp_path / "plain.npz").labels.tolist() == [3, 1]


# -------------------------------------------------------------------------- image folders


def test_image_folder_labels(tmp_path: Path) -> None:
    root = tmp_path / "pets"
    for name, count, value in (("dog", 2, 255), ("cat", 3, 0), ("emu", 1, 128)):
        for i in range(count):
            (root / name / "nested").mkdir(parents=True, exist_ok=True)
            target = root / name / ("nested" if i == 0 else "") / f"{i}.png"
            target.write_bytes(png_of(np.full((6, 6), value, np.uint8), "L"))
    (root / "dog" / "README.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    data, classes = load_image_folder(root)
    assert classes == ["cat", "dog", "emu"]
    assert sorted(data.labels.tolist()) == [0, 0, 0, 1, 1, 2]
    assert data.images.shape == (6, 1, 6, 6)
    for label, value in ((0, -1.0), (1, 1.0)):
        chosen = data.images[data.labels == label]
        assert torch.equal(chosen, torch.full_like(chosen, value))

    rgb, _ = load_image_folder(root, channels=3, resolution=4)
    assert rgb.images.shape == (6, 3, 4, 4)


def test_flat_image_folder_is_one_class(tmp_path: Path) -> None:
    for i in range(2):
        save_png(random_images(1, 3, 5, 9)[0], tmp_path / f"{i}.png")
    data, classes = load_image_folder(tmp_path, channels=3, resolution=5)  # centre crop, then resize
    assert classes == [tmp_path.name] and data.labels.tolist() == [0, 0]
    assert data.images.shape == (2, 3, 5, 5)


def test_image_folder_problems(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(png_of(np.zeros((4, 4), np.uint8)))
    (tmp_path / "b").mkdir()
    with pytest.raises(InputDataError, match="class folder 'b' has no PNG images"):
        load_image_folder(tmp_path)
    (tmp_path / "b" / "y.png").write_bytes(png_of(np.zeros((5, 5), np.uint8)))
    with pytest.raises(InputDataError, match="'b/y.png' is 5x5 pixels but 'a/x.png' is 4x4"):
        load_image_folder(tmp_path)
    (tmp_path / "b" / "y.png").write_text("hello")
    with pytest.raises(InputDataError, match=r"'b/y.png' is not a PNG"):
        load_image_folder(tmp_path)


# -------------------------------------------------------------------------------- shapes


def test_shapes_attributes_match_pixels() -> None:
    data = make_shapes(300, resolution=16, seed=3)
    images, attrs = data.images, data.attributes
    assert images.shape == (300, 3, 16, 16) and images.dtype == torch.float32
    assert images.min() == -1 and images.max() == 1
    assert set(attrs) == {"shape", "colour", "size", "x", "y"}
    assert [len(SHAPES), len(COLOURS), len(SIZES)] == [3, 3, 2]
    for name, names in (("shape", SHAPES), ("colour", COLOURS), ("size", SIZES)):
        assert attrs[name].dtype == torch.int64 and set(attrs[name].tolist()) == set(range(len(names)))

    brightness = (images + 1).sum(dim=(2, 3))  # (N, 3)
    assert torch.equal(brightness.argmax(dim=1), attrs["colour"])
    lit = (images > 0).any(dim=1)  # (N, H, W)
    counts = lit.sum(dim=(1, 2)).float()
    assert (counts > 0).all()
    assert counts[attrs["size"] == 1].min() > counts[attrs["size"] == 0].max()

    rows, cols = torch.arange(16).view(1, 16, 1) + 0.5, torch.arange(16).view(1, 1, 16) + 0.5
    big = float(16 * 16)
    x_mid = (torch.where(lit, cols, big).amin(dim=(1, 2)) + torch.where(lit, cols, -big).amax(dim=(1, 2))) / 2
    y_mid = (torch.where(lit, rows, big).amin(dim=(1, 2)) + torch.where(lit, rows, -big).amax(dim=(1, 2))) / 2
    assert (x_mid - attrs["x"]).abs().max() < 1.0 and (y_mid - attrs["y"]).abs().max() < 1.0

    width = torch.where(lit, cols, -big).amax(dim=(1, 2)) - torch.where(lit, cols, big).amin(dim=(1, 2)) + 1
    height = torch.where(lit, rows, -big).amax(dim=(1, 2)) - torch.where(lit, rows, big).amin(dim=(1, 2)) + 1
    fill = counts / (width * height)  # squares fill their box, circles ~pi/4, triangles ~1/2
    large = attrs["size"] == 1
    mean_fill = [fill[large & (attrs["shape"] == s)].mean().item() for s in range(3)]
    assert mean_fill[1] > 0.95 and 0.65 < mean_fill[0] < 0.9 and mean_fill[2] < 0.65


def test_shapes_deterministic_per_seed() -> None:
    a, b, c = make_shapes(20, seed=5), make_shapes(20, seed=5), make_shapes(20, seed=6)
    assert torch.equal(a.images, b.images)
    assert all(torch.equal(a.attributes[k], b.attributes[k]) for k in a.attributes)
    assert not torch.equal(a.images, c.images)
    assert make_shapes(4, resolution=32).images.shape == (4, 3, 32, 32)
    assert torch.equal(a.labelled("shape").labels, a.attributes["shape"])


def test_shapes_round_trip_through_files(tmp_path: Path) -> None:
    data = make_shapes(10, seed=0)
    path = save_images_npz(data.images, tmp_path / "shapes.npz")
    assert torch.equal(load_images(path, expected_shape=(3, 16, 16)), data.images)


# ---------------------------------------------------------------------------- bad inputs


def _png_header_patched(width: int, height: int) -> bytes:
    data = bytearray(png_of(np.zeros((1, 1), np.uint8), "L"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def _zip(tmp_path: Path, entries: dict[str, bytes], name: str = "upload.zip", method: int = zipfile.ZIP_STORED) -> Path:
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        for entry, payload in entries.items():
            zf.writestr(entry, payload)
    return path


def _zeros_zip(tmp_path: Path, megabytes: int) -> Path:
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open("bomb.png", "w") as fh:
            chunk = bytes(1 << 20)
            for _ in range(megabytes):
                fh.write(chunk)
    return path


def _lying_zip(tmp_path: Path) -> Path:
    """A stored entry whose central directory claims it is smaller than it is."""
    payload = png_of(np.zeros((8, 8), np.uint8)) + bytes(4096)
    path = _zip(tmp_path, {"a.png": payload})
    data = bytearray(path.read_bytes())
    central = data.index(b"PK\x01\x02")
    data[central + 24 : central + 28] = struct.pack("<I", 100)
    path.write_bytes(bytes(data))
    return path


def _text_png(tmp_path: Path) -> Path:
    path = tmp_path / "x.png"
    path.write_text("this is not an image\n")
    return path


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    (tmp_path / name).write_bytes(data)
    return tmp_path / name


def _npz(tmp_path: Path, name: str, **arrays: np.ndarray) -> Path:
    np.savez(tmp_path / name, **arrays)
    return tmp_path / name


def _pickled_npz(tmp_path: Path) -> Path:
    objects = np.empty(2, dtype=object)
    objects[0], objects[1] = {"a": 1}, [np.zeros((8, 8))]
    np.savez(tmp_path / "evil.npz", images=objects)  # savez pickles object arrays
    with zipfile.ZipFile(tmp_path / "evil.npz") as zf:
        assert b"'descr': '|O'" in zf.read("images.npy")  # a pickle stream follows this header
    return tmp_path / "evil.npz"


BAD_INPUTS = {
    "text-named-png": (_text_png, {}, r"x\.png is not a PNG image"),
    "png-wrong-size": (
        lambda t: _write(t, "big.png", png_of(np.zeros((28, 28), np.uint8))),
        {"expected_shape": (1, 8, 8)},
        r"big\.png is 28x28 pixels; this model makes 8x8 images",
    ),
    "zip-png-wrong-size": (
        lambda t: _zip(t, {"a/3.png": png_of(np.zeros((28, 28), np.uint8))}, "negatives.zip"),
        {"expected_shape": (1, 8, 8)},
        r"negatives\.zip: entry 'a/3\.png' is 28x28 pixels; this model makes 8x8 images",
    ),
    "npz-wrong-channels": (
        lambda t: _npz(t, "rgb.npz", images=np.zeros((2, 3, 8, 8), np.uint8)),
        {"expected_shape": (1, 8, 8)},
        r"rgb\.npz: array 'images': images have 3 channels; this model makes 1-channel images",
    ),
    "npz-bad-layout": (
        lambda t: _npz(t, "odd.npz", images=np.zeros((2, 5, 8, 8), np.uint8)),
        {},
        r"odd\.npz: array 'images': has shape \(2, 5, 8, 8\)",
    ),
    "npz-pickled-objects": (_pickled_npz, {}, r"evil\.npz: array 'images': holds Python objects \(stored with pickle\)"),
    "npz-float-out-of-range": (
        lambda t: _npz(t, "float.npz", images=np.linspace(-1, 1, 2 * 64, dtype=np.float32).reshape(2, 1, 8, 8)),
        {},
        r"float\.npz: array 'images': float values range from -1 to 1; float images must be in \[0, 1\]",
    ),
    "npz-nan": (
        lambda t: _npz(t, "nan.npz", images=np.full((1, 1, 4, 4), np.nan, np.float32)),
        {},
        r"nan\.npz.*NaN",
    ),
    "npz-int64": (
        lambda t: _npz(t, "ints.npz", images=np.zeros((1, 4, 4), np.int64)),
        {},
        r"ints\.npz.*dtype int64; images must be uint8",
    ),
    "npz-several-arrays": (
        lambda t: _npz(t, "two.npz", a=np.zeros((1, 4, 4), np.uint8), b=np.zeros((1, 4, 4), np.uint8)),
        {},
        r"two\.npz: has arrays a, b; expected one named 'images' or a single array",
    ),
    "npz-empty": (
        lambda t: _npz(t, "none.npz", images=np.zeros((0, 4, 4), np.uint8)),
        {},
        r"none\.npz: contains no images",
    ),
    "npz-not-a-zip": (lambda t: _write(t, "junk.npz", b"garbage"), {}, r"junk\.npz: is not a readable zip"),
    "empty-zip": (lambda t: _zip(t, {}, "empty.zip"), {}, r"empty\.zip: contains no PNG images"),
    "zip-only-clutter": (
        lambda t: _zip(t, {"dir/": b"", "__MACOSX/._a.png": b"x"}, "clutter.zip"),
        {},
        r"clutter\.zip: contains no PNG images",
    ),
    "zip-non-png-entry": (
        lambda t: _zip(t, {"a.png": png_of(np.zeros((4, 4), np.uint8)), "notes.txt": b"hi"}),
        {},
        r"upload\.zip: entry 'notes\.txt' is not a PNG",
    ),
    "zip-corrupt-png-entry": (
        lambda t: _zip(t, {"a.png": b"\x89PNG\r\n\x1a\n" + b"\0" * 30}),
        {},
        r"upload\.zip: entry 'a\.png' is not a",
    ),
    "zip-dotdot-path": (
        lambda t: _zip(t, {"../evil.png": png_of(np.zeros((4, 4), np.uint8))}),
        {},
        r"upload\.zip: entry '\.\./evil\.png' has an unsafe path",
    ),
    "zip-absolute-path": (
        lambda t: _zip(t, {"C:/evil.png": png_of(np.zeros((4, 4), np.uint8))}),
        {},
        r"entry 'C:/evil\.png' has an unsafe path",
    ),
    "zip-bomb-total-size": (
        lambda t: _zeros_zip(t, 50),
        {"limits": UploadLimits(max_total_bytes=2**20, max_compression_ratio=1e6)},
        r"bomb\.zip: declares 50\.0 MiB of uncompressed data; the upload limit is 1\.0 MiB",
    ),
    "zip-bomb-ratio-default-limits": (
        lambda t: _zeros_zip(t, 20),
        {},
        r"bomb\.zip: entry 'bomb\.png' expands [\d,]+x when uncompressed \(limit 200x\); this looks like a zip bomb",
    ),
    "zip-declared-size-lies": (_lying_zip, {}, r"upload\.zip: entry 'a\.png'"),
    "zip-too-many-files": (
        lambda t: _zip(t, {f"{i}.png": png_of(np.zeros((2, 2), np.uint8)) for i in range(5)}),
        {"limits": UploadLimits(max_files=3)},
        r"upload\.zip: has 5 entries; at most 3 are accepted",
    ),
    "zip-too-many-images": (
        lambda t: _zip(t, {f"{i}.png": png_of(np.zeros((2, 2), np.uint8)) for i in range(5)}),
        {"max_count": 3},
        r"upload\.zip: has 5 images; at most 3 are accepted",
    ),
    "npz-too-many-images": (
        lambda t: _npz(t, "many.npz", images=np.zeros((5, 4, 4), np.uint8)),
        {"max_count": 3},
        r"many\.npz: array 'images': has 5 images; at most 3 are accepted",
    ),
    "not-a-zip": (lambda t: _write(t, "fake.zip", b"PK not really"), {}, r"fake\.zip: is not a readable zip archive"),
    "png-decompression-bomb-pil": (
        lambda t: _write(t, "huge.png", _png_header_patched(100_000, 100_000)),
        {},
        r"huge\.png declares an enormous image",
    ),
    "png-decompression-bomb-warning": (
        lambda t: _write(t, "large.png", _png_header_patched(10_000, 10_000)),
        {"limits": UploadLimits(max_pixels=10**9)},
        r"large\.png declares an enormous image",
    ),
    "png-over-pixel-limit": (
        lambda t: _write(t, "wide.png", _png_header_patched(5000, 5000)),
        {},
        r"wide\.png is 5000x5000 pixels, over the limit",
    ),
    "unsupported-suffix": (lambda t: _write(t, "photo.jpg", b"\xff\xd8"), {}, r"photo\.jpg: unsupported file type '\.jpg'"),
    "missing-file": (lambda t: t / "nowhere.npz", {}, r"nowhere\.npz: no such file"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_inputs_are_refused_in_words(tmp_path: Path, case: str) -> None:
    build, kwargs, message = BAD_INPUTS[case]
    path = build(tmp_path)
    with pytest.raises(InputDataError, match=message) as caught:
        load_images(path, **kwargs)
    assert isinstance(caught.value, LetheError)


def test_pickled_npz_is_never_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pickle

    def boom(*args, **kwargs):  # pragma: no cover - reaching this is the failure
        raise AssertionError("pickle was used")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    with pytest.raises(InputDataError, match="pickle"):
        load_images(_pickled_npz(tmp_path))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda t: _write(t, "train-images-idx3-ubyte", b"nope"), "not an IDX file"),
        (
            lambda t: _write(t, "train-images-idx3-ubyte", struct.pack(">BBBBIII", 0, 0, 8, 3, 5, 28, 28) + bytes(100)),
            r"is truncated \(100 of 3,920 data bytes\)",
        ),
        (lambda t: _write(t, "x-idx3-ubyte.gz", b"\x1f\x8b garbage"), "could not be read"),
        (
            lambda t: write_idx(t / "train-labels-idx1-ubyte", np.zeros(3, np.uint8), compress=False),
            "holds 1-dimensional data; expected images",
        ),
        (lambda t: _npz(t, "keras.npz", y_train=np.zeros(3, np.uint8)), "expected 'x_train'"),
        (lambda t: t, "has no train-images-idx3-ubyte"),
    ],
)
def test_bad_mnist_files(tmp_path: Path, build, message: str) -> None:
    path = build(tmp_path)
    with pytest.raises(InputDataError, match=message):
        load_mnist(path)


def test_mnist_label_count_mismatch(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28), np.uint8), compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(3, np.uint8), compress=False)
    with pytest.raises(InputDataError, match="has 3 labels but train-images-idx3-ubyte has 4 images"):
        load_mnist(tmp_path)
