"""File formats the `data` section can stream: how a format lists its files, counts their examples, reads records
and parses batches of them. TFRecord and CSV are record formats (many examples per file); an image folder has one
example per file. Every parsed batch is (features float32, labels int32, ids int64): the id is the example's index
in its split when the files carry one (`paradl-tf data write` writes it), else -1."""

from __future__ import annotations

import difflib
import json
import posixpath
import re
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import tensorflow as tf
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError

from paradl_tf.errors import ConfigError

METADATA = "metadata.json"
"""The file `paradl-tf data write` puts beside the shards: feature shape, classes and examples per file."""
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class FileSplit:
    """One split's files, in order, with the examples each holds (image folders: one per file, with its class)."""

    files: tuple[str, ...]
    counts: tuple[int, ...]
    labels: tuple[int, ...] | None = None
    """Image folders: each image's class id (from its sub-folder)."""

    @property
    def examples(self) -> int:
        return sum(self.counts)

    def subset(self, indices) -> "FileSplit":
        pick = [int(i) for i in indices]
        return FileSplit(tuple(self.files[i] for i in pick), tuple(self.counts[i] for i in pick),
                         tuple(self.labels[i] for i in pick) if self.labels is not None else None)


@dataclass(frozen=True)
class Format:
    """How one file format reads and parses; built from the data section and the metadata file."""

    kind: str
    input_shape: tuple[int, ...]
    num_classes: int
    key: str
    """The config key that names the training files, for messages."""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def one_example_per_file(self) -> bool:
        return self.kind == "image_folder"

    @property
    def label_name(self) -> str:
        """The label's key or column in a record, for messages."""
        return self.options.get("label_key") or self.options.get("label_column") or "label"

    def file_table(self, split: FileSplit, first_id: int = 0) -> tuple[np.ndarray, ...]:
        """What a pipeline shuffles and shards at file level: paths and the records each holds (images: paths,
        labels and ids)."""
        paths = np.array(split.files, dtype=object)
        if not self.one_example_per_file:
            return paths, np.array(split.counts, dtype=np.int64)
        ids = np.array([self.options["ids"][f] for f in split.files], dtype=np.int64)
        return paths, np.array(split.labels, dtype=np.int32), ids

    def records(self, table: tuple, cycle_length: int, parallel: int) -> tf.data.Dataset:
        """Files (file_table's columns, in the order to read them) to records, reading `cycle_length` files at
        once, interleaved. An image folder's record is its file's row: (path, label, id). A record file that
        holds more or fewer records than counted (metadata.json's `examples`) fails when that is seen, to be
        named by paradl_tf.files.checks."""
        columns = tf.data.Dataset.from_tensor_slices(tuple(tf.convert_to_tensor(column) for column in table))
        if self.one_example_per_file:
            return columns
        if self.kind == "tfrecord":
            read = lambda path: tf.data.TFRecordDataset(path)  # noqa: E731
        else:
            defaults = self.options["defaults"]  # every column: see sources._csv_columns
            read = lambda path: tf.data.experimental.CsvDataset(path, defaults, header=True)  # noqa: E731
        return columns.interleave(
            lambda path, count: read(path).apply(tf.data.experimental.assert_cardinality(count)),
            cycle_length=cycle_length, block_length=1, num_parallel_calls=min(parallel, cycle_length),
            deterministic=True)

    def batches(self, records: tf.data.Dataset, batch: int, parallel: int, drop_remainder: bool) -> tf.data.Dataset:
        """Records to parsed batches (features, labels, ids): one vectorized parse per batch for record formats,
        one decode per image (images differ in size until resized)."""
        if self.one_example_per_file:
            return records.map(self._load_image, num_parallel_calls=parallel, deterministic=True).batch(
                batch, drop_remainder=drop_remainder)
        parse = self._parse_examples if self.kind == "tfrecord" else self._stack_columns

        def parse_checked(*records):
            x, y, ids = parse(*records)
            x, y = checked_batch(x, y, self.num_classes, self.key, self.label_name)
            return x, y, ids

        return records.batch(batch, drop_remainder=drop_remainder).map(
            parse_checked, num_parallel_calls=parallel, deterministic=True)

    # ---------------------------------------------------------------- parsers
    def _parse_examples(self, serialized):
        o = self.options
        spec = {o["feature_key"]: tf.io.FixedLenFeature([int(np.prod(self.input_shape))], tf.float32),
                o["label_key"]: tf.io.FixedLenFeature([], tf.int64),
                "id": tf.io.FixedLenFeature([], tf.int64, default_value=-1)}
        parsed = tf.io.parse_example(serialized, spec)
        x = tf.reshape(parsed[o["feature_key"]], [-1, *self.input_shape])
        return x, tf.cast(parsed[o["label_key"]], tf.int32), parsed["id"]

    def _stack_columns(self, *columns):
        o = self.options
        features = [columns[i] for i in o["feature_positions"]]
        x = tf.reshape(tf.stack(features, axis=1), [-1, *self.input_shape])
        label = tf.cast(columns[o["label_position"]], tf.int32)
        ids = (tf.cast(columns[o["id_position"]], tf.int64) if o["id_position"] is not None
               else tf.fill(tf.shape(label), tf.constant(-1, tf.int64)))
        return x, label, ids

    def _load_image(self, path, label, example_id):
        height, width, channels = self.input_shape
        image = tf.io.decode_image(tf.io.read_file(path), channels=channels, expand_animations=False)
        image = tf.image.resize(image, [height, width]) / 255.0
        return tf.ensure_shape(image, self.input_shape), label, example_id


