"""The one fit skeleton: config -> devices -> strategy -> Keras -> data -> model -> model.fit -> results.json.

Every strategy kind runs through `prepare` and `fit_run`; a `Run` subclass overrides the hooks where a kind
genuinely differs (starting or finding a cluster is its runner's business before that)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import tensorflow as tf

from paradl_tf import cluster as cl
from paradl_tf.builders.checkpoints import backed_up_steps, export_model, keras3_backed_up_epochs
from paradl_tf.config import Config, dump_config
from paradl_tf.builders.data import Datasets, build_dataset, load_source, source_steps_per_epoch
from paradl_tf.builders.devices import setup_devices
from paradl_tf.errors import TrainingDiverged
from paradl_tf.files.sources import DATA_ERRORS, data_error
from paradl_tf.builders.keras_version import import_keras, resolve_keras
from paradl_tf.model_parallel.hybrid import compile_hybrid_model
from paradl_tf.model_parallel.placed import compile_placed_model
from paradl_tf.builders.models import build_model, compile_model
from paradl_tf.builders.precision import check_model_precision, precision_policy, resolve_precision
from paradl_tf.builders.strategies import build_strategy, check_global_batch


@dataclass
class Job:
    """Everything a run needs, built and compiled but not trained."""

    cfg: Config
    strategy: tf.distribute.Strategy
    keras_name: str
    keras: ModuleType
    datasets: Datasets
    model: Any
    per_replica_batch_size: int
    placement: dict | None = None
    """Model parallel: the stage table (device, layers, parameter bytes per stage); hybrid: the mesh of groups x stages."""
    resumed_from_step: int = 0
    """Training steps done by the run whose backup (checkpoint.dir) this one resumes; the data skip them."""
    precision: dict | None = None
    """The dtype policy that ran, why, and the dtypes of variables, activations and logits."""
    splits: Any = None
    """What the datasets come from: training and validation arrays, or a file source (paradl_tf.files)."""
    is_chief: bool = True
    """This process writes config.yaml, results.json and the exported model (MultiWorkerMirrored: worker 0)."""

    @property
    def replicas(self) -> int:
        if self.placement and "replicas" in self.placement:  # hybrid: the replica groups
            return self.placement["replicas"]
        return self.strategy.num_replicas_in_sync

    @property
    def devices(self) -> list[str]:
        if self.placement:
            return [stage["device"] for stage in self.placement["stages"]]
        if not tf.distribute.has_strategy() and self.cfg.strategy.kind == "default":
            # The default strategy names no devices: TensorFlow places ops, on the first GPU if any.
            gpus = tf.config.list_logical_devices("GPU")
            return [(gpus or tf.config.list_logical_devices("CPU"))[0].name]
        return list(self.strategy.extended.worker_devices)


class Run:
    """How a strategy kind trains: hooks into the one fit skeleton (`prepare`, then `fit_run`).

    The defaults are the single-process run (default, one_device, mirrored, model_parallel, hybrid); the cluster
    strategies override where they genuinely differ (paradl_tf.runs.multi_worker, .parameter_server)."""

    deterministic_ops = True
    """Op determinism when train.deterministic is set; parameter servers turn it off, as workers race anyway."""

    def __init__(self, cfg: Config, resolver=None, cluster_info: dict | None = None):
        self.cfg, self.resolver, self.cluster_info = cfg, resolver, cluster_info

    # ---------------------------------------------------------------- building the job
    def setup_devices(self) -> None:
        setup_devices(self.cfg.devices)

    def strategy(self) -> tf.distribute.Strategy:
        return build_strategy(self.cfg, cluster_resolver=self.resolver)

    def check(self, strategy: tf.distribute.Strategy) -> None:
        """Before the data and the model: what must hold across processes."""

    def is_chief(self, strategy: tf.distribute.Strategy) -> bool:
        return True

    def datasets(self, strategy: tf.distribute.Strategy, splits, done_steps: int) -> Datasets:
        return build_dataset(self.cfg, splits, strategy=strategy, skip_steps=done_steps)

    def compile(self, model, keras: ModuleType) -> tuple[Any, dict | None]:
        """Inside the strategy's scope and the precision policy: the compiled model and its placement, if any."""
        if self.cfg.strategy.kind == "model_parallel":  # clone the layers onto their stages' devices
            return compile_placed_model(model, self.cfg, keras)
        if self.cfg.strategy.kind == "hybrid":  # R placed copies, one per replica group
            return compile_hybrid_model(model, self.cfg, keras)
        compile_model(model, self.cfg.train, keras)
        return model, None

    # ---------------------------------------------------------------- fitting it
    def timer(self, job: Job):
        """The callback whose `epoch_seconds` time each epoch's training."""
        return epoch_timer(job.keras)

    def callbacks(self, job: Job) -> list:
        """Callbacks of this kind besides the timer, the backup and TensorBoard."""
        return []

    def stop_on_nan(self, job: Job):
        """The callback that stops the run at the first step whose loss is not finite (stop_on_nan)."""
        return stop_on_nan(job.keras, self.cfg, job.datasets.steps_per_epoch)

    def data_error(self, job: Job, exc: BaseException) -> BaseException:
        """What to raise for a read, parse or check failure of the input pipeline during fit."""
        return data_error(job.splits, exc)

    def backup(self, job: Job):
        """A rerun resumes at the epoch after the last backup; the backup is removed when fit ends."""
        return job.keras.callbacks.BackupAndRestore(backup_dir=self.cfg.checkpoint.dir)

    def fit_data(self, job: Job) -> dict[str, Any]:
        return job.datasets.fit_kwargs(job.keras_name)  # one iterator for the whole run

    def verbose(self, job: Job) -> int:
        return self.cfg.train.verbose

    def results(self, job: Job, history: dict, epochs_run: int) -> dict[str, Any]:
        """What results.json says besides run_results' keys; `runs_on` is the CLI's summary of where it ran."""
        stages = job.placement["stages"] if job.placement else None
        extra = {"runs_on": f"{len(stages)} stage(s)" if stages else f"{job.replicas} replica(s)"}
        if job.placement and "groups" in job.placement:  # hybrid
            extra["runs_on"] = f"{job.replicas} group(s) x {len(stages) // job.replicas} stage(s)"
        if self.cfg.checkpoint.dir:
            extra.update(resumed_from_step=job.resumed_from_step, steps_this_run=epochs_run * job.datasets.steps_per_epoch)
        return extra


