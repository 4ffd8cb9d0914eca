"""The exploration notebook runs top to bottom with its default parameters, and draws its figures."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NB = Path(__file__).resolve().parents[1] / "notebooks" / "explore.ipynb"


@pytest.mark.slow
def test_notebook_executes_and_every_figure_cell_renders(weights_cache):
    nb = nbformat.read(NB, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "strip outputs"
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(NB.parent)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors
    figure_cells = [c for c in code if "show(" in c.source and "def show" not in c.source]
    assert len(figure_cells) >= 5
    for c in figure_cells:  # a figure after the training cell too (plots must not switch backends)
        pngs = [o for o in c.outputs if o.output_type == "display_data" and "image/png" in o.data]
        assert pngs, c.source[:80]  # the SR figures too: this checkout ships the SR models
