"""Examples of user code a config can name by import path (`kind: user`, `fn: paradl_tf.examples:...`)."""

from __future__ import annotations


def two_moons(seed: int, examples: int = 2000, noise: float = 0.15, validation_split: float = 0.2):
    """A user data loader: returns ((x_train, y_train), (x_val, y_val)); scikit-learn's two interleaved moons."""
    from sklearn.datasets import make_moons

    x, y = make_moons(n_samples=examples, noise=noise, random_state=seed)
    n = int(examples * (1 - validation_split))
    return (x[:n].astype("float32"), y[:n]), (x[n:].astype("float32"), y[n:])


def residual_mlp(input_shape, num_classes: int, keras, width: int = 64, blocks: int = 2):
    """A user model builder: gets the data's input shape, class count and the Keras module to use."""
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = keras.layers.Dense(width, activation="relu", name="embed")(keras.layers.Flatten(name="flatten")(inputs))
    for i in range(blocks):
        h = keras.layers.Dense(width, activation="relu", name=f"block{i}_dense")(x)
        x = keras.layers.Add(name=f"block{i}_add")([x, h])
    outputs = keras.layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inputs, outputs, name="residual_mlp")



def moons_dataset(input_context, seed: int, split: str, examples: int = 2000, noise: float = 0.15):
    """A user tf.data pipeline (`data.kind: user_dataset`): (features, class id) examples, unbatched, of this input
    pipeline's share (`input_context` is None in a one-pipeline run). The toolkit shuffles, repeats and batches."""
    import tensorflow as tf

    (x_train, y_train), (x_val, y_val) = two_moons(seed, examples, noise)
    x, y = (x_train, y_train) if split == "train" else (x_val, y_val)
    ds = tf.data.Dataset.from_tensor_slices((x, y.astype("int32")))
    if input_context is not None:  # each pipeline its own examples
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return ds