CHECK_FAILED = "failed a check of the input pipeline"
"""In every message of checked_batch: how data_error knows a failed check from other errors."""


def checked_batch(x, y, num_classes: int, key: str, label: str = "label"):
    """(features, labels) that fail the step when a label is outside [0, num_classes) or a feature is NaN or
    infinite: three reductions over the batch, little next to a training step. The failure is an
    InvalidArgumentError whose message names `key` and the valid range (paradl_tf.files.checks then names the file
    and record where the examples come from files)."""
    where = f"{key}: a batch {CHECK_FAILED}:"
    limit = tf.cast(num_classes, y.dtype)
    checks = [tf.debugging.assert_non_negative(y, message=f"{where} a {label} below 0; classes are [0, {num_classes})"),
              tf.debugging.assert_less(y, limit, message=f"{where} a {label} of {num_classes} or more; classes are "
                                                         f"[0, {num_classes})")]
    with tf.control_dependencies(checks):
        return tf.debugging.check_numerics(x, f"{where} a feature that is not finite; features must be finite"), \
            tf.identity(y)


# ================================================================ listing and metadata
def match(pattern: str, key: str) -> tuple[str, ...]:
    """The files a pattern matches, sorted; none is an error that names the key."""
    files = tuple(sorted(tf.io.gfile.glob(pattern)))
    if not files:
        raise ConfigError(f"{key}: {pattern!r} matches no file")
    return files


class Metadata(BaseModel):
    """metadata.json, as `paradl-tf data write` writes it; a user's may leave out any key (the config gives it)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    format: Literal["tfrecord", "image_folder", "csv"] | None = None
    source: str | None = None
    feature_shape: Annotated[list[PositiveInt], Field(min_length=1)] | None = None
    num_classes: Annotated[int, Field(ge=2)] | None = None
    feature_key: str | None = None
    label_key: str | None = None
    label_column: str | None = None
    examples: dict[str, NonNegativeInt] = {}
    """Records per file, by file name: the pipeline checks each file holds as many."""
    train_examples: NonNegativeInt | None = None
    validation_examples: NonNegativeInt | None = None
    train: list[str] | str | None = None
    """The training files' names (image folders: the folder)."""
    validation: list[str] | str | None = None
    scaled_from: Annotated[list[float], Field(min_length=2, max_length=2)] | None = None


def read_metadata(path: str | None, near: str) -> tuple[dict, str | None]:
    """The metadata file, checked: the one named, else metadata.json in the directory of `near` if it exists."""
    named = path
    path = path or posixpath.join(posixpath.dirname(near), METADATA)
    if not tf.io.gfile.exists(path):
        if named:
            raise ConfigError(f"data.metadata: {path} does not exist")
        return {}, None
    try:
        data = json.loads(tf.io.gfile.GFile(path).read())
    except (ValueError, tf.errors.OpError) as exc:
        raise ConfigError(f"data.metadata: {path} is not a readable JSON file ({first_error_line(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"data.metadata: {path} holds a JSON {type(data).__name__}; it must be an object of keys")
    try:
        metadata = Metadata.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"data.metadata: {path}: {_metadata_error(exc)}") from None
    _check_listed_files(metadata, path)
    return metadata.model_dump(exclude_none=True), path


