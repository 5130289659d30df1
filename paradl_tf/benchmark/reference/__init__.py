"""Hand-written reference training for the benchmark: plain tf.distribute and Keras, no paradl_tf code.

Each function is what a user would write by hand for one strategy: the same data, input
pipeline, model, optimizer and `model.fit` (training steps only, no validation) as the
toolkit runs for the same config, so
`paradl-tf bench` can report toolkit / hand-written throughput per strategy. They read the
run's settings from a plain dict shaped like a paradl_tf config (model, data, train,
devices, strategy); nothing here imports paradl_tf.

    REFERENCES["mirrored"](config_dict, keras)   # -> {"epoch_seconds": [...], "steps_per_epoch": ..., ...}

TUTORIALS holds, for the two cluster strategies, the same training written the way TensorFlow's own tutorials
write it, so that the bench can also report toolkit / tutorial-style code (issue 14: at least 1.0). The workload
comes from the config as for the references (data, model, loss and accuracy metric, global batch, steps per epoch,
epochs, steps_per_execution, optimizer kind and learning rate, Keras); the rest is as the tutorial has it.
What each differs in from the hand-written reference:

- `parameter_server_tutorial` (tensorflow.org/tutorials/distribute/parameter_server_training, "Training with
  Model.fit"): its `dataset_fn` shuffles (no seed), repeats, shards by input pipeline, batches without
  drop_remainder and prefetches 2 batches (hand-written: shuffle, batch with drop_remainder, repeat, prefetch
  AUTOTUNE), and it compiles with the legacy tf_keras optimizer of the same name, as the tutorial advises
  (hand-written: the new one). The same local cluster of server processes.
- `multi_worker_mirrored_tutorial` (tensorflow.org/tutorials/distribute/multi_worker_with_keras):
  `from_tensor_slices(...).shuffle(len).repeat().batch(global batch)`: no shuffle seed, no drop_remainder, no
  prefetch and the AUTO auto-shard policy (hand-written: prefetch AUTOTUNE and the DATA policy set explicitly, as
  in-memory arrays have no files to shard). The same worker processes.

One module a concern: `single_process` (no strategy, MirroredStrategy), `clusters` (parameter servers and
MultiWorkerMirrored on local processes; `mwm_worker` is one such worker), `placed` (model parallel and hybrid by
hand), `tutorials`, and what they share: `fit` (devices, compile, the timed model.fit), `inputs` (the input
pipelines) and `workload` (data and models written out by hand). Names with a leading underscore are this
package's own; REFERENCES, TUTORIALS and fit.epoch_timer are what the bench's worker uses.

Adding a strategy: write `def my_strategy(cfg, keras) -> dict` in the module of its kind and add it to REFERENCES.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, Callable

from paradl_tf.benchmark.reference.clusters import multi_worker_mirrored, parameter_server
from paradl_tf.benchmark.reference.placed import hybrid, model_parallel
from paradl_tf.benchmark.reference.single_process import mirrored, one_device
from paradl_tf.benchmark.reference.tutorials import multi_worker_mirrored_tutorial, parameter_server_tutorial

REFERENCES: dict[str, Callable[[dict, ModuleType], dict[str, Any]]] = {
    "one_device": one_device,
    "mirrored": mirrored,
    "parameter_server": parameter_server,
    "multi_worker_mirrored": multi_worker_mirrored,
    "model_parallel": model_parallel,
    "hybrid": hybrid,
}

TUTORIALS: dict[str, Callable[[dict, ModuleType], dict[str, Any]]] = {
    "parameter_server": parameter_server_tutorial,
    "multi_worker_mirrored": multi_worker_mirrored_tutorial,
}
