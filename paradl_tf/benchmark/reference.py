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

Adding a strategy: write `def my_strategy(cfg, keras) -> dict` below and add it to REFERENCES.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import socket
import subprocess
import sys
import time
import traceback
from types import ModuleType
from typing import Any, Callable

import numpy as np
import tensorflow as tf


# ================================================================ the references, one per strategy
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


def parameter_server(cfg: dict, keras: ModuleType) -> dict[str, Any]:
    """ParameterServerStrategy: worker and ps servers as local processes, this process the chief (tf_keras fit
    with a DatasetCreator, as TensorFlow's parameter-server tutorial does)."""
    return _on_parameter_servers(cfg, lambda strategy: _fit(cfg, keras, strategy, time.perf_counter()))


def _on_parameter_servers(cfg: dict, fit: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Start cluster.workers worker and cluster.ps ps servers as local processes, run fit(strategy) with this
    process as the chief, and kill the servers on every path."""
    start = time.perf_counter()
    cluster = cfg.get("cluster", {})
    jobs = {"chief": 1, "worker": cluster.get("workers", 2), "ps": cluster.get("ps", 1)}
    ports = iter(_free_ports(sum(jobs.values())))
    spec = {job: [f"127.0.0.1:{next(ports)}" for _ in range(n)] for job, n in jobs.items()}
    servers = [
        subprocess.Popen([sys.executable, "-c", _SERVER, json.dumps(spec), job, str(i)],
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        for job in ("ps", "worker") for i in range(jobs[job])
    ]
    try:
        _wait_for_ports([a for job in ("ps", "worker") for a in spec[job]], servers, timeout_s=120)
        cluster_start = time.perf_counter() - start
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(spec), task_type="chief", task_id=0, rpc_layer="grpc")
        strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
        return {**fit(strategy), "cluster_start_seconds": cluster_start}
    finally:
        for server in servers:
            server.kill()
            server.wait()


def multi_worker_mirrored(cfg: dict, keras: ModuleType) -> dict[str, Any]:
    """MultiWorkerMirroredStrategy: N worker processes of this file on 127.0.0.1, each with its TF_CONFIG, all run
    the same fit; worker 0 (the chief) prints its figures. tf_keras: Keras 3's fit fails under this strategy."""
    return _multi_worker_mirrored(cfg, keras, "reference")


def _multi_worker_mirrored(cfg: dict, keras: ModuleType, variant: str) -> dict[str, Any]:
    """Start the N workers, each running `variant` (a key of _WORKER_INPUTS); the chief's figures."""
    n = cfg.get("cluster", {}).get("workers", 2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(n)]}
    workers, spawned_at = [], time.time()
    try:
        for i in range(n):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                   "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
            argv = [sys.executable, "-c", _RUN_SCRIPT, os.path.abspath(__file__), "worker", json.dumps(cfg),
                    keras.__name__, variant]
            # The chief's stdout is its result; the others' goes to fd 2, the log (this stdout is the bench's).
            workers.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE if i == 0 else 2, text=True))
        deadline = time.monotonic() + _WORKERS_TIMEOUT_S
        while True:
            codes = [w.poll() for w in workers]
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:  # the others would wait in their collectives forever
                raise RuntimeError(f"worker {failed[0]} exited with status {codes[failed[0]]}")
            if None not in codes:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not finish within {_WORKERS_TIMEOUT_S} s")
            time.sleep(0.1)
        out = json.loads(workers[0].stdout.read().strip().splitlines()[-1])
    finally:
        for w in workers:
            w.kill()
            w.wait()
            if w.stdout:
                w.stdout.close()
    # Starting the workers (interpreter, TensorFlow) before the chief's clock, as the toolkit's cluster start.
    cluster_start = out.pop("clock_started_at") - spawned_at
    return {**out, "cluster_start_seconds": cluster_start}


