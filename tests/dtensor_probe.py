"""The DTensor side of the hybrid engine study (docs/hybrid.md): does tf_keras + DTensor on a batch x model mesh
train a Keras model with fit on this TensorFlow? Not a test; run by hand, one probe per process (some crash it):

    for p in build np ds dtd loop; do P=$p python tests/dtensor_probe.py; done
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
                                           [tf.config.LogicalDeviceConfiguration()] * 4)
import tf_keras  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from tensorflow.experimental import dtensor  # noqa: E402

PROBE = os.environ.get("P", "build")


def step(name, fn):
    t = time.perf_counter()
    try:
        out = fn()
        print(f"OK   {name} ({time.perf_counter() - t:.2f}s)", "" if out is None else out, flush=True)
        return out
    except Exception as e:  # the probe reports every failure and goes on
        print(f"FAIL {name}: {type(e).__name__}: {str(e).splitlines()[0][:400]}", flush=True)


mesh = dtensor.create_mesh([("batch", 2), ("model", 2)], device_type="CPU")
layout_map = tf_keras.dtensor.experimental.LayoutMap(mesh=mesh)
layout_map["d1.*kernel"] = dtensor.Layout([dtensor.UNSHARDED, "model"], mesh)
layout_map["d1.*bias"] = dtensor.Layout(["model"], mesh)
layout_map["d2.*kernel"] = dtensor.Layout(["model", dtensor.UNSHARDED], mesh)
layout_map["d2.*bias"] = dtensor.Layout.replicated(mesh, 1)
with layout_map.scope():
    inputs = tf_keras.Input((64,))
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(10, name="d2")(
        tf_keras.layers.Dense(128, activation="relu", name="d1")(inputs)))
print("layouts:", [dtensor.fetch_layout(w).sharding_specs for w in model.weights])
model.compile(optimizer=tf_keras.dtensor.experimental.optimizers.Adam(learning_rate=3e-3, mesh=mesh),
              loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
digits = load_digits()
x, y = (digits.data / 16).astype("float32"), digits.target.astype("int64")
layouts = (dtensor.Layout.batch_sharded(mesh, "batch", 2), dtensor.Layout.batch_sharded(mesh, "batch", 1))


def dtensor_dataset(n):
    return dtensor.DTensorDataset(tf.data.Dataset.from_tensor_slices((x[:n], y[:n])).repeat(), mesh=mesh,
                                  layouts=layouts, global_batch_size=64, batch_dim="batch")


class Timer(tf_keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.t = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        print(f"  epoch {epoch}: {(time.perf_counter() - self.t) / 22 * 1000:.2f} ms/step, loss {logs['loss']:.3f}")


if PROBE == "np":
    step("fit on NumPy arrays", lambda: model.fit(x, y, batch_size=64, epochs=1, verbose=0).history)
if PROBE == "ds":
    step("fit on a batched tf.data.Dataset", lambda: model.fit(
        tf.data.Dataset.from_tensor_slices((x, y)).batch(64, drop_remainder=True), epochs=1, verbose=0).history)
if PROBE == "dtd":
    step("fit on a DTensorDataset, 4 epochs", lambda: model.fit(dtensor_dataset(1408), epochs=4, steps_per_epoch=22,
                                                                 verbose=0, callbacks=[Timer()]) and None)
    step("fit with validation_data", lambda: model.fit(dtensor_dataset(1408), epochs=1, steps_per_epoch=22, verbose=0,
                                                       validation_data=dtensor_dataset(1797),
                                                       validation_steps=5).history)
if PROBE == "loop":
    xs = dtensor.relayout(dtensor.copy_to_mesh(tf.constant(x[:64]), dtensor.Layout.replicated(mesh, 2)), layouts[0])
    ys = dtensor.relayout(dtensor.copy_to_mesh(tf.constant(y[:64]), dtensor.Layout.replicated(mesh, 1)), layouts[1])

    @tf.function
    def train(xs, ys):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf_keras.losses.sparse_categorical_crossentropy(ys, model(xs), from_logits=True))
        grads = tape.gradient(loss, model.trainable_variables)
        model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    step("custom loop, 20 steps", lambda: [round(float(train(xs, ys)), 3) for _ in range(20)][::19])
