"""Notebooks are tests: each runs top to bottom in a real Jupyter kernel; none is committed with large outputs."""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
MAX_OUTPUTS = 40
MAX_OUTPUT_BYTES = 20_000


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_committed_without_large_outputs(path):
    nb = json.loads(path.read_text())
    outputs = [o for cell in nb["cells"] for o in cell.get("outputs", [])]
    assert len(outputs) <= MAX_OUTPUTS and len(json.dumps(outputs)) <= MAX_OUTPUT_BYTES, f"clear the outputs of {path.name}"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    # The kernel is started as `python`: make it this interpreter, the one with paradl_tf installed.
    monkeypatch.setenv("PATH", os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=540, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
