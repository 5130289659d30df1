"""The data and models, written out by hand: the same examples and layers as the toolkit builds for a config."""

from __future__ import annotations

from types import ModuleType

import numpy as np


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
