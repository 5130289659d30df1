"""Hand-written reference training for the benchmark: plain tf.distribute and Keras, no paradl_tf code.

Each function is what a user would write by hand for one strategy: the same data, input
pipeline, model, optimizer and `model.fit` (training steps only, no validation) as the
toolkit runs for the same config, so
`paradl-tf bench` can report toolkit / hand-written throughput per strategy. They read the
run's settings from a plain dict shaped like a paradl_tf config (model, data, train,
devices, strategy); nothing here imports paradl_tf.

    REFERENCES["mirrored"](config_dict, keras)   # -> {"epoch_seconds": [...], "steps_per_epoch": ..., ...}

Adding a strategy: write `def my_strategy(cfg, keras) -> dict` below and add it to REFERENCES.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
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
        out = _fit(cfg, keras, strategy, time.perf_counter())
        return {**out, "cluster_start_seconds": cluster_start}
    finally:
        for server in servers:
            server.kill()
            server.wait()


REFERENCES: dict[str, Callable[[dict, ModuleType], dict[str, Any]]] = {
    "one_device": one_device,
    "mirrored": mirrored,
    "parameter_server": parameter_server,
    # TODO(issue 7): multi_worker_mirrored, model_parallel (layers under tf.device): no hand-written reference yet.
}


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


def _fit(cfg: dict, keras: ModuleType, strategy, build_start: float) -> dict[str, Any]:
    """Data, model, compile, then model.fit on the training data only (the benchmark times training steps)."""
    train = cfg["train"]
    keras.utils.set_random_seed(train.get("seed", 0))
    (x, y), _, classes = _data(cfg["data"], train.get("seed", 0))
    batch = train["global_batch_size"]
    steps = train.get("steps_per_epoch") or len(x) // batch
    parameter_servers = isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)
    if parameter_servers:
        dataset = keras.utils.experimental.DatasetCreator(_worker_dataset_fn(x, y, batch, train.get("seed", 0)))
    else:
        dataset = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(x), seed=train.get("seed", 0))
        dataset = dataset.batch(batch, drop_remainder=True)
        if train.get("steps_per_epoch"):
            dataset = dataset.repeat()
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    scope = strategy.scope() if strategy else _nothing()
    with scope:
        model = _model(cfg["model"], x.shape[1:], classes, keras)
        model.compile(
            optimizer=_optimizer(keras, train.get("optimizer", "adam"), train.get("learning_rate", 1e-3)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            steps_per_execution=train.get("steps_per_execution", 1),
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
    }


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


def _optimizer(keras: ModuleType, name: str, learning_rate: float):
    classes = {"sgd": "SGD", "adam": "Adam", "rmsprop": "RMSprop", "adagrad": "Adagrad"}
    return getattr(keras.optimizers, classes[name])(learning_rate=learning_rate)


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
