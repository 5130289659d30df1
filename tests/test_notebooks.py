"""Notebooks are tests: each runs top to bottom in a real Jupyter kernel; none is committed with large outputs.
A notebook that measures something (05: the bench's network part, tiny) has its measurement checked too."""

import json
import os
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from paradl_tf.benchmark.report.network import network_tables
from paradl_tf.cluster import hosts

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
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
    measured = MEASURES.get(path.name)
    if measured:
        measured[0].unlink(missing_ok=True)  # what an earlier run left must not pass for this run's
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=540, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    if measured:
        measured[1](measured[0])


def _network_part_measured(entry_path: Path) -> None:
    """Tiny: both strategies with every link at 10 Mbit on emulated hosts, each beside its model and plan --link's
    share; where this machine cannot make emulated hosts (no root), the notebook says why and measures nothing."""
    why = hosts.hosts_available()
    if why:
        assert not entry_path.exists()
        return
    network = json.loads(entry_path.read_text())
    assert network["status"] == "ok", network
    assert [(p["method"], p["x"]) for p in network["links"]] == [("multi_worker_mirrored_2", "10Mbit"),
                                                                   ("parameter_server", "10Mbit")]
    for p in network["links"]:
        assert p["status"] == "ok" and FIGURE <= p["examples_per_sec"].keys() and p["val_target"] == 0.9, p
        # No unshaped run in tiny mode: the model's compute is plan --compute=cluster's, its cluster on loopback.
        assert p["model"]["applies"] and p["model"]["compute_source"].startswith("plan's (measured here: the "
                                                                                 "config's cluster"), p["model"]
        assert p["within"] in (True, False) and p["measured_over_model"] > 0
        assert p["accuracy_curves"][0]["val_accuracy"] and FIGURE <= p["val_accuracy"].keys()
    for c in network["plan_check"]:  # no unshaped run in tiny mode: nothing measured to check the share against
        assert 0 < c["predicted_share"] < 1 and c["measured_share"] is None and c["within"] is None
    md = network_tables({"mode": "tiny", "network": network})  # the bench's RESULTS.md section of this entry
    assert "## Sync against async on emulated hosts" in md and "| mlp | parameter servers (2+1) | 10Mbit |" in md
    assert not hosts.leftovers(dead_only=True)  # every namespace and cgroup of the part's runs is gone


FIGURE = {"min", "median", "max", "n", "samples"}
MEASURES = {"05_sync_or_async.ipynb": (ROOT / "runs/notebooks/05_sync_or_async/bench/network.json",
                                       _network_part_measured)}
"""Per notebook: the file its measurement is written to, and the check of it."""
