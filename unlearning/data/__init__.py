"""Datasets and loaders. Every loader returns float32 tensors in [-1, 1], NCHW."""

from unlearning.data.digits import DIGIT_LABELS, LabelledImages, digits_splits

DATASETS = {"digits": digits_splits}

__all__ = ["DIGIT_LABELS", "DATASETS", "LabelledImages", "digits_splits"]
