"""How the equivalence checks compare two runs' numbers, so that no check rides on a rounding error.

Two runs that compute the same update in another order (replicas summing their gradients, micro-batches,
another process) differ by rounding: about 1e-8 in float32. ReLU and max-pool decide discretely: a
pre-activation, or two pooled values, within that 1e-8 of a tie can go one way in one run and the other way in
the other, and the learning rate carries the flip into weights 1e-3 apart (issue 11: notebook 3, seed 0, step 3).
In float64 the rounding is about 1e-16, so a flip needs a tie within 1e-16: over the ~1e5 decisions of a step,
about 1e8 times less likely than in float32. So the checks train in float64 and assert a difference far below
any that a real bug (a lost micro-batch, a gradient scaled wrong, a stale replica) would make.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np

TOLERANCE = 1e-10
"""Largest absolute difference allowed between two float64 runs' weights (measured: about 1e-16)."""


class Check:
    """The `equivalence` fixture: the seed to train with, and the assertion that records what it measured."""

    def __init__(self, seed: int | None, record_property):
        self._seed, self._record = seed, record_property

    def seed(self, default: int) -> int:
        """--equivalence-seed if given, else the check's own seed."""
        return default if self._seed is None else self._seed

    def check(self, tolerance: float, **differences: float) -> None:
        """Every difference is at most `tolerance` (0: the two runs are bit for bit the same)."""
        self._record("equivalence_tolerance", tolerance)
        for name, value in differences.items():
            self._record(f"equivalence_{name}", value)
        assert all(v <= tolerance for v in differences.values()), (f"tolerance {tolerance:g}", differences)


@contextlib.contextmanager
def float64():
    """Keras 3 and tf_keras build float64 variables and compute in float64 in this block (floatx), as before after."""
    import keras
    import tf_keras

    # Keras 3 fixes its default dtype policy from floatx when it builds its first layer (keras.config.dtype_policy
    # caches it), so floatx alone changes nothing once a model exists: set the policy too. tf_keras derives its
    # policy from floatx only until a policy is set (a mixed-precision run before this one sets and restores one).
    before = (keras.config.floatx(), keras.config.dtype_policy(), tf_keras.backend.floatx(),
              tf_keras.mixed_precision.global_policy())
    keras.config.set_floatx("float64")
    keras.config.set_dtype_policy("float64")
    tf_keras.backend.set_floatx("float64")
    tf_keras.mixed_precision.set_global_policy("float64")
    try:
        yield
    finally:
        keras.config.set_floatx(before[0])
        keras.config.set_dtype_policy(before[1])
        tf_keras.backend.set_floatx(before[2])
        tf_keras.mixed_precision.set_global_policy(before[3])


def float64_env(directory: Path) -> dict[str, str]:
    """Environment variables under which a new process (and every process it starts) trains in float64.

    Keras 3 and tf_keras both read the default floatx from $KERAS_HOME/keras.json when they are imported.
    """
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "keras.json").write_text(json.dumps({"floatx": "float64"}))
    return {"KERAS_HOME": str(directory)}


def max_abs_diff(a, b) -> float:
    """The largest absolute difference between two lists (or dicts of lists) of arrays of the same shapes."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), (sorted(a), sorted(b))
        return max((max_abs_diff(a[k], b[k]) for k in a), default=0.0)
    assert len(a) == len(b), (len(a), len(b))
    return max((float(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)).max()) for x, y in zip(a, b)),
               default=0.0)
