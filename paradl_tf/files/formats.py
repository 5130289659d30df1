"""File formats the `data` section can stream: how a format lists its files, counts their examples, reads records
and parses batches of them. TFRecord and CSV are record formats (many examples per file); an image folder has one
example per file. Every parsed batch is (features float32, labels int32, ids int64): the id is the example's index
in its split when the files carry one (`paradl-tf data write` writes it), else -1."""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

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

    def file_table(self, split: FileSplit, first_id: int = 0) -> tuple[np.ndarray, ...]:
        """What a pipeline shuffles and shards at file level: paths (and, for images, labels and ids)."""
        paths = np.array(split.files, dtype=object)
        if not self.one_example_per_file:
            return (paths,)
        ids = np.array([self.options["ids"][f] for f in split.files], dtype=np.int64)
        return paths, np.array(split.labels, dtype=np.int32), ids

    def records(self, table: tuple, cycle_length: int, parallel: int) -> tf.data.Dataset:
        """Files (file_table's columns, in the order to read them) to records, reading `cycle_length` files at
        once, interleaved. An image folder's record is its file's row: (path, label, id)."""
        if self.one_example_per_file:
            return tf.data.Dataset.from_tensor_slices(tuple(tf.convert_to_tensor(column) for column in table))
        paths = tf.data.Dataset.from_tensor_slices(tf.convert_to_tensor(table[0]))
        if self.kind == "tfrecord":
            read = lambda path: tf.data.TFRecordDataset(path)  # noqa: E731
        else:
            columns, defaults = self.options["select"], self.options["defaults"]
            read = lambda path: tf.data.experimental.CsvDataset(  # noqa: E731
                path, defaults, header=True, select_cols=columns)
        return paths.interleave(lambda path: read(path), cycle_length=cycle_length, block_length=1,
                                num_parallel_calls=min(parallel, cycle_length), deterministic=True)

    def batches(self, records: tf.data.Dataset, batch: int, parallel: int, drop_remainder: bool) -> tf.data.Dataset:
        """Records to parsed batches (features, labels, ids): one vectorized parse per batch for record formats,
        one decode per image (images differ in size until resized)."""
        if self.one_example_per_file:
            return records.map(self._load_image, num_parallel_calls=parallel, deterministic=True).batch(
                batch, drop_remainder=drop_remainder)
        parse = self._parse_examples if self.kind == "tfrecord" else self._stack_columns
        return records.batch(batch, drop_remainder=drop_remainder).map(
            parse, num_parallel_calls=parallel, deterministic=True)

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


# ================================================================ listing and metadata
def match(pattern: str, key: str) -> tuple[str, ...]:
    """The files a pattern matches, sorted; none is an error that names the key."""
    files = tuple(sorted(tf.io.gfile.glob(pattern)))
    if not files:
        raise ConfigError(f"{key}: {pattern!r} matches no file")
    return files


def read_metadata(path: str | None, near: str) -> tuple[dict, str | None]:
    """The metadata file: the one named, else metadata.json in the directory of `near` if it exists."""
    path = path or posixpath.join(posixpath.dirname(near), METADATA)
    if not tf.io.gfile.exists(path):
        return {}, None
    try:
        return json.loads(tf.io.gfile.GFile(path).read()), path
    except (ValueError, tf.errors.OpError) as exc:
        raise ConfigError(f"data.metadata: {path} is not a readable JSON metadata file ({exc})") from None


def agree(key: str, given, metadata: dict, name: str, path: str | None):
    """The config's value where given, else the metadata's; both given and different is an error."""
    known = metadata.get(name)
    if given is not None and known is not None and list(np.atleast_1d(given)) != list(np.atleast_1d(known)):
        raise ConfigError(f"{key}: {given!r} disagrees with {path}, which says {name}: {known!r}")
    return given if given is not None else known


def count_records(files: tuple[str, ...], metadata: dict, kind: str) -> tuple[int, ...]:
    """Examples per file: from the metadata's per-file counts, else by reading the file once."""
    known = metadata.get("examples", {})
    counts = []
    for f in files:
        n = known.get(posixpath.basename(f))
        if n is None:
            n = _count(f, kind)
        counts.append(int(n))
    return tuple(counts)


def _count(path: str, kind: str) -> int:
    try:
        if kind == "csv":
            with tf.io.gfile.GFile(path) as f:
                return max(sum(1 for line in f if line.strip()) - 1, 0)
        return int(tf.data.TFRecordDataset(path).reduce(np.int64(0), lambda n, _: n + 1))
    except tf.errors.OpError as exc:
        raise ConfigError(f"data: {path}: cannot be read to count its records "
                          f"({str(exc).splitlines()[0]})") from None


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
