"""The generated API reference is current, and every public object documents itself."""

import inspect
import runpy
from pathlib import Path

import pytest

import sktune
import sktune.accelerate

ROOT = Path(__file__).parents[1]


def test_api_reference_is_current():
    # make_api.py --check, run here rather than in a fresh interpreter.
    render = runpy.run_path(str(ROOT / "docs" / "make_api.py"))["render"]
    assert (ROOT / "docs" / "api.md").read_text() == render(), (
        "docs/api.md is stale: run python docs/make_api.py"
    )


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
