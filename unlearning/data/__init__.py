"""Datasets and loaders. Every loader returns float32 tensors in [-1, 1], NCHW."""

from unlearning.data.digits import DIGIT_LABELS, LabelledImages, digits_splits
from unlearning.data.files import (
    UploadLimits,
    load_image_folder,
    load_images,
    load_mnist,
    png_bytes,
    save_images_npz,
    save_png,
    save_png_zip,
    to_uint8,
)
from unlearning.data.shapes import COLOURS, SHAPES, SIZES, ShapesData, make_shapes

__all__ = [
    "COLOURS",
    "DIGIT_LABELS",
    "LabelledImages",
    "SHAPES",
    "SIZES",
    "ShapesData",
    "UploadLimits",
    "digits_splits",
    "load_image_folder",
    "load_images",
    "load_mnist",
    "make_shapes",
    "png_bytes",
    "save_images_npz",
    "save_png",
    "save_png_zip",
    "to_uint8",
]
