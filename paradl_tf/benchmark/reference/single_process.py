"""The references that train in this one process, the model whole: no strategy, MirroredStrategy."""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import tensorflow as tf

from paradl_tf.benchmark.reference.fit import _fit, _split_devices


def one_device(cfg: dict, keras: ModuleType) -> dict[str, Any]:
    """No strategy: Keras on TensorFlow's default device."""
    start = time.perf_counter()
    _split_devices(cfg)
    return _fit(cfg, keras, None, start)


def mirrored(cfg: dict, keras: ModuleType) -> dict[str, Any]:
    """tf.distribute.MirroredStrategy over the first N logical devices."""
    start = time.perf_counter()
    devices = _split_devices(cfg)
    wanted = cfg["strategy"].get("devices")
    names = devices if wanted is None else (devices[:wanted] if isinstance(wanted, int) else wanted)
    return _fit(cfg, keras, tf.distribute.MirroredStrategy(names), start)
