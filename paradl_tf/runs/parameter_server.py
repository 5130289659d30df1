"""Asynchronous data parallel: ParameterServerStrategy driven by a ClusterCoordinator, through model.fit (tf_keras).

    paradl-tf train --config=configs/async_ps.yaml                      # 2 workers + 1 ps on 127.0.0.1
    paradl-tf train --config=configs/async_ps.yaml --set cluster.mode=in_process
    paradl-tf plan --config=configs/async_ps.yaml                       # which ps holds each variable (and shard)

A local run (cluster.resolver: local, mode: process) goes like this:
  1. the calling process writes the resolved config and starts the driver in private user, network and PID
     namespaces (`unshare`): only loopback exists there, and every process in them dies with the first;
  2. the driver starts one `paradl-tf serve` process per worker and ps, each with its TF_CONFIG, waits until
     every one accepts connections, then is the chief: TensorFlow's TFConfigClusterResolver gives the strategy
     its cluster, the ClusterCoordinator dispatches training steps to the workers, the chief evaluates;
  3. a worker that dies is restarted and rejoins (TensorFlow reschedules its lost steps); a ps that dies ends
     the run with a one-line error, and with checkpoint.dir set a rerun resumes from the last epoch backup.

Keras 3 has no parameter-server support (keras-team/keras#18624), so this path runs on tf_keras.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import tensorflow as tf

from paradl_tf import cluster as cl
from paradl_tf.builders.data import build_dataset, for_pipelines, load_source, shuffled_batches
from paradl_tf.builders.devices import setup_devices, setup_threads
from paradl_tf.builders.keras_version import import_keras, resolve_keras
from paradl_tf.builders.models import build_model, build_optimizer, compile_model
from paradl_tf.builders.precision import (
    Precision, check_model_precision, dtype_name, precision_policy, resolve_precision,
)
from paradl_tf.builders.strategies import variable_partitioner
from paradl_tf.config import Config
from paradl_tf.errors import ConfigError
from paradl_tf.files.service import service_address, shared_train_pipeline
from paradl_tf.files.sources import FileSource
from paradl_tf.runs.fit import Job, Run, fit_run, stop_on_nan
from paradl_tf.runs.plan import cluster_plan, plan_header, trainable_bytes

JOBS = cl.REQUIRED_JOBS["parameter_server"]
PS_LOSS_GRACE_S = 30.0  # after a ps dies, the run fails within this long even if TensorFlow hangs
EVALUATION = (
    "by the chief: after every epoch it copies the weights from the ps tasks into a local model and evaluates "
    "that on the whole validation split (the workers only train)"
)
# tf_keras's legacy optimizers whose update equals the new ones' to float32 rounding (a test checks it): under
# ParameterServerStrategy they run faster, as TensorFlow's parameter-server tutorial advises (bench/BEFORE_AFTER.md).
LEGACY_SAME_UPDATE = ("sgd", "adam", "adagrad")
PROGRESS = (
    "per epoch (verbose=2): TensorFlow refuses verbose=1 and batch-level Keras callbacks under ParameterServerStrategy"
)
WORKER_STEPS_NOTE = (
    "steps run by each worker's current process (a killed process's count is lost with it); "
    "optimizer_iterations counts every step applied to the variables"
)


# ================================================================ entry points
def train(cfg: Config) -> dict[str, Any]:
    """Train as the chief of the cluster `cfg.cluster` names, or of an in-process cluster (cluster.mode:
    in_process); writes config.yaml and results.json to cfg.output_dir and returns the results. A local process
    cluster is launched by paradl_tf.train, whose driver (this module's `drive`) ends up here too."""
    c = cfg.cluster
    if c.resolver == "local":  # in_process: servers in this process, for notebooks and tests
        setup_threads(cfg.devices.threads)  # before the servers start the runtime
        if cl.in_private_network():
            cl.loopback_up()
        spec = cl.local_cluster_spec({"chief": 1, "worker": c.workers, "ps": c.ps})
        cl.start_in_process_servers(spec, private_network=c.private_network)
        resolver = cl.cluster_resolver(c, JOBS, spec)
        return _clear_errors(coordinate, cfg, resolver, cl.cluster_info("local", "in_process", spec))
    resolver = cl.cluster_resolver(c, JOBS, use_gpus=cfg.devices.type == "GPU")
    spec = cl.resolver_spec(resolver)
    cl.check_jobs(spec, JOBS, source=f"cluster.resolver: {c.resolver}:")
    _check_is_chief(resolver, c.resolver)
    cl.wait_until_reachable(_remote_tasks(spec), c.start_timeout_s)
    return _clear_errors(coordinate, cfg, resolver, cl.cluster_info(c.resolver, "remote", spec))


def drive(cfg: Config, status_path: Path) -> dict[str, Any]:
    """Inside the namespace: start the worker and ps processes, coordinate training as the chief, stop them."""
    c = cfg.cluster
    if cl.in_private_network():
        cl.loopback_up()
    cl.check_address_service(cfg)
    spec = cl.local_cluster_spec({"chief": 1, "worker": c.workers, "ps": c.ps})
    run_dir = Path(cfg.output_dir) / "cluster"
    service = cl.service_spec(cfg.data.service.workers) if _local_service(cfg) else None
    tasks = cl.make_tasks(spec, ("ps", "worker"), _serve_argv, run_dir)
    tasks += cl.service_tasks(service, run_dir, cl.make_tasks) if service else []
    local = cl.LocalCluster(tasks, max_restarts=c.restart_workers, on_fatal=_watchdog(status_path, cfg),
                            expendable=("data_worker",))
    try:
        local.start()
        local.wait_until_reachable(c.start_timeout_s)
        local.watch()
        if service:  # the chief traces the workers' dataset function, which names the dispatcher
            os.environ[cl.ADDRESS_ENV] = cl.dispatcher_address(service)
        info = cl.cluster_info("local", "process", {**spec, **(service or {})})
        local.write_info(run_dir, info)
        os.environ["TF_CONFIG"] = cl.tf_config(spec, "chief", 0)  # the chief finds its cluster as on real hosts
        resolver = cl.cluster_resolver(c.model_copy(update={"resolver": "tf_config"}), JOBS)
        return coordinate(cfg, resolver, info, local)
    except Exception:
        if _settled_fatal(local):
            raise cl.ClusterError(_fatal_message(local.fatal, cfg)) from None
        raise
    finally:
        local.stop()


# ================================================================ the chief
def coordinate(cfg: Config, resolver, cluster_info: dict, local: cl.LocalCluster | None = None) -> dict[str, Any]:
    """As the chief: build the strategy and the model, fit with a dataset function per worker, write results."""
    return fit_run(ParameterServerRun(cfg, resolver, cluster_info, local))


class ParameterServerRun(Run):
    """Where the chief of a parameter-server cluster differs from a one-process run: a ClusterCoordinator
    dispatches the steps, each worker builds its own pipeline (DatasetCreator), the chief evaluates its own copy
    of the weights, progress is per epoch, and op determinism is off (workers apply updates in any order)."""
    deterministic_ops = False

    def __init__(self, cfg: Config, resolver, cluster_info: dict, local: cl.LocalCluster | None = None):
        super().__init__(cfg, resolver, cluster_info)
        self.local, self.counter = local, None

    def strategy(self):
        strategy = super().strategy()
        tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)  # the one coordinator of this strategy
        return strategy

    def datasets(self, strategy, splits, done_steps: int):
        datasets = build_dataset(self.cfg, splits)  # shapes and steps for the results; the workers build their own
        return for_pipelines(self.cfg, datasets, splits, self.workers, self.cfg.train.global_batch_size, warn_now=True)

    @property
    def workers(self) -> int:
        return len(self.cluster_info["tasks"].get("worker", [])) if self.cluster_info else 1

    def compile(self, model, keras):
        train_cfg = self.cfg.train.model_copy(update={"steps_per_execution": steps_per_execution(self.cfg)})
        legacy = train_cfg.optimizer in LEGACY_SAME_UPDATE
        compile_model(model, train_cfg, keras, build_optimizer(train_cfg, keras, legacy))
        self.counter = _worker_step_counter(tf)
        if self.counter is not None:
            _count_steps(model, self.counter)
        return model, None

    def timer(self, job: Job):
        """Batch-level callbacks are refused here: the chief's evaluation times each epoch."""
        # The chief evaluates in the precision the workers train in.
        with precision_policy(job.keras, _precision(self.cfg)):
            return _chief_evaluation(job.keras, self.cfg, job.splits, job.model, build_model)

    def fit_data(self, job: Job) -> dict[str, Any]:
        address = service_address(self.cfg) if isinstance(job.splits, FileSource) else None
        if address is not None:
            creator = service_worker_dataset_fn(job.splits, self.cfg.train.global_batch_size, self.cfg.train.seed,
                                                address, self.cfg.output_dir)
        elif isinstance(job.splits, FileSource):
            creator = file_worker_dataset_fn(job.splits, self.workers, self.cfg.train.global_batch_size,
                                             self.cfg.train.seed)
        else:
            creator = worker_dataset_fn(job.splits, self.cfg.train.global_batch_size, self.cfg.train.seed)
        return {"x": job.keras.utils.experimental.DatasetCreator(creator),
                "steps_per_epoch": self.cfg.train.steps_per_epoch}

    def data_error(self, job: Job, exc: BaseException) -> BaseException:
        """A worker's pipeline failed: the chief reports it once, naming the worker (TensorFlow's remote error
        names the device it ran on)."""
        error = super().data_error(job, exc)
        worker = re.search(r"/job:worker/replica:\d+/task:(\d+)", str(exc))
        if isinstance(error, ConfigError) and worker:
            return ConfigError(f"worker:{worker.group(1)}: {error}")
        return error

    def stop_on_nan(self, job: Job):
        return stop_on_nan(job.keras, self.cfg, self.cfg.train.steps_per_epoch, per_epoch=True)

    def verbose(self, job: Job) -> int:
        if self.cfg.train.verbose != 1:
            return self.cfg.train.verbose
        print(f"progress: {PROGRESS}", flush=True)
        return 2

    def results(self, job: Job, history: dict, epochs_run: int) -> dict[str, Any]:
        extra = _ps_results(self.cfg, job.model, history, self.counter, self.cluster_info, self.local)
        return {"runs_on": f"{extra['workers']} worker(s) and {extra['ps']} ps", **extra}


