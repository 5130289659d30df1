"""Model parallel and hybrid by hand (Keras 3): stages under tf.device, micro-batches, R staged copies."""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

import numpy as np
import tensorflow as tf

from paradl_tf.benchmark.reference.fit import _fit, _optimizer, _split_devices


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
