"""Data streamed from files: the `data` section's file kinds (tfrecord, image_folder, csv) and a user's tf.data
pipeline (user_dataset) made into input pipelines, sharded between the run's input pipelines.

An input pipeline is what tf.distribute asks a dataset function for: one per replica under MirroredStrategy, one
per worker under MultiWorkerMirroredStrategy and parameter servers, one in a single-device run. Training reads, per
pass over the data: the pipeline's files in a seeded order, `cycle_length` of them at once, interleaved; a seeded
shuffle of `shuffle_buffer` examples; whole batches, parsed in one vectorized call each; prefetched. Pass k's order
depends on the seed and k alone, so a resumed run skips what the interrupted one trained and sees the same batches.
Nothing is loaded whole: memory is the shuffle buffer and the prefetched batches, whatever the data's size.
"""

from __future__ import annotations

import posixpath
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from paradl_tf.builders.imports import import_callable
from paradl_tf.cluster.processes import usable_cpus
from paradl_tf.errors import ConfigError
from paradl_tf.files import formats
from paradl_tf.files.checks import file_problem
from paradl_tf.files.formats import FileSplit, Format

PARALLEL = usable_cpus()
"""Parallel reads and parses: tf.data's autotuning is off (see paradl_tf.builders.data._pipeline), so a fixed count."""
_ENDLESS = 2**62  # passes of an endless stream


@dataclass(frozen=True)
class ShardPlan:
    """How `pipelines` input pipelines split one split's files: the policy, each pipeline's files and examples,
    and the whole batches each takes per pass (the same for all, so synchronous workers take equal steps)."""

    policy: str
    pipelines: int
    files: tuple[tuple[str, ...], ...]
    examples: tuple[int, ...]
    batches_per_pass: int
    warning: str | None = None

    def describe(self, listed: int = 4) -> dict[str, Any]:
        """For plan and results.json: each pipeline's file count, examples and first `listed` files."""
        return {"policy": self.policy, "pipelines": self.pipelines, "batches_per_pass": self.batches_per_pass,
                "per_pipeline": [{"files": len(f), "examples": n, "first_files": list(f[:listed])}
                                 for f, n in zip(self.files, self.examples)],
                **({"warning": self.warning} if self.warning else {})}


def shard_plan(split: FileSplit, pipelines: int, policy: str, batch: int, fed: int, key: str) -> ShardPlan:
    """Split `split` between `pipelines` pipelines that each give `fed` batches of `batch` per training step.

    file: pipeline i reads files i, i+N, ...; data: every pipeline reads every file and keeps every N-th example;
    auto: file where there are at least as many files as pipelines (data otherwise, with a warning that names the
    cost). Each pass is cut to the steps the smallest share fills, so no pipeline runs out before another."""
    n_files = len(split.files)
    warning = None
    if policy == "file" and n_files < pipelines:
        raise ConfigError(f"data.shard_policy: file needs at least as many files as input pipelines, but {key} has "
                          f"{n_files} file(s) for {pipelines} pipelines; write more shards or use auto or data")
    if policy == "auto":
        policy = "file" if n_files >= pipelines else "data"
        if policy == "data" and pipelines > 1:
            warning = (f"{key}: {n_files} file(s) for {pipelines} input pipelines: sharding by example (data), so "
                       f"every pipeline reads every file and keeps 1/{pipelines} of it; write at least {pipelines} "
                       f"shards to read each file once")
    if policy == "file":
        files = tuple(split.files[i::pipelines] for i in range(pipelines))
        examples = tuple(sum(split.counts[i::pipelines]) for i in range(pipelines))
    else:
        total = split.examples
        files = (split.files,) * pipelines
        examples = tuple(len(range(i, total, pipelines)) for i in range(pipelines))
    steps = min(examples) // (batch * fed)
    if steps == 0:
        raise ConfigError(f"{key}: input pipeline {int(np.argmin(examples))} gets {min(examples)} training examples, "
                          f"fewer than one step's {batch * fed} (train.global_batch_size over the replicas it feeds)")
    return ShardPlan(policy, pipelines, files, examples, steps * fed, warning)