def steps_per_execution(cfg: Config) -> int:
    """Steps in each function the chief dispatches: strategy.steps_per_execution, else train.steps_per_execution."""
    return cfg.strategy.steps_per_execution or cfg.train.steps_per_execution


def worker_dataset_fn(splits, global_batch_size: int, seed: int) -> Callable:
    """The dataset function every worker runs (through DatasetCreator) to make its own endless pipeline:
    every epoch a fresh permutation of the training split, batched to the global batch size."""


    x, y = splits.x_train, splits.y_train

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = input_context.get_per_replica_batch_size(global_batch_size)
        # TensorFlow traces this once on the chief and runs it on every worker, so one fixed shuffle seed would
        # feed every worker the same batches in the same order: mix in the worker's clock when it builds this.
        # (A tensor seed for Dataset.shuffle fails once a global seed is set; stateless permutations take one.)
        worker_seed = seed + tf.cast(tf.timestamp() * 1e6, tf.int64) % (2**31 - 1)
        # Whole passes gathered at once: a map per example cost 28% of the MLP's throughput at 8 steps per dispatch.
        return shuffled_batches(x, y, len(x) // batch, batch, worker_seed).prefetch(tf.data.AUTOTUNE)

    return dataset_fn


def file_worker_dataset_fn(source: FileSource, workers: int, global_batch_size: int, seed: int,
                           with_ids: bool = False) -> Callable:
    """Each worker's endless pipeline over its own share of the files (FILE sharding; DATA where there are fewer
    files than workers); `with_ids` adds each example's id (tests count who read what). The dataset function is
    traced once and run on every worker, and its InputContext is the same everywhere (one pipeline per worker "in
    sync"), so the worker's index comes from tf.distribute.coordinator.experimental_get_current_worker_index,
    which each worker fills in when it runs the function (TensorFlow's answer to tensorflow/tensorflow#53080).
    The function's `plan` attribute says which files each worker reads."""
    plan = source.plan(workers, global_batch_size, 1)

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        index = tf.distribute.coordinator.experimental_get_current_worker_index()
        batch = input_context.get_per_replica_batch_size(global_batch_size)
        return source.train_pipeline(plan, index, batch, seed, with_ids=with_ids).prefetch(4)

    dataset_fn.plan = plan
    return dataset_fn


def service_worker_dataset_fn(source: FileSource, global_batch_size: int, seed: int, address: str,
                              run_key: str) -> Callable:
    """Every worker joins one tf.data service job over all the files: each batch goes to the first worker that
    asks, so a slow worker takes fewer and no batch is read twice (see paradl_tf.files.service)."""

    def dataset_fn(input_context: tf.distribute.InputContext) -> tf.data.Dataset:
        batch = input_context.get_per_replica_batch_size(global_batch_size)
        return shared_train_pipeline(source, batch, seed, address, run_key).prefetch(4)

    return dataset_fn


def _worker_step_counter(tf):
    """A variable that lives on each worker, not on a ps (TensorFlow's experimental per-worker variable)."""
    try:
        return tf.Variable(0, dtype=tf.int64, trainable=False, name="paradl_worker_steps", per_worker_variable=True)
    except (TypeError, ValueError):  # a TensorFlow without per-worker variables: no per-worker counts
        return None


def _count_steps(model, counter) -> None:
    train_step = model.train_step

    def counted_train_step(data):
        counter.assign_add(1)
        return train_step(data)

    model.train_step = counted_train_step


def _read_worker_steps(counter, n_workers: int) -> list[int | None]:
    if counter is None:
        return [None] * n_workers
    try:
        return [int(v) for v in counter.read_all()]
    except Exception:  # noqa: BLE001 - a worker down at the end: read the others one by one
        values = []
        for remote in getattr(getattr(counter, "_per_worker_vars", None), "_values", ()):
            try:
                values.append(int(remote.get()))
            except Exception:  # noqa: BLE001
                values.append(None)
        return values or [None] * n_workers


def _validation_batches(splits, size: int = 1024):
    """(features, labels) numpy batches of the validation split: arrays sliced, or files read in order."""
    if isinstance(splits, FileSource):
        return splits.validation_pipeline(1, 0, size).as_numpy_iterator()
    return ((splits.x_val[i:i + size], splits.y_val[i:i + size]) for i in range(0, len(splits.x_val), size))


def _chief_evaluation(keras, cfg: Config, splits, model, build_model):
    """A per-epoch callback: time the epoch's training, then evaluate the chief's copy of the weights.

    The copy is called directly: Keras's evaluate() inside fit would run under the strategy and be sent to the
    workers. Adds val_loss and val_accuracy to the epoch's logs (and so to the history)."""
    local = build_model(cfg.model, splits.input_shape, splits.num_classes, keras)  # outside the strategy

    class ChiefEvaluation(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch_seconds: list[float] = []
            self.epoch_ends_unix: list[float] = []
            self._begin = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._begin = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_seconds.append(time.perf_counter() - self._begin)
            self.epoch_ends_unix.append(time.time())
            local.set_weights(_whole_weights(model.get_weights(), [w.shape for w in local.weights]))
            losses, correct, seen = [], 0, 0
            for x, y in _validation_batches(splits):
                logits = local(x, training=False)
                losses.append(float(tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))))
                correct += int(np.sum(np.argmax(np.asarray(logits), axis=-1) == y))
                seen += len(y)
            if logs is not None:
                logs["val_loss"] = sum(losses) / seen  # the compiled loss: mean cross-entropy
                logs["val_accuracy"] = correct / seen

    return ChiefEvaluation()