_WORKERS_TIMEOUT_S = 600
# `python this_file.py ...` without this file's folder on sys.path (python -P, from 3.11 only), where the modules
# of paradl_tf (config.py, data.py, ...) would shadow top-level modules of the same names.
_RUN_SCRIPT = "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def _multi_worker_mirrored_worker(cfg: dict, keras_name: str, variant: str) -> None:
    """One worker (`python reference.py worker CFG KERAS VARIANT`): train with the input pipeline of `variant`
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


def model_parallel(cfg: dict, keras: ModuleType) -> dict[str, Any]:
    """Model parallel by hand (Keras 3): the model cut into stages, each stage's layers built and run under
    tf.device(its device); with strategy.pipeline.microbatches M > 1 each batch runs as M micro-batches whose
    averaged gradients are applied once (GPipe). The stages are the ones `paradl-tf plan` shows for these models."""
    start = time.perf_counter()
    devices = _split_devices(cfg)[: cfg["strategy"]["placement"]["devices"]]
    models = []  # the placed model, to report where its variables are

    def build(*args):
        models.append(_placed_model(*args))
        return models[-1]

    # XLA ignores tf.device and would compile the whole step for one device.
    out = _fit(cfg, keras, None, start, build_model=build, optimizer=_optimizer_beside_variables, jit_compile=False)
    per_device = dict.fromkeys(devices, 0)
    for v in models[0].weights:
        spec = tf.DeviceSpec.from_string(v.value.device)
        per_device[f"/device:{spec.device_type}:{spec.device_index}"] += int(np.prod(v.shape)) * v.value.dtype.size
    return {**out, "parameter_bytes_per_device": per_device}


def hybrid(cfg: dict, keras: ModuleType) -> dict[str, Any]:
    """Hybrid by hand (Keras 3): R copies of the staged model, copy r's stage k on device r S + k, all starting from
    copy 0's weights. A step splits the batch into R parts, one per copy; each variable's R gradients are averaged
    on copy 0's device of that stage and copied back to the other copies' devices; one optimizer applies the same
    average to every copy."""
    start = time.perf_counter()
    devices = _split_devices(cfg)
    groups, stages = cfg["strategy"]["replicas"], cfg["strategy"]["placement"]["devices"]
    models = []

    def build(cfg, input_shape, classes, keras):
        staged, _ = _placed_model_classes(keras)
        copies = [staged(_stages(cfg["model"], classes, stages, keras), devices[r * stages : (r + 1) * stages],
                         tuple(input_shape)) for r in range(groups)]
        for c in copies[1:]:
            c.set_weights(copies[0].get_weights())
        models.append(_hybrid_model_class(keras)(copies))
        return models[-1]

    out = _fit(cfg, keras, None, start, build_model=build, optimizer=_optimizer_beside_variables, jit_compile=False)
    per_device = dict.fromkeys(devices[: groups * stages], 0)
    for v in models[0].weights:
        spec = tf.DeviceSpec.from_string(v.value.device)
        per_device[f"/device:{spec.device_type}:{spec.device_index}"] += int(np.prod(v.shape)) * v.value.dtype.size
    return {**out, "replicas": groups, "parameter_bytes_per_device": per_device}


def _hybrid_model_class(keras: ModuleType) -> type:
    class Hybrid(keras.Model):
        def __init__(self, copies):
            super().__init__()
            self.copies = copies
            self.built = True

        def call(self, x, training=False):
            n = tf.shape(x)[0]
            r = len(self.copies)
            return tf.concat([c(x[i * n // r : (i + 1) * n // r], training=training)
                              for i, c in enumerate(self.copies)], axis=0)

        def train_step(self, data):
            x, y = data
            r = len(self.copies)
            n = tf.shape(x)[0] // r
            grads = []
            for i, c in enumerate(self.copies):
                xi, yi = x[i * n : (i + 1) * n], y[i * n : (i + 1) * n]
                y_pred = c(xi, training=True)
                with tf.device(c.loss_device):
                    loss = self.compute_loss(x=xi, y=yi, y_pred=y_pred, training=True)
                grads.append(tf.gradients(loss, [v.value for v in c.trainable_variables]))
                for metric in self.metrics:
                    metric.update_state(loss) if metric.name == "loss" else metric.update_state(yi, y_pred)
            flat_grads, flat_vars = [], []
            for j, v0 in enumerate(self.copies[0].trainable_variables):
                with tf.device(v0.value.device):  # the reduction, on the first copy's device of this stage
                    mean = tf.add_n([g[j] for g in grads]) / r
                for c in self.copies:
                    with tf.device(c.trainable_variables[j].value.device):
                        flat_grads.append(tf.identity(mean))
                    flat_vars.append(c.trainable_variables[j])
            self.optimizer.apply(flat_grads, flat_vars)
            return {metric.name: metric.result() for metric in self.metrics}

    return Hybrid


REFERENCES: dict[str, Callable[[dict, ModuleType], dict[str, Any]]] = {
    "one_device": one_device,
    "mirrored": mirrored,
    "parameter_server": parameter_server,
    "multi_worker_mirrored": multi_worker_mirrored,
    "model_parallel": model_parallel,
    "hybrid": hybrid,
}


# ================================================================ TensorFlow's tutorials, written their way
def parameter_server_tutorial(cfg: dict, keras: ModuleType) -> dict[str, Any]:
    """ParameterServerStrategy as tensorflow.org/tutorials/distribute/parameter_server_training trains with
    Model.fit: a DatasetCreator over the tutorial's dataset_fn, a legacy optimizer; the same local cluster."""
    return _on_parameter_servers(cfg, lambda strategy: _fit(
        cfg, keras, strategy, time.perf_counter(), optimizer=_legacy_optimizer, input_pipeline=_ps_tutorial_input))