def prepare(cfg: Config, run: Run | None = None) -> Job:
    """Set up devices, build the strategy, pick Keras, build the data and the compiled model."""
    run = run or Run(cfg)
    run.setup_devices()
    strategy = run.strategy()  # before anything starts TensorFlow's runtime (MultiWorkerMirrored needs it)
    keras_name = resolve_keras(
        cfg.keras, cfg.strategy.kind, strategy.num_replicas_in_sync, cfg.train.steps_per_execution
    )
    keras = import_keras(keras_name)
    keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.deterministic and run.deterministic_ops:
        tf.config.experimental.enable_op_determinism()
    run.check(strategy)
    per_replica = check_global_batch(cfg.train.global_batch_size, strategy)
    splits = load_source(cfg.data, cfg.train.seed)
    done = _backed_up_steps(cfg, keras_name, source_steps_per_epoch(cfg, splits, strategy))
    datasets = run.datasets(strategy, splits, done)
    precision = resolve_precision(cfg.train.precision, cfg.devices.type)
    with strategy.scope(), precision_policy(keras, precision):
        model = build_model(cfg.model, datasets.input_shape, datasets.num_classes, keras)
        model, placement = run.compile(model, keras)
    if placement and "replicas" in placement:  # hybrid: each replica group trains on its share of the batch
        per_replica = check_global_batch(cfg.train.global_batch_size, placement["replicas"])
    return Job(cfg, strategy, keras_name, keras, datasets, model, per_replica, placement, done,
               check_model_precision(model, precision), splits=splits, is_chief=run.is_chief(strategy))