def _whole_weights(ps_values: list, shapes: list) -> list:
    """The ps model's weight values as whole arrays: a sharded variable's shards (consecutive, in order, split
    along axis 0) are concatenated back to the shape of the local model's weight."""
    values, i = [], 0
    for shape in shapes:
        parts, rows = [np.asarray(ps_values[i])], np.asarray(ps_values[i]).shape[:1]
        i += 1
        total = rows[0] if rows else 0
        while len(shape) and total < shape[0]:
            parts.append(np.asarray(ps_values[i]))
            total += parts[-1].shape[0]
            i += 1
        values.append(np.concatenate(parts) if len(parts) > 1 else parts[0])
    return values


def _ps_results(cfg: Config, model, history: dict, counter, cluster_info: dict, local) -> dict[str, Any]:
    spec = cluster_info["tasks"]
    workers = spec.get("worker", [])
    requested = cfg.train.epochs * cfg.train.steps_per_epoch
    epochs_run = len(history.get("loss", []))
    iterations = int(model.optimizer.iterations.numpy())
    steps = _read_worker_steps(counter, len(workers))
    tasks = local.summary() if local else {}
    info = {**cluster_info, "events": list(local.events) if local else []}
    return {
        "devices": [f"/job:worker/replica:0/task:{i}/device:CPU:0" for i in range(len(workers))],
        "workers": len(workers),
        "ps": len(spec.get("ps", [])),
        "cluster": info,
        "evaluation": EVALUATION,
        "progress": PROGRESS,
        "steps_per_execution": steps_per_execution(cfg),
        "requested_steps": requested,
        "resumed_from_epoch": cfg.train.epochs - epochs_run,
        "steps_this_run": epochs_run * cfg.train.steps_per_epoch,
        "optimizer_iterations": iterations,
        "optimizer_class": f"{type(model.optimizer).__module__}.{type(model.optimizer).__name__}",
        "extra_steps": iterations - requested,
        "worker_steps": {
            f"worker:{i}": {
                "address": address,
                "executed_steps": steps[i] if i < len(steps) else None,
                "restarts": tasks.get(f"worker:{i}", {}).get("restarts", 0),
            }
            for i, address in enumerate(workers)
        },
        "worker_steps_note": WORKER_STEPS_NOTE,
        "variable_placement": [{"name": v.name, "devices": variable_devices(v), "dtype": dtype_name(v.dtype)}
                               for v in model.variables],
    }


