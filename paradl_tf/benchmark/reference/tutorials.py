"""TensorFlow's tutorials, written their way: parameter servers and MultiWorkerMirrored as tensorflow.org trains them."""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

from paradl_tf.benchmark.reference.clusters import _multi_worker_mirrored, _on_parameter_servers
from paradl_tf.benchmark.reference.fit import _fit, _legacy_optimizer
from paradl_tf.benchmark.reference.inputs import _ps_tutorial_input


def parameter_server_tutorial(cfg: dict, keras: ModuleType) -> dict[str, Any]:
    """ParameterServerStrategy as tensorflow.org/tutorials/distribute/parameter_server_training trains with
    Model.fit: a DatasetCreator over the tutorial's dataset_fn, a legacy optimizer; the same local cluster."""
    return _on_parameter_servers(cfg, lambda strategy: _fit(
        cfg, keras, strategy, time.perf_counter(), optimizer=_legacy_optimizer, input_pipeline=_ps_tutorial_input))


def multi_worker_mirrored_tutorial(cfg: dict, keras: ModuleType) -> dict[str, Any]:
    """MultiWorkerMirroredStrategy as tensorflow.org/tutorials/distribute/multi_worker_with_keras: its dataset,
    the model built and compiled inside strategy.scope(), fit(dataset, epochs, steps_per_epoch); the same workers."""
    return _multi_worker_mirrored(cfg, keras, "tutorial")