def multi_worker_mirrored_tutorial(cfg: dict, keras: ModuleType) -> dict[str, Any]:
    """MultiWorkerMirroredStrategy as tensorflow.org/tutorials/distribute/multi_worker_with_keras: its dataset,
    the model built and compiled inside strategy.scope(), fit(dataset, epochs, steps_per_epoch); the same workers."""
    return _multi_worker_mirrored(cfg, keras, "tutorial")


def _ps_tutorial_input(keras: ModuleType, strategy, x, y, train: dict):
    """The tutorial's dataset_fn, line for line (its data replaced by the workload's)."""
    global_batch_size = train["global_batch_size"]

    def dataset_fn(input_context):
        batch_size = input_context.get_per_replica_batch_size(global_batch_size)
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x)).repeat()
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        dataset = dataset.batch(batch_size)
        dataset = dataset.prefetch(2)
        return dataset

    return keras.utils.experimental.DatasetCreator(dataset_fn)


def _mwm_tutorial_input(keras: ModuleType, strategy, x, y, train: dict):
    """The tutorial's mnist_dataset (its data replaced by the workload's): AUTO sharding, as it leaves it."""
    return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x)).repeat().batch(train["global_batch_size"])


def _legacy_optimizer(keras: ModuleType, name: str, learning_rate: float):
    """tf_keras's legacy optimizer of that name: the parameter-server tutorial compiles with one."""
    return getattr(keras.optimizers.legacy, _OPTIMIZER_CLASSES[name])(learning_rate=learning_rate)


TUTORIALS: dict[str, Callable[[dict, ModuleType], dict[str, Any]]] = {
    "parameter_server": parameter_server_tutorial,
    "multi_worker_mirrored": multi_worker_mirrored_tutorial,
}


