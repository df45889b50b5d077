"""The generated API reference is current, and every public object documents itself."""

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import sktune
import sktune.accelerate

ROOT = Path(__file__).parents[1]


def test_api_reference_is_current():
    result = subprocess.run(
        [sys.executable, str(ROOT / "docs" / "make_api.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    "obj",
    [getattr(sktune, n) for n in sktune.__all__]
    + [getattr(sktune.accelerate, n) for n in sktune.accelerate.__all__],
    ids=lambda o: o.__name__,
)
def test_public_objects_have_numpydoc_docstrings_with_an_example(obj):
    doc = inspect.getdoc(obj)
    assert "Examples\n--------" in doc
    if inspect.isclass(obj) or inspect.signature(obj).parameters:
        assert "Parameters\n----------" in doc