def _precision(cfg: Config) -> Precision:
    """The run's policy. A partitioner's sharded variables cannot be mixed precision (the config check refuses an
    explicit mixed policy with one), so `auto` falls back to float32 there and says why."""
    precision = resolve_precision(cfg.train.precision, cfg.devices.type)
    if precision.policy != "float32" and cfg.strategy.variable_partitioner.kind != "none":
        return Precision("float32", f"{precision.why}; float32 instead: strategy.variable_partitioner shards the "
                                    "variables, which Keras's mixed precision cannot wrap")
    return precision


def variable_devices(variable) -> list[str]:
    """The ps device of each shard of a variable (one for an unsharded variable)."""
    shards = getattr(variable, "variables", None)  # a ShardedVariable lists its shards
    return [s.device for s in shards] if isinstance(shards, (list, tuple)) else [variable.device]


# ================================================================ plan: where each variable lives
def ps_placement(variables: Sequence[dict], num_ps: int, shards_for: Callable[[dict], int] | None = None) -> list[dict]:
    """Where ParameterServerStrategy puts each variable, as TensorFlow does it: shards along axis 0 (as many as
    `shards_for(variable)` says, at most the first dimension, sizes differing by at most one row, larger
    first), every shard on the next ps in turn, round-robin over all variables in creation order.

    `variables`: dicts with name, shape and itemsize (bytes per element), in creation order."""
    placed, count = [], 0
    for v in variables:
        shape = list(v["shape"])
        parts = shards_for(v) if shards_for and shape else 1
        parts = min(parts, shape[0]) if parts > 1 else 1
        base, extra = divmod(shape[0], parts) if parts > 1 else (0, 0)
        sizes = [base + (1 if i < extra else 0) for i in range(parts)] if parts > 1 else [None]
        shards, offset = [], 0
        for size in sizes:
            shard_shape = shape if size is None else [size, *shape[1:]]
            elements = 1
            for d in shard_shape:
                elements *= d
            shards.append({
                "device": f"/job:ps/replica:0/task:{count % num_ps}/device:CPU:0",
                "shape": shard_shape,
                "offset": offset,
                "bytes": elements * v["itemsize"],
            })
            offset += size or 0
            count += 1
        placed.append({"name": v["name"], "shape": shape, "shards": shards})
    return placed


