"""tf.data pipelines from the `data` config section: real digits, synthetic data, or a user's loader.

Every loader returns numpy splits; one function turns them into batched tf.data
pipelines, so every strategy sees the same input pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from paradl_tf.config import Config, DigitsConfig, SyntheticImagesConfig, SyntheticTabularConfig, UserDataConfig
from paradl_tf.errors import ConfigError
from paradl_tf.imports import import_callable


@dataclass(frozen=True)
class Splits:
    """Training and validation examples as arrays: features float32, labels int32 class ids."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


@dataclass(frozen=True)
class Datasets:
    """What model.fit consumes: batched pipelines (batches are global) and the shapes the model needs."""

    train: tf.data.Dataset
    validation: tf.data.Dataset
    input_shape: tuple[int, ...]
    num_classes: int
    train_examples: int
    steps_per_epoch: int


def load_splits(data_cfg, seed: int) -> Splits:
    """The numpy splits the `data` section describes."""
    if data_cfg.kind == "digits":
        return _digits(data_cfg, seed)
    if data_cfg.kind == "synthetic_images":
        return _synthetic(data_cfg.image_shape, data_cfg, seed)
    if data_cfg.kind == "synthetic_tabular":
        return _synthetic([data_cfg.features], data_cfg, seed)
    if data_cfg.kind == "user":
        return _user(data_cfg, seed)
    raise ConfigError(f"data.kind: unknown data kind {data_cfg.kind!r}; choose one of: digits, synthetic_images, synthetic_tabular, user")


def build_dataset(cfg: Config, splits: Splits | None = None) -> Datasets:
    """Batched train and validation pipelines for `cfg.data`, with the global batch of `cfg.train`."""
    train_cfg = cfg.train
    splits = splits or load_splits(cfg.data, train_cfg.seed)
    batch = train_cfg.global_batch_size
    examples = len(splits.x_train)
    if examples < batch:
        raise ConfigError(
            f"train.global_batch_size is larger than the {examples} training examples. "
            f"Received: train.global_batch_size={batch}"
        )
    train = tf.data.Dataset.from_tensor_slices((splits.x_train, splits.y_train))
    train = train.shuffle(examples, seed=train_cfg.seed, reshuffle_each_iteration=True)
    # Equal batches on every step keep per-replica batches equal and step times comparable.
    train = train.batch(batch, drop_remainder=True)
    if train_cfg.steps_per_epoch is not None:
        train = train.repeat()
    validation = tf.data.Dataset.from_tensor_slices((splits.x_val, splits.y_val)).batch(batch)
    return Datasets(
        train=train.prefetch(tf.data.AUTOTUNE),
        validation=validation.cache().prefetch(tf.data.AUTOTUNE),
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        train_examples=examples,
        steps_per_epoch=train_cfg.steps_per_epoch or examples // batch,
    )


def _digits(cfg: DigitsConfig, seed: int) -> Splits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype("float32").reshape(-1, 8, 8, 1)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y.astype("int32"), test_size=cfg.validation_split, random_state=seed, stratify=y
    )
    return Splits(x_train, y_train, x_val, y_val, num_classes=10)


def _synthetic(shape: list[int], cfg: SyntheticImagesConfig | SyntheticTabularConfig, seed: int) -> Splits:
    """Class prototypes plus noise: learnable, deterministic from the seed, any shape and class count."""
    rng = np.random.default_rng(seed)
    prototypes = rng.normal(size=(cfg.num_classes, *shape)).astype("float32")
    total = cfg.train_examples + cfg.validation_examples
    y = rng.integers(0, cfg.num_classes, size=total).astype("int32")
    x = prototypes[y] + rng.normal(scale=2.0, size=(total, *shape)).astype("float32")
    n = cfg.train_examples
    return Splits(x[:n], y[:n], x[n:], y[n:], num_classes=cfg.num_classes)


def _user(cfg: UserDataConfig, seed: int) -> Splits:
    fn = import_callable(cfg.fn, "data.fn")
    out = fn(seed=seed, **cfg.args)
    try:
        (x_train, y_train), (x_val, y_val) = out
    except (TypeError, ValueError):
        raise ConfigError(
            f"data.fn: {cfg.fn} must return ((x_train, y_train), (x_val, y_val)); got {type(out).__name__}"
        ) from None
    x_train, x_val = np.asarray(x_train, "float32"), np.asarray(x_val, "float32")
    y_train, y_val = np.asarray(y_train, "int32"), np.asarray(y_val, "int32")
    if len(x_train) != len(y_train) or len(x_val) != len(y_val):
        raise ConfigError(f"data.fn: {cfg.fn} returned features and labels of different lengths")
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    return Splits(x_train, y_train, x_val, y_val, num_classes=num_classes)
