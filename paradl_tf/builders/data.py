"""tf.data pipelines from the `data` config section: in-memory sources (real digits, synthetic data, a user's
arrays) and sources streamed from files or a user's pipeline (paradl_tf.files).

In-memory loaders return numpy splits; file kinds resolve to a FileSource. `build_dataset` turns either into the
batched pipelines model.fit takes, split between the strategy's input pipelines the same way for every strategy.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from paradl_tf.config import Config, DigitsConfig, SyntheticImagesConfig, SyntheticTabularConfig, UserDataConfig
from paradl_tf.errors import ConfigError
from paradl_tf.builders.imports import import_callable
from paradl_tf.files.service import service_address, service_mode, sync_train_pipeline
from paradl_tf.files.sources import FileSource, UserDatasetSource, load_file_source, load_user_dataset, warn


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
    """What model.fit consumes: batched pipelines (batches are global) and the shapes the model needs.

    `model.fit(data.train, validation_data=data.validation, epochs=E)` trains E epochs of `steps_per_epoch`
    steps: `train` ends after one pass, and each new iterator draws a new pass. `model.fit(**data.fit_kwargs(
    keras_name), epochs=E)` trains on `train_stream` instead, which never ends: one iterator for the whole run
    (what `paradl_tf.train` does; it is faster under MirroredStrategy, and pass k's order depends on the seed
    and k alone, so a resumed run sees what an uninterrupted one saw).
    """

    validation: tf.data.Dataset | tf.distribute.DistributedDataset
    input_shape: tuple[int, ...]
    num_classes: int
    train_examples: int
    steps_per_epoch: int
    validation_steps: int
    """Batches of the largest replica's validation share (tf_keras needs it for distributed datasets)."""
    make_train: Callable[[bool], Any] = field(repr=False, compare=False)
    """`make_train(endless)`: the training pipeline, built on first use."""
    input: dict = field(default_factory=dict)
    """Where the examples come from and how the input pipelines split them (results.json's `input`)."""

    @cached_property
    def train(self) -> tf.data.Dataset | tf.distribute.DistributedDataset:
        """One epoch: `steps_per_epoch` global batches, a new seeded pass for each new iterator."""
        return self.make_train(False)

    @cached_property
    def train_stream(self) -> tf.data.Dataset | tf.distribute.DistributedDataset:
        """Every epoch's batches, one after the other without end: give fit `steps_per_epoch` (fit_kwargs does)."""
        return self.make_train(True)

    def fit_kwargs(self, keras_name: str) -> dict[str, Any]:
        """model.fit's data arguments for one iterator over the whole run: `model.fit(**kwargs, epochs=E)`."""
        return {
            "x": self.train_stream,
            "validation_data": self.validation,
            "steps_per_epoch": self.steps_per_epoch,
            # tf_keras needs the count for a distributed dataset; Keras 3 counts, and would keep
            # one exhausted validation iterator across epochs if given it.
            "validation_steps": self.validation_steps if keras_name == "tf_keras" else None,
            "shuffle": False,  # the pipeline shuffles, seeded
        }


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
    raise ConfigError(f"data.kind: {data_cfg.kind!r} is not an in-memory source (digits, synthetic_images, "
                      f"synthetic_tabular, user): its examples are streamed, not loaded whole")


Source = Splits | FileSource | UserDatasetSource


def load_source(data_cfg, seed: int) -> Source:
    """The `data` section resolved: numpy splits for in-memory kinds, a FileSource for files (matched, counted and
    checked, not read), a UserDatasetSource for a user's pipeline."""
    if data_cfg.kind in ("tfrecord", "image_folder", "csv"):
        return load_file_source(data_cfg)
    if data_cfg.kind == "user_dataset":
        return load_user_dataset(data_cfg, seed)
    return load_splits(data_cfg, seed)