def _backed_up_steps(cfg: Config, keras_name: str, steps_per_epoch: int) -> int:
    if not cfg.checkpoint.dir:
        return 0
    if keras_name == "keras3":
        return keras3_backed_up_epochs(cfg.checkpoint.dir) * steps_per_epoch
    return backed_up_steps(cfg.checkpoint.dir)


def train(cfg: Config) -> dict[str, Any]:
    """Train in this process (default, one_device, mirrored, model_parallel); paradl_tf.train picks the runner
    for every kind. A local tf.data service (data.service.kind: local) runs beside it as child processes."""
    with cl.local_service(cfg, Path(cfg.output_dir) / "data_service"):
        return fit_run(Run(cfg))


def fit_run(run: Run) -> dict[str, Any]:
    """The one fit skeleton: prepare, callbacks, model.fit, export, results. The chief writes config.yaml,
    results.json and the exported model to output_dir; every process returns its results."""
    cfg = run.cfg
    start = time.perf_counter()
    job = prepare(cfg, run)
    out = Path(cfg.output_dir)
    if job.is_chief:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(dump_config(cfg))
    timer = run.timer(job)
    # First: a step whose loss is not finite stops fit before any other callback (a backup) sees its weights.
    callbacks = [run.stop_on_nan(job), timer, *run.callbacks(job)]
    if cfg.checkpoint.dir:
        callbacks.append(run.backup(job))
    if cfg.train.tensorboard:
        callbacks.append(job.keras.callbacks.TensorBoard(log_dir=str(out / "tensorboard")))
    fit_start = time.perf_counter()
    try:
        history = job.model.fit(**run.fit_data(job), epochs=cfg.train.epochs, callbacks=callbacks,
                                verbose=run.verbose(job))
    except TrainingDiverged as exc:
        if job.is_chief:
            (out / "results.json").write_text(json.dumps(unfinished_results(job, exc), indent=2) + "\n")
        raise
    except DATA_ERRORS as exc:
        raise run.data_error(job, exc) from exc
    fit_seconds = time.perf_counter() - fit_start
    export_model(job.model, out / "model.keras", job.is_chief, cfg.checkpoint.export)
    results = run_results(job, history.history, timer.epoch_seconds, fit_seconds, time.perf_counter() - start)
    results.update(run.results(job, history.history, len(timer.epoch_seconds)))
    if getattr(timer, "first_step_at", None):  # a launcher measures from its start to this (time.time())
        results["first_step_unix"] = timer.first_step_at
    # When each epoch's training ended (time.time()): to line the epochs up with other processes' (the bench).
    results["epoch_train_ends_unix"] = timer.epoch_ends_unix
    if job.is_chief:
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def run_results(job: Job, history: dict, epoch_seconds: list[float], fit_seconds: float, wall: float) -> dict:
    """The keys every run's results.json has; the cluster strategies add their own."""
    cfg = job.cfg
    steps = job.datasets.steps_per_epoch
    examples_per_epoch = steps * cfg.train.global_batch_size
    steady = epoch_seconds[1:] or epoch_seconds  # the first epoch pays for tracing
    return {
        "finished": True,
        "strategy": cfg.strategy.kind,
        "strategy_class": type(job.strategy).__name__,
        "keras": job.keras_name,
        "keras_version": job.keras.__version__,
        "tensorflow_version": tf.__version__,
        "replicas": job.replicas,
        "devices": job.devices,
        "global_batch_size": cfg.train.global_batch_size,
        "per_replica_batch_size": job.per_replica_batch_size,
        "epochs": cfg.train.epochs,
        "steps_per_epoch": steps,
        "history": {k: [float(v) for v in vs] for k, vs in history.items()},
        "val_accuracy": float(history["val_accuracy"][-1]),
        "examples_per_sec": examples_per_epoch * len(steady) / sum(steady),
        "epoch_train_seconds": epoch_seconds,
        "fit_seconds": fit_seconds,
        "wall_seconds": wall,
        "output_dir": cfg.output_dir,
        "threads": {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),  # 0: TensorFlow's default
                    "inter_op": tf.config.threading.get_inter_op_parallelism_threads()},
        "input": job.datasets.input,
        **({"precision": job.precision} if job.precision else {}),
        **({"placement": job.placement} if job.placement else {}),
    }