# ================================================================ model parallel, by hand
def _placed_model(cfg: dict, input_shape, classes: int, keras: ModuleType):
    """The workload's model with its layers on the devices of strategy.placement (auto: N stages; branches)."""
    placement = cfg["strategy"]["placement"]
    devices = [d.name for d in tf.config.list_logical_devices(cfg["devices"].get("type", "CPU"))]
    devices = devices[: placement["devices"]]
    microbatches = cfg["strategy"].get("pipeline", {}).get("microbatches", 1)
    staged, branched = _placed_model_classes(keras)
    if placement["kind"] == "branches":
        return branched(cfg["model"], tuple(input_shape), classes, devices, microbatches)
    stages = _stages(cfg["model"], classes, len(devices), keras)
    return staged(stages, devices, tuple(input_shape), microbatches)


def _stages(model: dict, classes: int, n: int, keras: ModuleType) -> list[list]:
    """The layers of each stage, cut where `paradl-tf plan` cuts these models into n stages balanced by parameters."""
    layers, act = keras.layers, model.get("activation", "relu")
    stages = {}
    if model["kind"] == "mlp" and len(model.get("hidden", [128, 64])) == 2:
        h0, h1 = model.get("hidden", [128, 64])
        chain = [layers.Flatten(), layers.Dense(h0, activation=act), layers.Dense(h1, activation=act),
                 layers.Dense(classes)]
        stages = {2: [chain[:2], chain[2:]], 4: [[layer] for layer in chain]}
    elif model["kind"] == "cnn" and len(model.get("filters", [32, 64])) == 2:
        k = model.get("kernel_size", 3)
        convs = [layer for f in model.get("filters", [32, 64])
                 for layer in (layers.Conv2D(f, k, padding="same", activation="relu"), layers.MaxPooling2D())]
        head = [layers.Flatten(), layers.Dense(model.get("dense", 128), activation="relu"), layers.Dense(classes)]
        stages = {2: [convs, head], 4: [convs, *[[layer] for layer in head]]}
    if n not in stages:
        raise ValueError(f"the hand-written reference has no {n}-stage split of model {model!r}")
    return stages[n]


