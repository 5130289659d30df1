"""Keras models from the `model` config section, for Keras 3 or tf_keras (same functional API).

Every model ends in logits; layers have stable names so placements can refer to them.
"""

from __future__ import annotations

from types import ModuleType

from paradl_tf.config import CNNConfig, InceptionConfig, MLPConfig, TrainConfig, UserModelConfig
from paradl_tf.errors import ConfigError
from paradl_tf.builders.imports import import_callable


def build_model(model_cfg, input_shape: tuple[int, ...], num_classes: int, keras: ModuleType):
    """An uncompiled Keras model; build it inside `strategy.scope()` so its variables are distributed."""
    if model_cfg.kind == "mlp":
        return _mlp(model_cfg, input_shape, num_classes, keras)
    if model_cfg.kind == "cnn":
        return _cnn(model_cfg, _image_shape(input_shape, "cnn"), num_classes, keras)
    if model_cfg.kind == "inception":
        return _inception(model_cfg, _image_shape(input_shape, "inception"), num_classes, keras)
    if model_cfg.kind == "user":
        return _user(model_cfg, input_shape, num_classes, keras)
    raise ConfigError(f"model.kind: unknown model kind {model_cfg.kind!r}; choose one of: mlp, cnn, inception, user")


def compile_model(model, train_cfg: TrainConfig, keras: ModuleType, optimizer=None, **compile_args):
    """Compile with the optimizer (default: build_optimizer's), loss and metrics of `train`; call inside
    `strategy.scope()`."""
    model.compile(
        optimizer=optimizer or build_optimizer(train_cfg, keras),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        steps_per_execution=train_cfg.steps_per_execution,
        **compile_args,
    )
    return model


def build_optimizer(train_cfg: TrainConfig, keras: ModuleType, legacy: bool = False):
    """The optimizer of `train`; legacy: tf_keras's legacy (OptimizerV2) class of the same name."""
    module = keras.optimizers.legacy if legacy else keras.optimizers
    name = {"sgd": "SGD", "adam": "Adam", "rmsprop": "RMSprop", "adagrad": "Adagrad"}[train_cfg.optimizer]
    return getattr(module, name)(learning_rate=train_cfg.learning_rate)


def _logits(keras: ModuleType, num_classes: int, x):
    # float32 under a mixed policy: a softmax and loss over bfloat16/float16 logits lose accuracy. Otherwise
    # the global policy's dtype, like every other layer (float32, or float64 where a user asks for it).
    mixed = keras.mixed_precision.global_policy().name.startswith("mixed")
    return keras.layers.Dense(num_classes, name="logits", dtype="float32" if mixed else None)(x)


def _image_shape(input_shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    if len(input_shape) != 3:
        raise ConfigError(
            f"model.kind: {kind} needs image data (height, width, channels), but the data has shape {input_shape}; "
            "use model.kind: mlp or image data (digits, synthetic_images)"
        )
    return input_shape


def _mlp(cfg: MLPConfig, input_shape, num_classes: int, keras: ModuleType):
    layers = keras.layers
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = layers.Flatten(name="flatten")(inputs)
    for i, units in enumerate(cfg.hidden):
        x = layers.Dense(units, activation=cfg.activation, name=f"hidden_{i}")(x)
        if cfg.dropout:
            x = layers.Dropout(cfg.dropout, name=f"dropout_{i}")(x)
    outputs = _logits(keras, num_classes, x)
    return keras.Model(inputs, outputs, name="mlp")


def _cnn(cfg: CNNConfig, input_shape, num_classes: int, keras: ModuleType):
    layers = keras.layers
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = inputs
    for i, filters in enumerate(cfg.filters):
        x = layers.Conv2D(filters, cfg.kernel_size, padding="same", activation="relu", name=f"conv_{i}")(x)
        if x.shape[1] >= 2 and x.shape[2] >= 2:
            x = layers.MaxPooling2D(name=f"pool_{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(cfg.dense, activation="relu", name="dense")(x)
    outputs = _logits(keras, num_classes, x)
    return keras.Model(inputs, outputs, name="cnn")


def _inception(cfg: InceptionConfig, input_shape, num_classes: int, keras: ModuleType):
    layers = keras.layers
    f = cfg.branch_filters
    inputs = keras.Input(shape=input_shape, name="inputs")
    x = layers.Conv2D(cfg.stem_filters, 3, padding="same", activation="relu", name="stem")(inputs)
    for b in range(cfg.blocks):
        conv = lambda filters, k, name, t: layers.Conv2D(  # noqa: E731
            filters, k, padding="same", activation="relu", name=f"block{b}_{name}"
        )(t)
        # Four independent branches between two synchronization points (input and concat).
        b1 = conv(f, 1, "b1_1x1", x)
        b2 = conv(f, 3, "b2_3x3", conv(f // 2 or 1, 1, "b2_reduce", x))
        b3 = conv(f, 5, "b3_5x5", conv(f // 2 or 1, 1, "b3_reduce", x))
        pooled = layers.MaxPooling2D(3, strides=1, padding="same", name=f"block{b}_b4_pool")(x)
        b4 = conv(f, 1, "b4_1x1", pooled)
        x = layers.Concatenate(name=f"block{b}_concat")([b1, b2, b3, b4])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = _logits(keras, num_classes, x)
    return keras.Model(inputs, outputs, name="inception")


def _user(cfg: UserModelConfig, input_shape, num_classes: int, keras: ModuleType):
    fn = import_callable(cfg.fn, "model.fn")
    model = fn(input_shape=input_shape, num_classes=num_classes, keras=keras, **cfg.args)
    if not isinstance(model, keras.Model):
        raise ConfigError(f"model.fn: {cfg.fn} must return a {keras.__name__}.Model; got {type(model).__name__}")
    return model
