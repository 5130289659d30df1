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