def _placed_model_classes(keras: ModuleType) -> tuple[type, type]:
    """(Staged, Branched): Keras 3 models whose parts are built and run on their devices."""

    def on(device, shape, layers):
        with tf.device(device):  # Keras 3 creates variables when a layer is built: build it on its device
            return keras.Sequential([keras.Input(shape), *layers])

    class Placed(keras.Model):
        """A training step of M micro-batches, each gradient op on the device of its forward op."""

        def __init__(self, loss_device: str, microbatches: int):
            super().__init__()
            self.loss_device, self.microbatches = loss_device, microbatches

        def train_step(self, data):
            x, y = data
            variables, m = self.trainable_variables, self.microbatches
            n = tf.shape(x)[0] // m
            total = [None] * len(variables)
            for k in range(m):  # unrolled: stage 0 can run micro-batch k + 1 while stage 1 runs micro-batch k
                xk, yk = x[k * n : (k + 1) * n], y[k * n : (k + 1) * n]
                y_pred = self(xk, training=True)
                with tf.device(self.loss_device):  # the loss next to the logits
                    loss = self.compute_loss(x=xk, y=yk, y_pred=y_pred, training=True)
                # tf.gradients puts each gradient op on its forward op's device; GradientTape would put the whole
                # backward pass on the default device.
                grads = tf.gradients(loss, [v.value for v in variables])
                for i, (g, v) in enumerate(zip(grads, variables)):
                    with tf.device(v.value.device):  # sum where the variable lives
                        total[i] = g if total[i] is None else total[i] + g
                for metric in self.metrics:
                    if metric.name == "loss":
                        metric.update_state(loss)
                    else:
                        metric.update_state(yk, y_pred)
            self.optimizer.apply([g / m for g in total] if m > 1 else total, variables)
            return {metric.name: metric.result() for metric in self.metrics}

    class Staged(Placed):
        """A chain of stages: stage i's layers on devices[i]."""

        def __init__(self, stages: list[list], devices: list[str], input_shape: tuple, microbatches: int = 1):
            super().__init__(devices[len(stages) - 1], microbatches)
            self.stage_devices, parts = devices[: len(stages)], []
            for device, layers in zip(self.stage_devices, stages):
                parts.append(on(device, input_shape, layers))
                input_shape = parts[-1].compute_output_shape((None, *input_shape))[1:]
            self.parts = parts
            self.built = True  # every part is built, on its device

        def call(self, x, training=False):
            for device, part in zip(self.stage_devices, self.parts):
                with tf.device(device):
                    x = part(x, training=training)
            return x

    class Branched(Placed):
        """Inception: branch j of every block on devices[j]; stem, concatenations and head on devices[0]."""

        def __init__(self, model: dict, input_shape: tuple, classes: int, devices: list[str], microbatches: int = 1):
            super().__init__(devices[0], microbatches)
            layers, f = keras.layers, model.get("branch_filters", 16)
            r = f // 2 or 1

            def conv(filters, kernel):
                return layers.Conv2D(filters, kernel, padding="same", activation="relu")

            self.trunk = devices[0]
            self.branch_devices = [devices[j % len(devices)] for j in range(4)]
            self.stem = on(self.trunk, input_shape, [conv(model.get("stem_filters", 32), 3)])
            shape, blocks = self.stem.compute_output_shape((None, *input_shape))[1:], []
            for _ in range(model.get("blocks", 2)):
                paths = [[conv(f, 1)], [conv(r, 1), conv(f, 3)], [conv(r, 1), conv(f, 5)],
                         [layers.MaxPooling2D(3, strides=1, padding="same"), conv(f, 1)]]
                blocks.append([on(d, shape, path) for d, path in zip(self.branch_devices, paths)])
                shape = (*shape[:-1], 4 * f)
            self.blocks = blocks
            self.head = on(self.trunk, shape, [layers.GlobalAveragePooling2D(), layers.Dense(classes)])
            self.built = True  # every part is built, on its device

        def call(self, x, training=False):
            with tf.device(self.trunk):
                x = self.stem(x, training=training)
            for branches in self.blocks:
                outs = []
                for device, branch in zip(self.branch_devices, branches):
                    with tf.device(device):
                        outs.append(branch(x, training=training))
                with tf.device(self.trunk):
                    x = tf.concat(outs, axis=-1)
            with tf.device(self.trunk):
                return self.head(x, training=training)

    return Staged, Branched


def _optimizer_beside_variables(keras: ModuleType, name: str, learning_rate: float):
    """The optimizer, its slots (Adam's m and v) on the devices of their variables: Keras 3 puts them all on the
    default device."""

    class BesideVariables(type(_optimizer(keras, name, learning_rate))):
        def add_variable_from_reference(self, reference_variable, *args, **kwargs):
            with tf.device(reference_variable.value.device):
                return super().add_variable_from_reference(reference_variable, *args, **kwargs)

    return BesideVariables(learning_rate=learning_rate)


# ================================================================ shared by the references
def _split_devices(cfg: dict) -> list[str]:
    """Split the physical device into devices.count logical ones (before the runtime starts)."""
    dev = cfg.get("devices", {})
    kind, count, memory = dev.get("type", "CPU"), dev.get("count", 1), dev.get("memory_limit_mb")
    physical = tf.config.list_physical_devices(kind)
    if count > 1 or memory:
        for device in physical:
            tf.config.set_logical_device_configuration(
                device, [tf.config.LogicalDeviceConfiguration(memory_limit=memory) for _ in range(count)]
            )
    return [d.name for d in tf.config.list_logical_devices(kind)]


