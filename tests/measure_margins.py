"""The margin of every check that compares two runs' numbers: its measured differences for several seeds against
its tolerance, as a markdown table.

    .venv/bin/python tests/measure_margins.py                  # seeds 0-4, about 25 minutes on 2 cores
    .venv/bin/python tests/measure_margins.py --seeds 0 1 --out margins.md

The tests run under pytest with --equivalence-seed (the `equivalence` fixture records each difference in the
junit XML); the notebooks' check cells run as they are, with train.seed set on every config they load.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TESTS = [
    "tests/test_sync_equivalence.py::test_mirrored_matches_one_device",
    "tests/test_model_parallel.py::test_placed_model_computes_what_the_unplaced_model_computes",
    "tests/test_multiworker.py::test_two_workers_match_mirrored_in_one_process",
    "tests/test_multiworker.py::test_sigkill_worker_stops_the_job_and_rerun_resumes_to_the_same_weights",
    "tests/test_train_cli.py::test_killed_mirrored_run_resumes_from_its_backup_to_the_same_weights",
]
# Notebook: the variables its check cell (the one that calls set_floatx) computes, and their tolerance.
NOTEBOOKS = {
    "01_sync_data_parallel.ipynb": (["diff"], 1e-10),
    "03_model_parallel.ipynb": (["diff_m1", "diff_m4"], 1e-10),
}
NOTEBOOK_RUNNER = """
import json, sys
import nbformat
import paradl_tf as pdl

name, names, seeds = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
cells = [c.source for c in nbformat.read(name, as_version=4).cells if c.cell_type == "code"]
namespace = {}
exec(cells[0], namespace)  # imports, logical devices
check = next(c for c in cells if "set_floatx" in c)
load_config = pdl.load_config
out = {}
for seed in seeds:
    pdl.load_config = lambda path, overrides=(): load_config(path, [*overrides, f"train.seed={seed}"])
    exec(check, namespace)
    out[seed] = {n: float(namespace[n]) for n in names}
print("MEASURED " + json.dumps(out))
"""


def measure_tests(seeds: list[int]) -> dict[str, dict]:
    """{check: {"tolerance": t, "values": {seed: difference}}} for every difference the tests record."""
    rows: dict[str, dict] = {}
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            xml = Path(tmp) / "junit.xml"
            proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   f"--equivalence-seed={seed}", f"--junitxml={xml}", *TESTS], cwd=ROOT)
            if proc.returncode not in (0, 1):
                raise SystemExit(f"pytest exited {proc.returncode} for seed {seed}")
            for case in ET.parse(xml).iter("testcase"):
                props = {p.get("name"): float(p.get("value")) for p in case.iter("property")}
                tolerance = props.pop("equivalence_tolerance", None)
                for name, value in props.items():
                    check = f"{Path(case.get('classname').replace('.', '/')).name}::{case.get('name')} " \
                            f"{name.removeprefix('equivalence_')}"
                    rows.setdefault(check, {"tolerance": tolerance, "values": {}})["values"][seed] = value
    return rows


def measure_notebooks(seeds: list[int]) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for name, (names, tolerance) in NOTEBOOKS.items():
        proc = subprocess.run([sys.executable, "-c", NOTEBOOK_RUNNER, name, json.dumps(names), json.dumps(seeds)],
                              cwd=ROOT / "notebooks", capture_output=True, text=True,
                              env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        line = next((l for l in proc.stdout.splitlines() if l.startswith("MEASURED ")), None)
        if line is None:
            raise SystemExit(f"{name}: {proc.stderr[-3000:]}")
        measured = json.loads(line.removeprefix("MEASURED "))
        for n in names:
            rows[f"notebooks/{name} {n}"] = {"tolerance": tolerance,
                                             "values": {int(s): v[n] for s, v in measured.items()}}
    return rows


def table(rows: dict[str, dict], seeds: list[int]) -> str:
    lines = [f"| check | tolerance | {' | '.join(f'seed {s}' for s in seeds)} | worst ratio |",
             "|---|---|" + "---|" * len(seeds) + "---|"]
    for check, row in rows.items():
        values = [row["values"].get(s) for s in seeds]
        cells = ["missing" if v is None else f"{v:.1e}" for v in values]
        known = [v for v in values if v is not None]
        tol = row["tolerance"]
        if tol == 0:
            worst = "exact" if all(v == 0 for v in known) else "NOT EXACT"
        else:
            worst = f"{max(known) / tol:.0e}" if known else "-"
        lines.append(f"| {check} | {'0 (bit for bit)' if tol == 0 else f'{tol:g}'} | {' | '.join(cells)} | {worst} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(5)))
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument("--skip-tests", action="store_true", help="only the notebooks")
    args = parser.parse_args()
    rows = {} if args.skip_tests else measure_tests(args.seeds)
    rows.update(measure_notebooks(args.seeds))
    text = table(rows, args.seeds)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
