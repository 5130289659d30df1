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

    train: tf.data.Dataset | tf.distribute.DistributedDataset
    validation: tf.data.Dataset | tf.distribute.DistributedDataset
    input_shape: tuple[int, ...]
    num_classes: int
    train_examples: int
    steps_per_epoch: int
    validation_steps: int
    """Batches of the largest replica's validation share (tf_keras needs it for distributed datasets)."""


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


def build_dataset(cfg: Config, splits: Splits | None = None, strategy: tf.distribute.Strategy | None = None,
                  skip_steps: int = 0) -> Datasets:
    """Batched train and validation pipelines for `cfg.data`, with the global batch of `cfg.train`.

    With a multi-replica MirroredStrategy, each replica gets its own pipeline (see
    `_per_replica`); with MultiWorkerMirroredStrategy each worker its share (`_per_worker`);
    otherwise plain tf.data.Datasets batched by the global batch. `skip_steps`: training
    steps already done (a resumed run), so that step k sees the batch it would have seen.
    """
    train_cfg = cfg.train
    splits = splits or load_splits(cfg.data, train_cfg.seed)
    batch = train_cfg.global_batch_size
    examples = len(splits.x_train)
    if examples < batch:
        raise ConfigError(
            f"train.global_batch_size is larger than the {examples} training examples. "
            f"Received: train.global_batch_size={batch}"
        )
    steps = examples // batch
    train = _pipeline(splits.x_train, splits.y_train, batch, steps, train_cfg.seed)
    validation = _pipeline(splits.x_val, splits.y_val, batch)
    replicas = 1
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        train, validation = _per_worker(strategy, train, skip_steps), _per_worker(strategy, validation)
        replicas = strategy.num_replicas_in_sync
    elif isinstance(strategy, tf.distribute.MirroredStrategy) and strategy.num_replicas_in_sync > 1:
        train, validation = _per_replica(strategy, train), _per_replica(strategy, validation)
        replicas = strategy.num_replicas_in_sync
    else:
        train, validation = train(None), validation(None)
    largest_share = -(-len(splits.x_val) // replicas)
    return Datasets(
        train=train,
        validation=validation,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        train_examples=examples,
        steps_per_epoch=train_cfg.steps_per_epoch or steps,
        validation_steps=-(-largest_share // (batch // replicas)),
    )


def _pipeline(x, y, global_batch: int, steps: int | None = None, seed: int | None = None):
    """`fn(input_context) -> tf.data.Dataset`: one pipeline, or one replica's share when given a context.

    Training (`steps` given): shuffled (seeded, anew each pass), cut to `steps` whole global
    batches so every replica gets equal batches, and repeated: one pass is one epoch, and
    model.fit keeps one iterator for the whole run. A replica's share is every N-th example
    of each global batch, so N replicas see exactly the examples one device sees per step.
    """

    def fn(ctx: tf.distribute.InputContext | None) -> tf.data.Dataset:
        ds = tf.data.Dataset.from_tensor_slices((x, y))
        if steps is not None:
            ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True).take(steps * global_batch)
        batch = global_batch
        if ctx is not None:
            ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
            batch = ctx.get_per_replica_batch_size(global_batch)
        ds = ds.batch(batch, drop_remainder=steps is not None)
        if steps is not None:
            ds = ds.repeat()
        # In-memory arrays need no tuning. tf.data's autotuning thread can miss its
        # cancellation and hold an iterator's destructor for up to its optimization
        # period (grows to 60 s): Keras drops iterators at every epoch and at the end of
        # fit, and a multi-device iterator has one such thread per device, which made
        # fit over 4 logical CPUs stall 1 to 60 s at epoch boundaries and on return.
        options = tf.data.Options()
        options.autotune.enabled = False
        return ds.prefetch(2).with_options(options)

    return fn


def _per_replica(strategy: tf.distribute.Strategy, fn):
    """One pipeline per replica, fed on the host: no MultiDeviceIterator, whose per-device
    pipelines get fresh options (autotuning on) that no user option can turn off."""
    options = tf.distribute.InputOptions(
        experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA,
        experimental_fetch_to_device=False,
    )
    return strategy.distribute_datasets_from_function(fn, options)


def _per_worker(strategy: tf.distribute.Strategy, fn, skip_steps: int = 0):
    """Each worker builds its own pipeline and keeps every N-th example (N = workers) of each
    global batch: an explicit shard by worker, as AutoShardPolicy.DATA would do, without
    reading (and dropping) the other workers' examples through the whole pipeline. With
    in-memory arrays there are no files for the FILE policy to split, so AUTO would fall back
    to DATA anyway. Each worker's replicas take its per-replica batches in turn, so the
    replicas of all workers together see, every step, the global batch one device sees."""

    def per_worker(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        ds = fn(ctx)
        local_replicas = ctx.num_replicas_in_sync // ctx.num_input_pipelines
        return ds.skip(skip_steps * local_replicas) if skip_steps else ds

    options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
    return strategy.distribute_datasets_from_function(per_worker, options)


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