def _fit(cfg: dict, keras: ModuleType, strategy, build_start: float, build_model=None, optimizer=None,
         input_pipeline=None, **compile_args) -> dict[str, Any]:
    """Data, model, compile, then model.fit on the training data only (the benchmark times training steps).

    build_model(cfg, input_shape, classes, keras) and optimizer(keras, name, learning_rate): model parallel's own;
    input_pipeline(keras, strategy, x, y, train) -> what fit reads (default: the hand-written pipeline)."""
    train = cfg["train"]
    keras.utils.set_random_seed(train.get("seed", 0))
    (x, y), _, classes = _data(cfg["data"], train.get("seed", 0))
    batch = train["global_batch_size"]
    steps = train.get("steps_per_epoch") or len(x) // batch
    parameter_servers = isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)
    input_pipeline = input_pipeline or _hand_written_input
    dataset = input_pipeline(keras, strategy, x, y, train)
    scope = strategy.scope() if strategy else _nothing()
    with scope:
        model = build_model(cfg, x.shape[1:], classes, keras) if build_model else _model(
            cfg["model"], x.shape[1:], classes, keras)
        model.compile(
            optimizer=(optimizer or _optimizer)(keras, train.get("optimizer", "adam"), train.get("learning_rate", 1e-3)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            steps_per_execution=train.get("steps_per_execution", 1),
            **compile_args,
        )
    build_seconds = time.perf_counter() - build_start
    timer = epoch_timer(keras, batch_hooks=not parameter_servers)
    model.fit(dataset, epochs=train["epochs"], steps_per_epoch=steps, shuffle=False, callbacks=[timer], verbose=0)
    return {
        "epoch_seconds": timer.epoch_seconds,
        "steps_per_epoch": steps,
        "global_batch_size": batch,
        "build_seconds": build_seconds,
        "replicas": strategy.num_replicas_in_sync if strategy else 1,
        "params": int(model.count_params()),
        # What ran, for the logs and tests: the tutorial-style variants differ in these two.
        "input_pipeline": input_pipeline.__name__,
        "optimizer": f"{type(model.optimizer).__module__}.{type(model.optimizer).__name__}",
    }


def _hand_written_input(keras: ModuleType, strategy, x, y, train: dict):
    """The pipeline a user writes: shuffle, batch (drop_remainder), repeat for steps_per_epoch, prefetch; under
    ParameterServerStrategy each worker's own (a DatasetCreator)."""
    batch, seed = train["global_batch_size"], train.get("seed", 0)
    if isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy):
        return keras.utils.experimental.DatasetCreator(_worker_dataset_fn(x, y, batch, seed))
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
    dataset = dataset.batch(batch, drop_remainder=True)
    if train.get("steps_per_epoch"):
        dataset = dataset.repeat()
    dataset = dataset.prefetch(tf.data.AUTOTUNE)
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):  # in-memory arrays: no files to shard
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(options)
    return dataset


# The input pipeline each variant of a MultiWorkerMirrored worker builds.
_WORKER_INPUTS = {"reference": _hand_written_input, "tutorial": _mwm_tutorial_input}


def _worker_dataset_fn(x, y, batch: int, seed: int):
    """Each worker's own endless pipeline (ParameterServerStrategy runs this function on every worker)."""

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        per_replica = input_context.get_per_replica_batch_size(batch)
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=seed)
        return dataset.batch(per_replica, drop_remainder=True).repeat().prefetch(tf.data.AUTOTUNE)

    return dataset_fn


