"""A training run: config -> devices -> strategy -> Keras -> data -> model -> model.fit -> results.json."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import tensorflow as tf

from paradl_tf.build.checkpoints import backed_up_steps, export_model, keras3_backed_up_epochs
from paradl_tf.config import Config, dump_config
from paradl_tf.build.data import Datasets, build_dataset, load_splits, steps_per_epoch
from paradl_tf.build.devices import setup_devices
from paradl_tf.build.keras_version import import_keras, resolve_keras
from paradl_tf.model_parallel.placed import compile_placed_model
from paradl_tf.build.models import build_model, compile_model
from paradl_tf.build.precision import check_model_precision, precision_policy, resolve_precision
from paradl_tf.build.strategies import build_strategy, check_global_batch


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
    """Model parallel: the stage table (device, layers, parameter bytes per stage)."""
    resumed_from_step: int = 0
    """Training steps done by the run whose backup (checkpoint.dir) this one resumes; the data skip them."""
    precision: dict | None = None
    """The dtype policy that ran, why, and the dtypes of variables, activations and logits."""

    @property
    def replicas(self) -> int:
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


def prepare(cfg: Config) -> Job:
    """Set up devices, build the strategy, pick Keras, build the data and the compiled model."""
    setup_devices(cfg.devices)
    strategy = build_strategy(cfg)
    per_replica = check_global_batch(cfg.train.global_batch_size, strategy)
    keras_name = resolve_keras(
        cfg.keras, cfg.strategy.kind, strategy.num_replicas_in_sync, cfg.train.steps_per_execution
    )
    keras = import_keras(keras_name)
    keras.utils.set_random_seed(cfg.train.seed)
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    splits = load_splits(cfg.data, cfg.train.seed)
    done = _backed_up_steps(cfg, keras_name, steps_per_epoch(cfg.train, len(splits.x_train)))
    datasets = build_dataset(cfg, splits, strategy=strategy, skip_steps=done)
    precision = resolve_precision(cfg.train.precision, cfg.devices.type)
    with strategy.scope(), precision_policy(keras, precision):
        model = build_model(cfg.model, datasets.input_shape, datasets.num_classes, keras)
        placement = None
        if cfg.strategy.kind == "model_parallel":  # clone the layers onto their stages' devices
            model, placement = compile_placed_model(model, cfg, keras)
        else:
            compile_model(model, cfg.train, keras)
    return Job(cfg, strategy, keras_name, keras, datasets, model, per_replica, placement, done,
               check_model_precision(model, precision))


def _backed_up_steps(cfg: Config, keras_name: str, steps_per_epoch: int) -> int:
    if not cfg.checkpoint.dir:
        return 0
    if keras_name == "keras3":
        return keras3_backed_up_epochs(cfg.checkpoint.dir) * steps_per_epoch
    return backed_up_steps(cfg.checkpoint.dir)


def train(cfg: Config) -> dict[str, Any]:
    """Train with model.fit as `cfg` says; writes config.yaml and results.json to cfg.output_dir and returns the results."""
    if cfg.strategy.kind == "parameter_server":  # a cluster to start or find first: paradl_tf.runs.parameter_server
        from paradl_tf.runs.parameter_server import train as train_parameter_server

        return train_parameter_server(cfg)
    if cfg.strategy.kind == "multi_worker_mirrored":  # every worker runs the training: paradl_tf.runs.multi_worker
        from paradl_tf.runs.multi_worker import train as train_multi_worker

        return train_multi_worker(cfg)
    start = time.perf_counter()
    job = prepare(cfg)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(dump_config(cfg))
    timer = epoch_timer(job.keras)
    callbacks = [timer]
    if cfg.checkpoint.dir:  # a rerun resumes at the epoch after the last backup; removed when fit ends
        callbacks.append(job.keras.callbacks.BackupAndRestore(backup_dir=cfg.checkpoint.dir))
    if cfg.train.tensorboard:
        callbacks.append(job.keras.callbacks.TensorBoard(log_dir=str(out / "tensorboard")))
    fit_start = time.perf_counter()
    history = job.model.fit(
        **job.datasets.fit_kwargs(job.keras_name),  # one iterator for the whole run
        epochs=cfg.train.epochs,
        callbacks=callbacks,
        verbose=cfg.train.verbose,
    )
    fit_seconds = time.perf_counter() - fit_start
    export_model(job.model, out / "model.keras", True, cfg.checkpoint.export)
    results = run_results(job, history.history, timer.epoch_seconds, fit_seconds, time.perf_counter() - start)
    if cfg.checkpoint.dir:
        results["resumed_from_step"] = job.resumed_from_step
        results["steps_this_run"] = len(timer.epoch_seconds) * job.datasets.steps_per_epoch
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def run_results(job: Job, history: dict, epoch_seconds: list[float], fit_seconds: float, wall: float) -> dict:
    """The keys every run's results.json has; the cluster strategies add their own."""
    cfg = job.cfg
    steps = job.datasets.steps_per_epoch
    examples_per_epoch = steps * cfg.train.global_batch_size
    steady = epoch_seconds[1:] or epoch_seconds  # the first epoch pays for tracing
    return {
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
        **({"precision": job.precision} if job.precision else {}),
        **({"placement": job.placement} if job.placement else {}),
    }


def epoch_timer(keras: ModuleType):
    """A callback that times the training part of each epoch (first step to last step, validation excluded)."""

    class EpochTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epoch_seconds: list[float] = []
            self._begin = self._last = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._begin = self._last = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self._last = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.epoch_seconds.append(self._last - self._begin)

    return EpochTimer()