def _metadata_error(exc: ValidationError) -> str:
    """One line for metadata.json's first bad key, in the Keras template: problem, then what was received."""
    first = exc.errors()[0]
    loc = first["loc"]
    key = str(loc[0]) + "".join(f"[{p!r}]" for p in loc[1:])
    if first["type"] == "extra_forbidden":
        valid = list(Metadata.model_fields)
        close = difflib.get_close_matches(str(loc[0]), valid, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        return f"unknown key {loc[0]!r}{hint} Valid keys: {', '.join(valid)}"
    value = first.get("input")
    return f"{key}: {first['msg'][:1].lower()}{first['msg'][1:]}. Received: {key}={value!r} ({type(value).__name__})"


def _check_listed_files(metadata: Metadata, path: str) -> None:
    """Every file metadata.json lists beside it must be there: a missing shard would silently train on less."""
    folder = posixpath.dirname(path)
    for split in ("train", "validation"):
        names = getattr(metadata, split)
        for name in [names] if isinstance(names, str) else names or []:
            if not tf.io.gfile.exists(posixpath.join(folder, name)):
                raise ConfigError(f"data.metadata: {path} lists {split} file {name!r}, which is not in {folder}: "
                                  "write the data again, or remove it from the list")


def first_error_line(exc: BaseException) -> str:
    """An error's first line, without TensorFlow's function-node prefix and op suffix."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip() and not ln.strip().startswith("[[")]
    text = lines[0] if lines else type(exc).__name__
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    return re.sub(r"\s*\[Op:\w+\].*$", "", text)


def agree(key: str, given, metadata: dict, name: str, path: str | None):
    """The config's value where given, else the metadata's; both given and different is an error."""
    known = metadata.get(name)
    if given is not None and known is not None and list(np.atleast_1d(given)) != list(np.atleast_1d(known)):
        raise ConfigError(f"{key}: {given!r} disagrees with {path}, which says {name}: {known!r}")
    return given if given is not None else known


def count_records(files: tuple[str, ...], metadata: dict, kind: str, key: str) -> tuple[int, ...]:
    """Examples per file: from the metadata's per-file counts (the pipeline checks them as it reads), else by
    reading the file once. An empty file is an error: it holds nothing to train on, and is most often one whose
    writing failed."""
    known = metadata.get("examples", {})
    counts = []
    for f in files:
        if tf.io.gfile.stat(f).length == 0:
            raise ConfigError(f"{key}: {f} is empty (0 bytes): write it again, or leave it out of the pattern")
        n = known.get(posixpath.basename(f))
        if n is None:
            n = _count(f, kind, key)
            if n == 0:
                raise ConfigError(f"{key}: {f} holds no record: write it again, or leave it out of the pattern")
        counts.append(int(n))
    return tuple(counts)


def _count(path: str, kind: str, key: str) -> int:
    try:
        if kind == "csv":
            with tf.io.gfile.GFile(path) as f:
                return max(sum(1 for line in f if line.strip()) - 1, 0)
        return int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1))
    except tf.errors.OpError as exc:
        what = "a corrupt or truncated record" if isinstance(exc, tf.errors.DataLossError) else "cannot be read"
        raise ConfigError(f"{key}: {path}: {what}, met counting its records ({first_error_line(exc)})") from None


def csv_header(path: str, key: str) -> list[str]:
    with tf.io.gfile.GFile(path) as f:
        line = f.readline().strip()
    if not line:
        raise ConfigError(f"{key}: {path} has no header row")
    return [c.strip() for c in line.split(",")]


def list_images(root: str, key: str, classes: list[str] | None = None) -> tuple[FileSplit, list[str]]:
    """<root>/<class>/<image> files, classes sorted by name (as keras.utils.image_dataset_from_directory)."""
    if not tf.io.gfile.isdir(root):
        raise ConfigError(f"{key}: {root!r} is not a directory")
    found = sorted(d.rstrip("/") for d in tf.io.gfile.listdir(root) if tf.io.gfile.isdir(posixpath.join(root, d)))
    if classes is not None and found != classes:
        raise ConfigError(f"{key}: {root} has classes {found}, but the training images have {classes}")
    files, labels = [], []
    for label, name in enumerate(found):
        folder = posixpath.join(root, name)
        images = sorted(f for f in tf.io.gfile.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))
        files += [posixpath.join(folder, f) for f in images]
        labels += [label] * len(images)
    if not files:
        raise ConfigError(f"{key}: {root!r} holds no PNG or JPEG image in class sub-folders")
    return FileSplit(tuple(files), (1,) * len(files), tuple(labels)), found