def epoch_timer(keras: ModuleType):
    """A callback that times the training part of each epoch (first step to last step, validation excluded)."""

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch_seconds: list[float] = []
            self.epoch_ends_unix: list[float] = []  # wall-clock time (time.time()) each epoch's last step ended
            self._begin = self._last = 0.0
            self.first_step_at: float | None = None  # wall-clock time (time.time()) the first step ended

        def on_epoch_begin(self, epoch, logs=None):
            self._begin = self._last = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self._last = time.perf_counter()
            if self.first_step_at is None:
                self.first_step_at = time.time()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_seconds.append(self._last - self._begin)
            self.epoch_ends_unix.append(time.time() - (time.perf_counter() - self._last))

    return EpochTimer()


def stop_on_nan(keras: ModuleType, cfg: Config, steps_per_epoch: int, per_epoch: bool = False):
    """Keras's TerminateOnNaN, made to raise TrainingDiverged naming the epoch and step rather than stop quietly
    (fit would then return as if done, and BackupAndRestore's on_train_end would delete the backup): raised from
    the callback, fit ends at that step without on_train_end, so the last backup is kept for a rerun.
    `per_epoch`: check each epoch's loss only (under ParameterServerStrategy a step's loss is a remote value, and
    fetching it every step would make the workers wait on the chief)."""
    backup = cfg.checkpoint.dir

    class StopOnNonFiniteLoss(keras.callbacks.TerminateOnNaN):
        epoch = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_batch_end(self, batch, logs=None):
            if not per_epoch:
                self._check((logs or {}).get("loss"), f"step {batch + 1} of {steps_per_epoch}", batch + 1)

        def on_epoch_end(self, epoch, logs=None):
            if per_epoch:
                self._check((logs or {}).get("loss"), f"one of its steps 1 to {steps_per_epoch}", None)

        def _check(self, loss, step: str, step_number: int | None) -> None:
            if loss is None or np.isfinite(float(loss)):
                return
            if not backup:
                resume = ("fix the data (or lower train.learning_rate); with checkpoint.dir set, a rerun resumes "
                          "from the last backup")
            elif tf.io.gfile.exists(backup) and tf.io.gfile.listdir(backup):
                resume = (f"its last backup in checkpoint.dir={backup} is kept: fix the data (or lower "
                          "train.learning_rate) and rerun the same command to resume from it")
            else:
                resume = (f"no backup was taken yet in checkpoint.dir={backup}: fix the data (or lower "
                          "train.learning_rate) and rerun")
            raise TrainingDiverged(
                f"train: the loss became {float(loss)} at epoch {self.epoch + 1}, {step}: the run stopped there and "
                f"did not finish (results.json says so); {resume}", epoch=self.epoch + 1, step=step_number)

    return StopOnNonFiniteLoss()


def unfinished_results(job: Job, exc: TrainingDiverged) -> dict[str, Any]:
    """results.json of a run stopped by a non-finite loss: where, why, and the epochs it finished."""
    history = getattr(getattr(job.model, "history", None), "history", None) or {}
    return {"finished": False, "stopped": str(exc), "stopped_at": {"epoch": exc.epoch, "step": exc.step},
            "strategy": job.cfg.strategy.kind, "keras": job.keras_name, "epochs": job.cfg.train.epochs,
            "steps_per_epoch": job.datasets.steps_per_epoch,
            "history": {k: [float(v) for v in vs] for k, vs in history.items()},
            "output_dir": job.cfg.output_dir, "input": job.datasets.input}