def plan(cfg: Config) -> dict[str, Any]:
    """The plan of a parameter_server config, without starting a cluster: the tasks, and which ps holds each
    variable and shard (computed as ParameterServerStrategy places them; a test checks it on a real cluster)."""
    from paradl_tf.builders.models import build_model

    keras_name = resolve_keras(cfg.keras, "parameter_server")
    keras = import_keras(keras_name)
    setup_devices(cfg.devices)
    spec = planned_spec(cfg)
    source = load_source(cfg.data, cfg.train.seed)
    datasets = for_pipelines(cfg, build_dataset(cfg, source), source, len(spec["worker"]),  # what each worker reads
                             cfg.train.global_batch_size)
    created: list = []  # every variable in creation order, as the strategy would see them (Keras's own too)

    def record(next_creator, **kwargs):
        created.append(next_creator(**kwargs))
        return created[-1]

    precision = _precision(cfg)
    with tf.variable_creator_scope(record), precision_policy(keras, precision):
        model = build_model(cfg.model, datasets.input_shape, datasets.num_classes, keras)
    partitioner = variable_partitioner(cfg.strategy.variable_partitioner, len(spec["ps"]))
    described = [{"name": v.name, "shape": [int(d) for d in v.shape], "itemsize": tf.as_dtype(v.dtype).size,
                  "dtype": tf.as_dtype(v.dtype)} for v in created]

    def shards_for(v: dict) -> int:
        return int(partitioner(tf.TensorShape(v["shape"]), v["dtype"])[0])

    placed = dict(zip(map(id, created), ps_placement(described, len(spec["ps"]), shards_for if partitioner else None)))
    variables = [
        {"name": v.name, "shape": placed[id(v)]["shape"], "dtype": tf.as_dtype(v.dtype).name,
         "bytes": sum(s["bytes"] for s in placed[id(v)]["shards"]),
         "devices": [s["device"] for s in placed[id(v)]["shards"]], "shards": placed[id(v)]["shards"]}
        # Under a mixed policy tf_keras wraps each variable in an AutoCastVariable; the creator saw the variable.
        for v in (getattr(w, "_variable", w) for w in model.variables)
    ]
    ps_bytes = {f"/job:ps/replica:0/task:{i}/device:CPU:0": 0 for i in range(len(spec["ps"]))}
    for v in variables:
        for shard in v["shards"]:
            ps_bytes[shard["device"]] += shard["bytes"]
    c = cfg.cluster
    return {
        **plan_header(cfg, tf.distribute.experimental.ParameterServerStrategy.__name__, keras_name, variables,
                      check_model_precision(model, precision), trainable_bytes(model)),
        "replicas": 1,
        "devices": [f"/job:worker/replica:0/task:{i}/device:CPU:0" for i in range(len(spec["worker"]))],
        "per_replica_batch_size": cfg.train.global_batch_size,
        "cluster": cluster_plan(cfg, c.mode if c.resolver == "local" else "remote", spec),
        "ps_bytes": ps_bytes,
        "steps_per_execution": steps_per_execution(cfg),
        "evaluation": EVALUATION,
        "input": datasets.input,
    }


