"""Four logical CPUs, made once before TensorFlow starts, as every in-process test expects."""

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
VIRTUAL_CPUS = 4


def pytest_configure(config):
    import paradl_tf
    from paradl_tf.tf_logs import start_tensorflow

    start_tensorflow()  # without its C++ start-up lines, as the CLI does
    paradl_tf.setup_virtual_devices(VIRTUAL_CPUS)


@pytest.fixture
def cli(tmp_path):
    """Run `paradl-tf ARGS` in a subprocess; returns the CompletedProcess."""
    import subprocess

    def run(*args, timeout=240, env=None):
        return subprocess.run(
            [sys.executable, "-m", "paradl_tf.cli", *args],
            cwd=ROOT, capture_output=True, text=True, timeout=timeout,
            env={**os.environ, **(env or {})},
        )

    return run


@pytest.fixture(scope="session")
def digits_shards(tmp_path_factory):
    """Digits as 4 TFRecord training shards and 1 validation shard, as `paradl-tf data write` makes them."""
    from paradl_tf.builders.data import load_splits
    from paradl_tf.config.schema import Config
    from paradl_tf.files.write import write_shards

    out = tmp_path_factory.mktemp("digits") / "tfrecord"
    write_shards(load_splits(Config().data, 0), str(out), 4, "tfrecord", 1, "digits")
    return out


def pytest_addoption(parser):
    parser.addoption("--equivalence-seed", type=int, default=None,
                     help="train.seed for the checks that compare two runs (default: each check's own); "
                          "tests/measure_margins.py measures their margins over several seeds")


@pytest.fixture
def equivalence(request, record_property):
    """For a check that compares two runs: `.seed` (or the check's own default) and `.check(tolerance, **differences)`,
    which records each difference (junitxml properties, read by tests/measure_margins.py) and asserts it."""
    from equivalence import Check

    return Check(request.config.getoption("--equivalence-seed"), record_property)