# A worker or ps task: a TensorFlow server that serves until it is killed, or until its parent dies (Linux).
_SERVER = """
import ctypes, json, sys
try:
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
except (OSError, AttributeError):
    pass
import tensorflow as tf
spec, job, index = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
tf.distribute.Server(tf.train.ClusterSpec(spec), job_name=job, task_index=index, protocol="grpc", start=True).join()
"""


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait_for_ports(addresses: list[str], servers: list, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for address in addresses:
        host, port = address.rsplit(":", 1)
        while True:
            if any(p.poll() is not None for p in servers):
                raise RuntimeError("a server process of the hand-written parameter-server cluster exited")
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the server at {address} did not start within {timeout_s:.0f} s") from None
                time.sleep(0.2)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


_OPTIMIZER_CLASSES = {"sgd": "SGD", "adam": "Adam", "rmsprop": "RMSprop", "adagrad": "Adagrad"}


def _optimizer(keras: ModuleType, name: str, learning_rate: float):
    return getattr(keras.optimizers, _OPTIMIZER_CLASSES[name])(learning_rate=learning_rate)


def epoch_timer(keras: ModuleType, batch_hooks: bool = True):
    """Times the training part of each epoch: epoch begin to the end of its last batch (validation excluded).

    batch_hooks=False (ParameterServerStrategy, which refuses batch-level callbacks): epoch begin to epoch end."""

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch_seconds: list[float] = []
            self._begin = self._last = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._begin = self._last = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_seconds.append((self._last if batch_hooks else time.perf_counter()) - self._begin)

    if batch_hooks:
        def on_train_batch_end(self, batch, logs=None):
            self._last = time.perf_counter()

        EpochTimer.on_train_batch_end = on_train_batch_end
    return EpochTimer()


# ================================================================ data and models, written out by hand
def _data(data: dict, seed: int):
    kind = data["kind"]
    if kind == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        x, y = load_digits(return_X_y=True)
        x = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
        x_tr, x_val, y_tr, y_val = train_test_split(
            x, y.astype("int32"), test_size=data.get("validation_split", 0.2), random_state=seed, stratify=y
        )
        return (x_tr, y_tr), (x_val, y_val), 10
    if kind in ("synthetic_images", "synthetic_tabular"):
        shape = data.get("image_shape", [32, 32, 3]) if kind == "synthetic_images" else [data.get("features", 64)]
        classes = data.get("num_classes", 10)
        n_train = data.get("train_examples", 2048 if kind == "synthetic_images" else 4096)
        n_val = data.get("validation_examples", 512 if kind == "synthetic_images" else 1024)
        rng = np.random.default_rng(seed)
        prototypes = rng.normal(size=(classes, *shape)).astype("float32")
        y = rng.integers(0, classes, size=n_train + n_val).astype("int32")
        x = prototypes[y] + rng.normal(scale=2.0, size=(n_train + n_val, *shape)).astype("float32")
        return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:]), classes
    raise ValueError(f"the hand-written reference has no data kind {kind!r}")


def _model(model: dict, input_shape, classes: int, keras: ModuleType):
    kind, layers = model["kind"], keras.layers
    inputs = keras.Input(shape=tuple(input_shape))
    if kind == "mlp":
        x = layers.Flatten()(inputs)
        for units in model.get("hidden", [128, 64]):
            x = layers.Dense(units, activation=model.get("activation", "relu"))(x)
    elif kind == "cnn":
        x = inputs
        for filters in model.get("filters", [32, 64]):
            x = layers.Conv2D(filters, model.get("kernel_size", 3), padding="same", activation="relu")(x)
            if x.shape[1] >= 2 and x.shape[2] >= 2:
                x = layers.MaxPooling2D()(x)
        x = layers.Dense(model.get("dense", 128), activation="relu")(layers.Flatten()(x))
    elif kind == "inception":
        x = _inception_body(inputs, model, layers)
    else:
        raise ValueError(f"the hand-written reference has no model kind {kind!r}")
    return keras.Model(inputs, layers.Dense(classes)(x))


def _inception_body(inputs, model: dict, layers):
    f = model.get("branch_filters", 16)
    r = f // 2 or 1

    def conv(filters, kernel, x):
        return layers.Conv2D(filters, kernel, padding="same", activation="relu")(x)

    x = conv(model.get("stem_filters", 32), 3, inputs)
    for _ in range(model.get("blocks", 2)):
        pooled = layers.MaxPooling2D(3, strides=1, padding="same")(x)
        x = layers.Concatenate()([conv(f, 1, x), conv(f, 3, conv(r, 1, x)), conv(f, 5, conv(r, 1, x)), conv(f, 1, pooled)])
    return layers.GlobalAveragePooling2D()(x)


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:  # a worker that _multi_worker_mirrored() started
    _multi_worker_mirrored_worker(json.loads(sys.argv[2]), sys.argv[3], sys.argv[4])
