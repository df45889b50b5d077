"""Input kinds and what fit records of them."""

import numpy as np
import pandas as pd
import pytest
import torch

from sktune.data import FittedInput, input_kind


@pytest.mark.parametrize(
    ("X", "kind"),
    [
        (np.zeros((3, 2)), "array"),
        (np.zeros((3, 1, 4, 4), dtype=np.float32), "array"),
        (np.zeros((3, 4, 4, 3), dtype=np.uint8), "image"),
        (np.zeros((3, 4, 4), dtype=np.uint8), "image"),
        (np.zeros((3, 2), dtype=np.uint8), "array"),
        # Channels last when fewer than either side (multispectral bands) ...
        (np.zeros((3, 32, 32, 5), dtype=np.uint8), "image"),
        # ... else channels first, as a float array.
        (np.zeros((3, 3, 32, 32), dtype=np.uint8), "array"),
        (["a b", "c"], "text"),
        (["", "c"], "text"),
        ([("a", "b", "c")], "pairs"),  # a bad pair, reported as one
        ([("", "b")], "pairs"),
        (np.array(["a", "b"]), "text"),
        (pd.Series(["a", "b"]), "text"),
        (pd.DataFrame({"q": ["a"], "a": ["b"]}), "pairs"),
        ([("a", "b")], "pairs"),
        (np.array([["a", "b"]], dtype=object), "pairs"),
        ({"input_ids": np.zeros((2, 3))}, "mapping"),
        (np.array([[1.0, 2.0]], dtype=object), "array"),
    ],
)
def test_input_kind(X, kind):
    assert input_kind(X) == kind


@pytest.mark.parametrize(
    ("X", "kind", "spec"),
    [
        (np.zeros((5, 3), np.float32), "array", FittedInput("array", (3,), "float32")),
        (
            np.zeros((5, 4, 4, 3), np.uint8),
            "image",
            FittedInput("image", (4, 4, 3), "uint8"),
        ),
        (["a", "b"], "text", FittedInput("text")),
        (
            {"input_ids": torch.zeros(5, 7, dtype=torch.long)},
            "mapping",
            FittedInput("mapping", fields=(("input_ids", "int64", (7,)),)),
        ),
    ],
)
def test_the_fitted_input_spec_records_shapes_not_samples(X, kind, spec):
    fitted = FittedInput.of(X, kind)
    assert fitted == spec
    example, again = fitted.example(), fitted.example()
    if isinstance(example, np.ndarray):
        assert example.shape == (1, *spec.shape) and example.dtype == spec.dtype
        np.testing.assert_array_equal(example, again)  # the same every time
    elif isinstance(example, dict):
        assert example["input_ids"].shape == (1, 7)
        assert example["input_ids"].dtype == torch.long
    else:
        assert len(example) == 1 and isinstance(example[0], str)