def input_pipelines(strategy: tf.distribute.Strategy | None) -> tuple[int, int]:
    """(input pipelines, replicas each feeds per step) for a strategy: one per replica under Mirrored, one per
    worker under MultiWorkerMirrored (feeding that worker's local replicas), one otherwise."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        local = len(strategy.extended.worker_devices)
        return strategy.num_replicas_in_sync // local, local
    if isinstance(strategy, tf.distribute.MirroredStrategy) and strategy.num_replicas_in_sync > 1:
        return strategy.num_replicas_in_sync, 1
    return 1, 1


def source_steps_per_epoch(cfg: Config, source: Source, strategy: tf.distribute.Strategy | None) -> int:
    """Training steps in one epoch: train.steps_per_epoch, or one pass in whole steps (files: the steps the
    smallest input pipeline's share fills)."""
    if isinstance(source, Splits):
        return steps_per_epoch(cfg.train, len(source.x_train))
    if isinstance(source, UserDatasetSource):
        return cfg.train.steps_per_epoch
    pipelines, fed = input_pipelines(strategy)
    plan = source.plan(pipelines, cfg.train.global_batch_size // (pipelines * fed), fed)
    return cfg.train.steps_per_epoch or plan.batches_per_pass // fed


def build_dataset(cfg: Config, splits: Source | None = None, strategy: tf.distribute.Strategy | None = None,
                  skip_steps: int = 0) -> Datasets:
    """Batched train and validation pipelines for `cfg.data`, with the global batch of `cfg.train`.

    With a multi-replica MirroredStrategy, each replica gets its own pipeline (see
    `_per_replica`); with MultiWorkerMirroredStrategy each worker its share (`_per_worker`);
    otherwise plain tf.data.Datasets batched by the global batch. `skip_steps`: training
    steps already done (a resumed run), so that step k sees the batch it would have seen.
    """
    train_cfg = cfg.train
    splits = splits or load_source(cfg.data, train_cfg.seed)
    if isinstance(splits, FileSource):
        return _file_datasets(cfg, splits, strategy, skip_steps)
    if isinstance(splits, UserDatasetSource):
        return _user_datasets(cfg, splits, strategy)
    batch = train_cfg.global_batch_size
    examples = len(splits.x_train)
    if examples < batch:
        raise ConfigError(
            f"train.global_batch_size is larger than the {examples} training examples. "
            f"Received: train.global_batch_size={batch}"
        )
    steps = examples // batch  # whole global batches in one pass over the training examples
    distribute = _distribution(strategy)
    validation = distribute(_pipeline(splits.x_val, splits.y_val, batch))

    epoch_steps = steps_per_epoch(train_cfg, examples)

    def make_train(endless: bool):
        if not endless:  # one epoch per iterator; resuming is the stream's business
            return distribute(_pipeline(splits.x_train, splits.y_train, batch, steps, train_cfg.seed, epoch_steps))
        train = _pipeline(splits.x_train, splits.y_train, batch, steps, train_cfg.seed)
        return distribute(_skipping(train, skip_steps) if skip_steps else train)

    replicas = strategy.num_replicas_in_sync if distribute is not _unchanged else 1
    largest_share = -(-len(splits.x_val) // replicas)
    return Datasets(
        validation=validation,
        input_shape=splits.input_shape,
        num_classes=splits.num_classes,
        train_examples=examples,
        steps_per_epoch=epoch_steps,
        validation_steps=-(-largest_share // (batch // replicas)),
        make_train=make_train,
        input={"source": cfg.data.kind, "files": 0, "shard_policy": "data (in memory: each pipeline keeps every "
               "N-th example of each global batch)", "service": None, "examples_per_epoch": epoch_steps * batch},
    )


def _file_datasets(cfg: Config, source: FileSource, strategy, skip_steps: int) -> Datasets:
    """Datasets streamed from files: each input pipeline reads its share (see paradl_tf.files.sources)."""
    train_cfg = cfg.train
    batch, seed = train_cfg.global_batch_size, train_cfg.seed
    pipelines, fed = input_pipelines(strategy)
    per_replica = batch // (pipelines * fed)
    plan = source.plan(pipelines, per_replica, fed)
    warn(plan)
    epoch_steps = train_cfg.steps_per_epoch or plan.batches_per_pass // fed
    distribute = _distribution(strategy)

    def index(ctx):
        return (ctx.num_input_pipelines, ctx.input_pipeline_id) if ctx is not None else (1, 0)

    def validation(ctx):
        n, i = index(ctx)
        return _tuned(source.validation_pipeline(n, i, per_replica if ctx is not None else batch))

    def make_train(endless: bool):
        address = service_address(cfg)  # the tf.data service's dispatcher (checked), or None: in-process

        def fn(ctx):
            _, i = index(ctx)
            b = per_replica if ctx is not None else batch
            if address is not None:  # validation stays in-process: it is small and read once, in order
                epoch = None if endless else epoch_steps * fed
                ds = sync_train_pipeline(source, plan, i, b, seed, address, skip_steps * fed, epoch)
                return _tuned(infinite(ds) if endless else ds)
            if endless:
                return _tuned(infinite(source.train_pipeline(plan, i, b, seed, start_batch=skip_steps * fed)))
            return _tuned(source.train_pipeline(plan, i, b, seed, epoch_batches=epoch_steps * fed))
        return distribute(fn)

    return Datasets(
        validation=distribute(validation),
        input_shape=source.input_shape,
        num_classes=source.num_classes,
        train_examples=source.train_examples,
        steps_per_epoch=epoch_steps,
        validation_steps=-(-source.validation_share(pipelines * fed) // per_replica),
        make_train=make_train,
        input=file_input(cfg, source, plan, epoch_steps),
    )


def for_pipelines(cfg: Config, datasets: Datasets, source: Source, pipelines: int, batch: int, fed: int = 1,
                  warn_now: bool = False) -> Datasets:
    """`datasets` with an `input` that describes `pipelines` input pipelines, each giving `fed` batches of `batch`
    per step: for cluster runs whose pipelines are built elsewhere (each MultiWorkerMirrored worker; each
    parameter-server worker). In-memory sources are returned as they are."""
    if not isinstance(source, FileSource):
        return datasets
    plan = source.plan(pipelines, batch, fed)
    if warn_now:
        warn(plan)
    steps = cfg.train.steps_per_epoch or plan.batches_per_pass // fed
    return dataclasses.replace(datasets, input=file_input(cfg, source, plan, steps))


def file_input(cfg: Config, source: FileSource, plan, epoch_steps: int) -> dict:
    """results.json's and plan's `input`: the source, its files, how the pipelines split them."""
    service = cfg.data.service
    return {"source": source.kind, "files": len(source.train.files), "validation_files": len(source.validation.files),
            "train_examples": source.train_examples, "validation_examples": source.validation.examples,
            "shard_policy": plan.policy, "service": None if service is None else service.kind,
            **({"service_mode": service_mode(cfg.strategy.kind)} if service is not None else {}),
            "examples_per_epoch": epoch_steps * cfg.train.global_batch_size, "pipelines": plan.describe()}


def _user_datasets(cfg: Config, source: UserDatasetSource, strategy) -> Datasets:
    """A user's pipeline: the toolkit shuffles (seeded), repeats and batches what each context's call returns."""
    train_cfg = cfg.train
    batch, seed = train_cfg.global_batch_size, train_cfg.seed
    pipelines, fed = input_pipelines(strategy)
    per_replica = batch // (pipelines * fed)

    def make_train(endless: bool):
        def fn(ctx):
            b = per_replica if ctx is not None else batch
            ds = source.dataset(ctx, seed, "train").shuffle(cfg.data.shuffle_buffer, seed=seed).repeat()
            ds = source.checked(ds.batch(b, drop_remainder=True), "train")
            return _tuned(ds if endless else ds.take(train_cfg.steps_per_epoch * fed))
        return distribute(fn)

    def validation(ctx):
        ds = source.dataset(ctx, seed, "validation").batch(per_replica if ctx is not None else batch)
        return _tuned(source.checked(ds, "validation"))

    distribute = _distribution(strategy)
    return Datasets(
        validation=distribute(validation),
        input_shape=source.input_shape,
        num_classes=source.num_classes,
        train_examples=train_cfg.steps_per_epoch * batch,
        steps_per_epoch=train_cfg.steps_per_epoch,
        validation_steps=None,
        make_train=make_train,
        input={"source": "user_dataset", "files": None, "shard_policy": "the user's function (input_context)",
               "service": None, "examples_per_epoch": train_cfg.steps_per_epoch * batch},
    )


def _tuned(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Prefetched, autotuning off (see _pipeline: it stalls iterator destructors; parallelism is fixed instead)."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(4).with_options(options)


def _distribution(strategy: tf.distribute.Strategy | None) -> Callable:
    """How a pipeline function becomes what fit takes: per worker, per replica, or one plain dataset."""
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return lambda fn: _per_worker(strategy, fn)
    if isinstance(strategy, tf.distribute.MirroredStrategy) and strategy.num_replicas_in_sync > 1:
        return lambda fn: _per_replica(strategy, fn)
    return _unchanged


def _unchanged(fn):
    return fn(None)


def steps_per_epoch(train_cfg, train_examples: int) -> int:
    """Training steps in one epoch: train.steps_per_epoch, or one pass over the examples in whole global batches."""
    return train_cfg.steps_per_epoch or train_examples // train_cfg.global_batch_size


def _pipeline(x, y, global_batch: int, steps: int | None = None, seed: int = 0, epoch_steps: int | None = None):
    """`fn(input_context) -> tf.data.Dataset`: one pipeline, or one replica's share when given a context.

    Training (`steps` given): pass k is a permutation of the examples drawn from (seed, k) alone,
    cut to `steps` whole global batches so every replica gets equal batches, and passes follow
    each other without end: one pass is one epoch, and model.fit keeps one iterator for the
    whole run. The stream's order does not depend on how many iterators were made before (a seeded
    `shuffle(reshuffle_each_iteration=True)` draws each pass's seed from a generator that every
    iterator advances, and Keras 3's fit makes one to peek at a batch), so a resumed run that
    skips the steps done sees what the uninterrupted run saw. With `epoch_steps`: one epoch per
    iterator, its passes' keys drawn from the seed anew by each iterator, so fit without
    steps_per_epoch trains new passes each epoch. A replica's share is every N-th
    example of each global batch, so N replicas see exactly the examples one device sees per step.
    Validation: every example once, in order.
    """

    def fn(ctx: tf.distribute.InputContext | None) -> tf.data.Dataset:
        batch = global_batch if ctx is None else ctx.get_per_replica_batch_size(global_batch)
        if steps is None:
            ds = tf.data.Dataset.from_tensor_slices((x, y))
            if ctx is not None:
                ds = ds.shard(ctx.num_input_pipelines, ctx.input_pipeline_id)
            ds = ds.batch(batch)
        else:
            share = (ctx.num_input_pipelines, ctx.input_pipeline_id) if ctx is not None else (1, 0)
            ds = shuffled_batches(x, y, steps, global_batch, seed, share, batch, epoch_steps)
        # In-memory arrays need no tuning. tf.data's autotuning thread can miss its
        # cancellation and hold an iterator's destructor for up to its optimization
        # period (grows to 60 s): Keras drops iterators at every epoch and at the end of
        # fit, and a multi-device iterator has one such thread per device, which made
        # fit over 4 logical CPUs stall 1 to 60 s at epoch boundaries and on return.
        options = tf.data.Options()
        options.autotune.enabled = False
        return ds.prefetch(2).with_options(options)

    return fn


def shuffled_batches(x, y, steps: int, global_batch: int, seed, share: tuple[int, int] = (1, 0),
                     batch: int | None = None, epoch_steps: int | None = None) -> tf.data.Dataset:
    """Batches of (features, labels) without end: pass k is the first `steps` global batches of a permutation
    drawn from (seed, k) alone. `share` = (N, i): keep every N-th example of each global batch from the i-th,
    in batches of `batch`. With `epoch_steps`: the batches of that many steps and then the end, the passes'
    keys drawn anew by each iterator. Each pass is one gather and then slices: no per-example or per-batch function
    in tf.data, which on a small model costs as much as a step."""
    features, labels = tf.constant(x), tf.constant(y)
    n, i = share
    batch = batch or global_batch

    def one_pass(k):
        keys = tf.random.stateless_uniform([len(x)], seed=tf.stack([tf.cast(seed, tf.int64), k]))
        order = tf.reshape(tf.argsort(keys)[:steps * global_batch], [steps, global_batch])
        mine = tf.reshape(order[:, i::n], [-1, batch])
        return tf.data.Dataset.from_tensor_slices((tf.gather(features, mine), tf.gather(labels, mine)))

    if epoch_steps is None:
        return infinite(tf.data.Dataset.counter().flat_map(one_pass))
    # Every replica's pipeline draws the same keys for its k-th iterator (same seed), so the replicas still
    # share each permutation; the known cardinality gives fit its step count.
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(-(-epoch_steps // steps))
    batches = epoch_steps * (global_batch // n) // batch
    return keys.flat_map(one_pass).take(batches).apply(tf.data.experimental.assert_cardinality(batches))


def infinite(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds`, declared without end. A flat_map's cardinality is unknown, and under MultiWorkerMirroredStrategy a
    distributed dataset of unknown cardinality is read with get_next_as_optional: every step then all-reduces
    across the workers whether each still has data (tensorflow/python/distribute/input_lib.py,
    _enable_get_next_as_optional), a collective more per step. An infinite one is read with plain get_next."""
    return ds.apply(tf.data.experimental.assert_cardinality(tf.data.INFINITE_CARDINALITY))


def _skipping(fn, steps: int):
    """The pipeline `fn` makes, less the batches of its first `steps` steps: a resumed run goes on where the
    last stopped (pass k's order depends on the seed and k alone). A pipeline gives one batch per step per
    replica it feeds: one for the whole batch or a replica's share, a worker's local replicas' for a worker."""

    def skipped(ctx: tf.distribute.InputContext | None) -> tf.data.Dataset:
        replicas_fed = ctx.num_replicas_in_sync // ctx.num_input_pipelines if ctx is not None else 1
        return fn(ctx).skip(steps * replicas_fed)

    return skipped


def _per_replica(strategy: tf.distribute.Strategy, fn):
    """One pipeline per replica, fed on the host: no MultiDeviceIterator, whose per-device
    pipelines get fresh options (autotuning on) that no user option can turn off."""
    options = tf.distribute.InputOptions(
        experimental_replication_mode=tf.distribute.InputReplicationMode.PER_REPLICA,
        experimental_fetch_to_device=False,
    )
    return strategy.distribute_datasets_from_function(fn, options)


def _per_worker(strategy: tf.distribute.Strategy, fn):
    """Each worker builds its own pipeline and keeps every N-th example (N = workers) of each
    global batch: an explicit shard by worker, as AutoShardPolicy.DATA would do, without
    reading (and dropping) the other workers' examples through the whole pipeline. With
    in-memory arrays there are no files for the FILE policy to split, so AUTO would fall back
    to DATA anyway. Each worker's replicas take its per-replica batches in turn, so the
    replicas of all workers together see, every step, the global batch one device sees."""

    options = tf.distribute.InputOptions(experimental_fetch_to_device=False)
    return strategy.distribute_datasets_from_function(fn, options)


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
    x_train, y_train = _user_arrays(cfg.fn, "training", x_train, y_train)
    x_val, y_val = _user_arrays(cfg.fn, "validation", x_val, y_val)
    if x_train.shape[1:] != x_val.shape[1:]:
        raise ConfigError(f"data.fn: {cfg.fn} returned training features of shape {list(x_train.shape[1:])} and "
                          f"validation features of shape {list(x_val.shape[1:])}; both splits need one shape")
    num_classes = int(max(y_train.max(), y_val.max())) + 1
    return Splits(x_train, y_train, x_val, y_val, num_classes=num_classes)


def _user_arrays(fn: str, split: str, x, y) -> tuple[np.ndarray, np.ndarray]:
    """A user's split as float32 features and int32 class ids, checked: what the pipeline cannot use is one line."""
    try:
        x, y = np.asarray(x, "float32"), np.asarray(y)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"data.fn: {fn}'s {split} features are not an array of numbers ({exc})") from None
    where = f"data.fn: {fn}'s {split}"
    if len(x) != len(y) or len(x) == 0:
        raise ConfigError(f"{where} split has {len(x)} feature rows and {len(y)} labels; it needs as many of "
                          "each, and at least one")
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or np.array_equal(y, np.round(y))):
        raise ConfigError(f"{where} labels must be one integer class id per example; got {y.dtype} of shape "
                          f"{list(y.shape)}")
    if y.min() < 0:
        raise ConfigError(f"{where} label {int(y.min())} (example {int(np.argmin(y))}) is negative; class ids "
                          "are 0, 1, ...")
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if len(bad):
        raise ConfigError(f"{where} example {int(bad[0])} has a feature that is not finite; features must be finite")
    return x, y.astype("int32")
