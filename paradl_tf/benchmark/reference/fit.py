"""What every reference shares: the devices split, the model compiled, and model.fit timed epoch by epoch."""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import tensorflow as tf

from paradl_tf.benchmark.reference.inputs import _hand_written_input
from paradl_tf.benchmark.reference.workload import _data, _model


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
        "epoch_ends_unix": timer.epoch_ends_unix,
        "steps_per_epoch": steps,
        "global_batch_size": batch,
        "build_seconds": build_seconds,
        "replicas": strategy.num_replicas_in_sync if strategy else 1,
        "params": int(model.count_params()),
        # What ran, for the logs and tests: the tutorial-style variants differ in these two.
        "input_pipeline": input_pipeline.__name__,
        "optimizer": f"{type(model.optimizer).__module__}.{type(model.optimizer).__name__}",
    }


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
            self.epoch_ends_unix: list[float] = []  # wall-clock time (time.time()) each timed part ended
            self._begin = self._last = 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self._begin = self._last = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            end = self._last if batch_hooks else time.perf_counter()
            self.epoch_seconds.append(end - self._begin)
            self.epoch_ends_unix.append(time.time() - (time.perf_counter() - end))

    if batch_hooks:
        def on_train_batch_end(self, batch, logs=None):
            self._last = time.perf_counter()

        EpochTimer.on_train_batch_end = on_train_batch_end
    return EpochTimer()


def _legacy_optimizer(keras: ModuleType, name: str, learning_rate: float):
    """tf_keras's legacy optimizer of that name: the parameter-server tutorial compiles with one."""
    return getattr(keras.optimizers.legacy, _OPTIMIZER_CLASSES[name])(learning_rate=learning_rate)