# ================================================================ the source
@dataclass(frozen=True)
class FileSource:
    """A file kind of the `data` section, resolved: its format and its training and validation files."""

    cfg: Any
    format: Format
    train: FileSplit
    validation: FileSplit
    counted_by_metadata: frozenset[str] = frozenset()
    """The files whose record counts metadata.json gave (the others were counted by reading them)."""

    @property
    def kind(self) -> str:
        return self.cfg.kind

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.format.input_shape

    @property
    def num_classes(self) -> int:
        return self.format.num_classes

    @property
    def train_examples(self) -> int:
        return self.train.examples

    def plan(self, pipelines: int, batch: int, fed: int) -> ShardPlan:
        return shard_plan(self.train, pipelines, self.cfg.shard_policy, batch, fed, self.format.key)

    def train_pipeline(self, plan: ShardPlan, index, batch: int, seed: int, start_batch: int = 0,
                       epoch_batches: int | None = None, with_ids: bool = False) -> tf.data.Dataset:
        """Pipeline `index`'s training batches: endless from batch `start_batch`, or with `epoch_batches`, one
        epoch per iterator (its passes keyed anew from the seed by each iterator). `index` may be a tensor
        (a parameter-server worker learns its index only when the dataset function runs on it)."""
        fmt, cfg = self.format, self.cfg
        table = tuple(tf.constant(column) for column in fmt.file_table(self.train))
        if plan.policy == "file":  # pipeline i reads files i, i+N, ... (what shard_plan counted)
            mine = tf.range(tf.cast(index, tf.int32), len(self.train.files), plan.pipelines)
            table = tuple(tf.gather(column, mine) for column in table)
        per_pass = plan.batches_per_pass
        shuffle_buffer = cfg.shuffle_buffer

        def one_pass(k):
            key = tf.random.experimental.stateless_fold_in(tf.constant([seed, 0], tf.int64), k)
            order = tf.argsort(tf.random.stateless_uniform(tf.shape(table[0])[:1], seed=key))
            records = fmt.records(tuple(tf.gather(c, order) for c in table),
                                  min(cfg.cycle_length, len(self.train.files)), PARALLEL)
            if plan.policy == "data" and plan.pipelines > 1:
                records = records.shard(plan.pipelines, tf.cast(index, tf.int64))
            if not fmt.one_example_per_file:  # image folders were shuffled whole, file by file
                records = _block_shuffle(records, shuffle_buffer, key)
            batches = fmt.batches(records, batch, PARALLEL, drop_remainder=True).take(per_pass)
            return batches if with_ids else batches.map(lambda x, y, ids: (x, y))

        if epoch_batches is None:
            # A range, not Dataset.counter: the tf.data service's dynamic sharding splits a range by element,
            # whereas counter (a scan over a repeat) is counted again from the start on every data worker.
            passes = tf.data.Dataset.range(start_batch // per_pass, _ENDLESS).flat_map(one_pass)
            return passes.skip(start_batch % per_pass)
        keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).take(-(-epoch_batches // per_pass))
        return keys.flat_map(one_pass).take(epoch_batches).apply(tf.data.experimental.assert_cardinality(epoch_batches))

    def validation_pipeline(self, pipelines: int, index: int, batch: int) -> tf.data.Dataset:
        """Every validation example once, in file order: pipeline `index` keeps every N-th example (each pipeline
        reads every validation file, so the shares differ by at most one example and no worker waits on another)."""
        fmt = self.format
        records = fmt.records(fmt.file_table(self.validation), 1, PARALLEL)
        if pipelines > 1:
            records = records.shard(pipelines, index)
        batches = fmt.batches(records, batch, PARALLEL, drop_remainder=False).map(lambda x, y, ids: (x, y))
        # A known length: Keras 3 warns that an input "ran out of data" at the end of one it cannot count.
        examples = len(range(index, self.validation.examples, pipelines))
        return batches.apply(tf.data.experimental.assert_cardinality(-(-examples // batch)))

    def validation_share(self, pipelines: int) -> int:
        """The largest pipeline's validation examples."""
        return -(-self.validation.examples // pipelines)


_GATHER = 256
"""Records gathered at once from a shuffled block (see _block_shuffle)."""


def _block_shuffle(records: tf.data.Dataset, buffer: int, key) -> tf.data.Dataset:
    """Shuffle within consecutive blocks of `buffer` records, each block's permutation drawn from (key, block).
    Dataset.shuffle cannot take a per-pass tensor seed once a global seed is set (Keras sets one), and its
    reshuffling draws from a generator that every iterator advances, which a resumed run cannot replay."""

    def permute(j, block):
        first = tf.nest.flatten(block)[0]
        order = tf.argsort(tf.random.stateless_uniform(tf.shape(first)[:1],
                                                       seed=tf.random.experimental.stateless_fold_in(key, j)))
        # The permuted block gathered _GATHER records at a time: a gather of the whole block would hold a second
        # copy of it (10,000 records of 32x32x3 float32 images: 120 MB more), record by record costs a function
        # call per record (half the input speed on small records).
        chunks = tf.data.Dataset.range(0, tf.cast(tf.size(order), tf.int64), _GATHER)
        return chunks.map(
            lambda s: tf.nest.map_structure(lambda t: tf.gather(t, order[s:s + _GATHER]), block)).unbatch()

    return records.batch(buffer).enumerate().flat_map(permute)


# ================================================================ from the config
def load_file_source(data_cfg) -> FileSource:
    """Resolve a tfrecord, image_folder or csv data section: match its files, read its metadata, count its
    examples, and check one record parses, so that a wrong spec fails before the model is built."""
    kind = data_cfg.kind
    if kind == "image_folder":
        source = _image_folder(data_cfg)
    else:
        source = _record_files(data_cfg)
    for name, split in (("training", source.train), ("validation", source.validation)):
        if split.examples == 0:
            raise ConfigError(f"{source.format.key}: the {name} files hold no example "
                              f"({', '.join(split.files[:3])}{'...' if len(split.files) > 3 else ''})")
    check_first_batch(source)
    return source


def _record_files(cfg) -> FileSource:
    key = "data.train_files"
    train_files = formats.match(cfg.train_files, key)
    metadata, meta_path = formats.read_metadata(cfg.metadata, train_files[0])
    if cfg.kind == "tfrecord" and metadata.get("format") not in (None, "tfrecord"):
        raise ConfigError(f"data.kind: tfrecord disagrees with {meta_path}, which says format: {metadata['format']}")
    if cfg.kind == "csv" and metadata.get("format") not in (None, "csv"):
        raise ConfigError(f"data.kind: csv disagrees with {meta_path}, which says format: {metadata['format']}")
    shape = formats.agree("data.feature_shape", cfg.feature_shape, metadata, "feature_shape", meta_path)
    classes = formats.agree("data.num_classes", cfg.num_classes, metadata, "num_classes", meta_path)
    if classes is None:
        raise ConfigError(f"data.num_classes: not given, and no metadata file beside {train_files[0]} says it")
    options: dict[str, Any] = {}
    if cfg.kind == "tfrecord":
        if shape is None:
            raise ConfigError(f"data.feature_shape: not given, and no metadata file beside {train_files[0]} says it")
        for name in ("feature_key", "label_key"):
            formats.agree(f"data.{name}", getattr(cfg, name), metadata, name, meta_path)
        options = {"feature_key": cfg.feature_key, "label_key": cfg.label_key}
    val_files = formats.match(cfg.validation_files, "data.validation_files") if cfg.validation_files else ()
    if cfg.kind == "csv":
        options, shape = _csv_columns(cfg, train_files + val_files, shape)
    counts = formats.count_records(train_files, metadata, cfg.kind, key)
    train = FileSplit(train_files, counts)
    if val_files:
        validation = FileSplit(val_files, formats.count_records(val_files, metadata, cfg.kind,
                                                                "data.validation_files"))
    else:
        train, validation = _hold_out(train, cfg.validation_fraction, key)
    fmt = Format(cfg.kind, tuple(int(d) for d in shape), int(classes), key, options)
    counted = frozenset(f for f in train_files + val_files if posixpath.basename(f) in metadata.get("examples", {}))
    return FileSource(cfg, fmt, train, validation, counted)


def _csv_columns(cfg, files: tuple[str, ...], shape) -> tuple[dict, list[int]]:
    """Every file's header must be the first file's and hold the label column; the features are the rest."""
    header = formats.csv_header(files[0], "data.train_files")
    for path in files:
        columns = formats.csv_header(path, "data.train_files")
        if cfg.label_column not in columns:
            raise ConfigError(f"data.label_column: {path} has no column {cfg.label_column!r} "
                              f"(its columns: {', '.join(columns[:8])}{'...' if len(columns) > 8 else ''})")
        if columns != header:
            raise ConfigError(f"data.train_files: {path}'s header differs from {files[0]}'s")
    features = [i for i, c in enumerate(header) if c != cfg.label_column and c not in cfg.ignore_columns]
    if not features:
        raise ConfigError(f"data.ignore_columns: {files[0]} has no feature column left")
    id_col = header.index("id") if "id" in header and "id" in cfg.ignore_columns else None
    label_col = header.index(cfg.label_column)
    shape = shape or [len(features)]
    if int(np.prod(shape)) != len(features):
        raise ConfigError(f"data.feature_shape: {shape} does not hold the {len(features)} feature columns of "
                          f"{files[0]}")
    # Every column is read, so CsvDataset counts each row's cells: told to select some, it reads a row with a cell
    # too many (a stray comma) with its columns shifted. The other ignored columns: optional strings, never used.
    defaults = [tf.int64 if i in (label_col, id_col) else tf.float32 if i in features else tf.constant("")
                for i in range(len(header))]
    return {"defaults": defaults, "feature_positions": features, "label_position": label_col,
            "id_position": id_col}, shape


def _image_folder(cfg) -> FileSource:
    train, classes = formats.list_images(cfg.train_dir, "data.train_dir")
    _say_image_count(cfg.train_dir, "train", len(train.files))
    if cfg.validation_dir:
        validation, _ = formats.list_images(cfg.validation_dir, "data.validation_dir", classes)
        _say_image_count(cfg.validation_dir, "validation", len(validation.files))
    else:
        held = [i for label in range(len(classes)) for i in _last(
            [j for j, l in enumerate(train.labels) if l == label], cfg.validation_fraction)]
        keep = sorted(set(range(len(train.files))) - set(held))
        train, validation = train.subset(keep), train.subset(held)
    ids = {f: i for i, f in enumerate(train.files)} | {f: i for i, f in enumerate(validation.files)}
    fmt = Format("image_folder", (*cfg.image_size, cfg.channels), len(classes), "data.train_dir", {"ids": ids})
    if len(classes) < 2:
        raise ConfigError(f"data.train_dir: {cfg.train_dir} has {len(classes)} class sub-folder(s); need 2 or more")
    return FileSource(cfg, fmt, train, validation)


def _say_image_count(folder: str, split: str, found: int) -> None:
    """Where `paradl-tf data write` wrote this folder, its metadata.json says how many images it wrote: a count that
    differs (images added or removed since) is trained on as found, and said."""
    folder = folder.rstrip("/")
    metadata, path = formats.read_metadata(None, folder)
    written = metadata.get(f"{split}_examples")
    if metadata.get(split) == posixpath.basename(folder) + "/" and written is not None and written != found:
        warnings.warn(f"data.{'train' if split == 'train' else 'validation'}_dir: {folder} holds {found} images, but "
                      f"{path} says {split}_examples: {written}; training on the {found} found", stacklevel=3)


def _last(items: list, fraction: float) -> list:
    return items[len(items) - max(1, round(len(items) * fraction)):] if len(items) > 1 else []


def _hold_out(split: FileSplit, fraction: float, key: str) -> tuple[FileSplit, FileSplit]:
    """The last fraction of the files (at least one) for validation; at least one stays for training."""
    n = len(split.files)
    held = max(1, round(n * fraction))
    if held >= n:
        raise ConfigError(f"data.validation_fraction: {key} has {n} file(s); holding out {held} leaves none "
                          f"to train on. Give data.validation_files or write more shards")
    return split.subset(range(n - held)), split.subset(range(n - held, n))


def check_first_batch(source: FileSource) -> None:
    """Parse and check the first few records of the first training and validation files: a spec that does not fit
    the files, a label out of range or a bad value at their start fails here, before the model is built."""
    fmt = source.format
    for split in (source.train, source.validation):
        records = fmt.records(fmt.file_table(split.subset([0])), 1, 1)
        try:
            next(iter(fmt.batches(records.take(2), 2, 1, drop_remainder=False)))
        except (tf.errors.OpError, StopIteration) as exc:
            raise ConfigError(explain(source, exc, split.files[:1]) or
                              f"{fmt.key}: {split.files[0]}: its first record does not parse "
                              f"({formats.first_error_line(exc)})") from None


# ================================================================ naming the file at fault
def explain(source: FileSource, exc: BaseException, files: tuple[str, ...] | None = None) -> str | None:
    """After a read, parse or check error: find the file at fault by reading the files one by one (paid only on
    this path; `files`: only these), and say what is wrong with it in one line naming the key and the file."""
    fmt = source.format
    for split, key in ((source.train, fmt.key), (source.validation, fmt.key.replace("train", "validation"))):
        counted = source.counted_by_metadata
        for path, count in zip(split.files, split.counts):
            if files is None or path in files:
                found = file_problem(fmt, path, key, count if path in counted else None)
                if found:
                    return found
    return None


DATA_ERRORS = (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.FailedPreconditionError,
               tf.errors.NotFoundError)
"""What a read, parse or check of the input pipeline fails with (a record count that disagrees with the
metadata: FailedPrecondition, from assert_cardinality; a file gone: NotFound)."""


def data_error(source, exc: BaseException) -> BaseException:
    """The error to raise for a read, parse or check failure during training: a one-line ConfigError naming the
    file, record and key at fault where a file source has one, the failed check's own line for a user's pipeline,
    else the original error."""
    if isinstance(source, FileSource):
        found = explain(source, exc)
        if found:
            return ConfigError(found)
    # The check's own message, up to what tf.debugging appends ("] [Condition ...", " : Tensor had NaN values").
    check = re.search(rf"(data\.\w+:[^\n]*? a batch {formats.CHECK_FAILED}: [^\n]*?)(?:\] \[| : Tensor had|\n|$)",
                      str(exc))
    if check:
        return ConfigError(check.group(1))
    return exc


# ================================================================ a user's pipeline
@dataclass(frozen=True)
class UserDatasetSource:
    """data.kind: user_dataset: the user's function makes each pipeline's examples; the toolkit batches them."""

    cfg: Any
    input_shape: tuple[int, ...]
    num_classes: int

    kind = "user_dataset"
    train_examples = None

    def dataset(self, ctx, seed: int, split: str) -> tf.data.Dataset:
        fn: Callable = import_callable(self.cfg.fn, "data.fn")
        ds = fn(input_context=ctx, seed=seed, split=split, **self.cfg.args)
        if not isinstance(ds, tf.data.Dataset):
            raise ConfigError(f"data.fn: {self.cfg.fn} must return a tf.data.Dataset; got {type(ds).__name__}")
        return ds

    def checked(self, batches: tf.data.Dataset, split: str) -> tf.data.Dataset:
        """`batches` that fail when a label is out of range or a feature not finite, naming the function."""
        key = f"data.fn: {self.cfg.fn}, {split} split"
        return batches.map(lambda x, y: formats.checked_batch(x, y, self.num_classes, key))


def load_user_dataset(data_cfg, seed: int) -> UserDatasetSource:
    """Call the user's function once per split (one pipeline, no context) to learn the features' shape, and check
    what it makes: (features, class id) pairs of one shape in both splits, and a first batch that passes the
    pipeline's checks (paradl_tf.files.formats.checked_batch), so that a wrong function fails before the model."""
    fn, shape = data_cfg.fn, None
    for split in ("train", "validation"):
        probe = UserDatasetSource(data_cfg, (), data_cfg.num_classes).dataset(None, seed, split)
        spec = probe.element_spec
        if not (isinstance(spec, tuple) and len(spec) == 2 and all(isinstance(s, tf.TensorSpec) for s in spec)):
            raise ConfigError(f"data.fn: {fn} must return a dataset of (features, class id) pairs; "
                              f"its {split} elements are {spec}")
        features, label = spec
        if None in tuple(features.shape) or features.shape.rank is None:
            raise ConfigError(f"data.fn: {fn}'s features have an unknown shape {tuple(features.shape)}; "
                              "give them a fixed one")
        if shape is not None and tuple(features.shape) != shape:
            raise ConfigError(f"data.fn: {fn}'s validation features have shape {tuple(features.shape)}, its "
                              f"training features {shape}; both splits need one shape")
        shape = tuple(features.shape)
        if not (label.dtype.is_integer and label.shape.rank == 0):
            raise ConfigError(f"data.fn: {fn}'s class ids must be integer scalars; its {split} split gives "
                              f"{label.dtype.name} of shape {tuple(label.shape)}")
        _check_first_user_batch(probe, data_cfg, split)
    return UserDatasetSource(data_cfg, shape, data_cfg.num_classes)


def _check_first_user_batch(ds: tf.data.Dataset, data_cfg, split: str) -> None:
    key = f"data.fn: {data_cfg.fn}, {split} split"
    first = ds.take(64).batch(64).map(lambda x, y: formats.checked_batch(x, y, data_cfg.num_classes, key))
    try:
        next(iter(first))
    except StopIteration:
        raise ConfigError(f"{key}: the dataset is empty") from None
    except tf.errors.OpError as exc:
        raise data_error(None, exc) from None


def warn(plan: ShardPlan) -> None:
    if plan.warning:
        warnings.warn(plan.warning, stacklevel=2)
