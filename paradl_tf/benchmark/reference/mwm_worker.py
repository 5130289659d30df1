"""One MultiWorkerMirrored worker of the hand-written cluster (clusters._multi_worker_mirrored starts them):

    python -m paradl_tf.benchmark.reference.mwm_worker CFG_JSON KERAS VARIANT
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import sys
import time
import traceback

import tensorflow as tf

from paradl_tf.benchmark.reference.fit import _fit
from paradl_tf.benchmark.reference.inputs import _WORKER_INPUTS


def _multi_worker_mirrored_worker(cfg: dict, keras_name: str, variant: str) -> None:
    """One worker (`python -m paradl_tf.benchmark.reference.mwm_worker CFG KERAS VARIANT`): train with the input pipeline of `variant`
    (reference: hand-written; tutorial: TensorFlow's tutorial's); the chief prints its figures, one line."""
    try:
        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL: die with the process that started it (Linux)
    except (OSError, AttributeError):
        pass
    start, clock_started_at, code = time.perf_counter(), time.time(), 0
    try:
        # First: collective ops must be configured before TensorFlow's runtime starts (listing devices starts it).
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        out = _fit(cfg, importlib.import_module(keras_name), strategy, start, input_pipeline=_WORKER_INPUTS[variant])
        if strategy.cluster_resolver.task_id == 0:
            print(json.dumps({**out, "clock_started_at": clock_started_at}))
    except BaseException:  # noqa: BLE001 - the parent reads the exit status; the traceback goes to the log
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # TensorFlow's teardown of a collective cluster can wait on the other workers


if __name__ == "__main__":
    _multi_worker_mirrored_worker(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3])
