"""User code for tests that name functions by import path (tests/ is on sys.path under pytest)."""


def not_a_model(input_shape, num_classes, keras, **args):
    return "a string, not a model"


def one_split(seed):
    return [1, 2, 3]


def float32_model(input_shape, num_classes, keras, **args):
    """A model whose every layer pins float32, whatever the global dtype policy."""
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten(dtype="float32")(inputs)
    x = keras.layers.Dense(16, activation="relu", dtype="float32")(x)
    return keras.Model(inputs, keras.layers.Dense(num_classes, dtype="float32")(x))


def broken_dataset(input_context, seed, split, fault):
    """moons_dataset with one fault a user's pipeline can have (tests/test_data_checks.py)."""
    import numpy as np
    import tensorflow as tf

    from paradl_tf.examples import two_moons

    (x, y), (x_val, y_val) = two_moons(seed, 600, 0.15)
    if split == "validation":
        x, y = x_val, y_val
    y = y.astype("int64")
    if fault == "label_out_of_range" and split == "train":
        y[300] = 7  # not in the first batch: met while training
    if fault == "nan_feature" and split == "validation":
        x = x.copy()
        x[5, 1] = np.nan
    if fault == "float_labels":
        y = y.astype("float32")
    if fault == "validation_shape" and split == "validation":
        x = np.concatenate([x, x[:, :1]], axis=1)
    ds = tf.data.Dataset.from_tensor_slices((x.astype("float32"), y))
    return ds.take(0) if fault == "empty" and split == "train" else ds


def broken_arrays(seed, fault):
    """Arrays (data.kind: user) with one fault (tests/test_data_checks.py)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    x, y = rng.random((200, 4), dtype=np.float32), np.arange(200) % 3
    if fault == "negative_label":
        y[17] = -1
    if fault == "nan_feature":
        x[42, 2] = np.inf
    if fault == "float_labels":
        y = y + 0.5
    return (x[:160], y[:160]), (x[160:], y[160:])
