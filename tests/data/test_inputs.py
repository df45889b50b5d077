"""Input kinds and what fit records of them."""

import numpy as np
import pandas as pd
import pytest

from sktune.data import input_kind


@pytest.mark.parametrize(
    ("X", "kind"),
    [
        (np.zeros((3, 2)), "array"),
        (np.zeros((3, 1, 4, 4), dtype=np.float32), "array"),
        (np.zeros((3, 4, 4, 3), dtype=np.uint8), "image"),
        (np.zeros((3, 4, 4), dtype=np.uint8), "image"),
        (np.zeros((3, 2), dtype=np.uint8), "array"),
        (["a b", "c"], "text"),
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
