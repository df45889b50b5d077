"""Data handling: input kinds and checks, texts, images."""

from .images import ImagePreprocess
from .inputs import (
    FittedInput,
    check_fit_data,
    check_predict_data,
    encode_labels,
    input_kind,
)
from .text import TextCollator, TextDataset

__all__ = [
    "FittedInput",
    "ImagePreprocess",
    "TextCollator",
    "TextDataset",
    "check_fit_data",
    "check_predict_data",
    "encode_labels",
    "input_kind",
]