def planned_spec(cfg: Config) -> cl.Spec:
    """The cluster a run would use: TF_CONFIG's for tf_config; otherwise the counts of `cluster`, with addresses
    where they are known ('127.0.0.1:<free port at start>' locally)."""
    c = cfg.cluster
    if c.resolver == "tf_config":
        return cl.parse_tf_config(os.environ.get("TF_CONFIG"), JOBS).cluster
    return cl.planned_spec(c, {"chief": 1, "worker": c.workers, "ps": c.ps})


# ================================================================ helpers
def _serve_argv(job: str, index: int) -> list[str]:
    return [sys.executable, "-m", "paradl_tf.cli", "serve", f"--job={job}", f"--task={index}"]


def _remote_tasks(spec: cl.Spec) -> dict[str, str]:
    return {f"{job}:{i}": address for job in ("ps", "worker") for i, address in enumerate(spec.get(job, []))}


def _check_is_chief(resolver, kind: str) -> None:
    task_type, task_id = getattr(resolver, "task_type", None), getattr(resolver, "task_id", None)
    if task_type not in (None, "chief"):
        raise ConfigError(
            f"this process is task {task_type}:{task_id} of the cluster (cluster.resolver: {kind}); under "
            "ParameterServerStrategy workers and ps run `paradl-tf serve` and only the chief runs `paradl-tf train`"
        )


