"""The documentation site builds with `mkdocs build --strict`: a broken link or anchor, a page missing from the
API's public names, or a docstring mkdocstrings cannot render fails the suite. (The config reference table on
docs/configs.md is checked against the schema by tests/test_config.py.)"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(240)
def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=200,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    for page in ("index.html", "configs/index.html", "api/index.html", "notebooks/01_sync_data_parallel/index.html",
                 "bench/RESULTS/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    assert "fit_kwargs" in (tmp_path / "site" / "api" / "index.html").read_text()  # rendered from docstrings


def test_readme_stays_short():
    assert (ROOT / "README.md").stat().st_size <= 15_000, "README.md is the short version: move detail to docs/"