def _clear_errors(coordinate_fn: Callable, cfg: Config, *args) -> dict[str, Any]:
    """Where no launcher watches the tasks: a task lost for good surfaces from TensorFlow as an RPC error;
    make it one line that says what to do."""
    try:
        return coordinate_fn(cfg, *args)
    except (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError) as exc:
        first = (exc.message or type(exc).__name__).strip().splitlines()[0]
        raise cl.ClusterError(_fatal_message(f"a task of the cluster stopped answering ({first})", cfg)) from None


def _local_service(cfg: Config) -> bool:
    service = getattr(cfg.data, "service", None)
    return service is not None and service.kind == "local"


def _fatal_message(fatal: str, cfg: Config) -> str:
    if fatal.startswith(tuple(f"task {job}:" for job in cl.SERVICE_JOBS)):
        return f"{fatal}; the local tf.data service (data.service) cannot go on without it, so the run was stopped"
    resume = cl.resume_hint(cfg, "epoch backup")
    return f"{fatal}; ParameterServerStrategy cannot go on without it (the variables live on the ps tasks): {resume}"


def _settled_fatal(local: cl.LocalCluster, wait_s: float = 2.0) -> bool:
    """After an error in fit: give the watcher a moment to notice a task that died at the same time."""
    deadline = time.monotonic() + wait_s
    while local.fatal is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return local.fatal is not None


def _watchdog(status_path: Path, cfg: Config) -> Callable[[str], None]:
    """On a fatal loss: if TensorFlow has not failed the run within PS_LOSS_GRACE_S, fail it from here."""
    def on_fatal(message: str) -> None:
        def expire():
            cl.write_json(status_path, {"error": _fatal_message(message, cfg) + f" (no response from TensorFlow "
                                      f"within {PS_LOSS_GRACE_S:g} s)", "type": "ClusterError"})
            print(f"error: {message}", file=sys.stderr, flush=True)
            os._exit(2)  # pid 1 of the namespace: its end kills every task

        timer = threading.Timer(PS_LOSS_GRACE_S, expire)
        timer.daemon = True
        timer.start()

    return on_fatal


if __name__ == "__main__":  # the driver of a local cluster, started by cluster.launch
    cl.driver_main(sys.argv, drive)
