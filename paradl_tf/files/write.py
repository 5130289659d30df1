"""`paradl-tf data write`: any in-memory source of the config (digits, synthetic, a user's arrays) written as shards
that the file kinds read back: TFRecord, an image folder, or CSV, with a metadata.json (feature shape, classes,
examples per file). Every example carries its index in its split as `id`, so tests can count who read what.

    paradl-tf data write --config=configs/sync_mirrored.yaml --out=runs/digits_tfrecord --shards=4
    paradl-tf train --config=configs/tfrecord_multiworker.yaml
"""

from __future__ import annotations

import contextlib
import csv
import json
import posixpath
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from paradl_tf.errors import ConfigError
from paradl_tf.files.formats import METADATA

FORMATS = ("tfrecord", "image_folder", "csv")


def write_shards(splits, out: str, shards: int, fmt: str = "tfrecord", validation_shards: int = 1,
                 source: str = "") -> dict[str, Any]:
    """Write `splits` (paradl_tf.builders.data.Splits) under `out`; returns the metadata written beside them.

    Nothing is overwritten and nothing is half-written: `out` must be new or an empty directory; every file is
    written under a temporary name and renamed when whole, metadata.json last, and a write that fails removes
    what it wrote (and `out`, where it made it). So a metadata.json always describes shards that are all there."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    for name, n, examples in (("--shards", shards, len(splits.x_train)),
                              ("--validation_shards", validation_shards, len(splits.x_val))):
        if not 1 <= n <= examples:
            raise ConfigError(f"{name}: {n} shards for {examples} examples; give 1 to {examples}")
    made = not tf.io.gfile.exists(out)
    _check_out(out)
    written: list[str] = []  # final names, renamed from their temporary ones
    try:
        metadata = _write_all(splits, out, shards, fmt, validation_shards, source, written)
        _write_whole(posixpath.join(out, METADATA), written,
                     lambda path: tf.io.write_file(path, json.dumps(metadata, indent=2) + "\n"))
    except BaseException:
        for path in reversed(written):  # the shards of a write that did not finish: none is left half-done
            _remove(path)
        if made:  # nor the directory this write made (image_folder's class folders inside it included)
            with contextlib.suppress(tf.errors.OpError):
                tf.io.gfile.rmtree(out)
        raise
    return metadata


def _check_out(out: str) -> None:
    if tf.io.gfile.exists(out) and not tf.io.gfile.isdir(out):
        raise ConfigError(f"--out: {out} is a file; give a new directory (nothing was overwritten)")
    if tf.io.gfile.exists(out) and tf.io.gfile.listdir(out):
        raise ConfigError(f"--out: {out} is not empty; give a new directory (nothing was overwritten)")
    try:
        tf.io.gfile.makedirs(out)
    except tf.errors.OpError as exc:
        raise ConfigError(f"--out: cannot create {out} ({str(exc).strip().splitlines()[0]})") from None


def _write_all(splits, out, shards, fmt, validation_shards, source, written) -> dict[str, Any]:
    shape = list(splits.input_shape)
    counts: dict[str, int] = {}
    listed: dict[str, Any] = {}
    for split, x, y, n in (("train", splits.x_train, splits.y_train, shards),
                           ("validation", splits.x_val, splits.y_val, validation_shards)):
        if fmt == "image_folder":
            listed["scaled_from"] = _write_whole(
                posixpath.join(out, split), written, lambda root: _images(root, x, y, splits.num_classes))
            listed[split] = f"{split}/"
            continue
        names = []
        for i, part in enumerate(np.array_split(np.arange(len(x)), n)):
            name = f"{split}-{i:05d}-of-{n:05d}.{'tfrecord' if fmt == 'tfrecord' else 'csv'}"
            write = _tfrecord if fmt == "tfrecord" else _csv
            _write_whole(posixpath.join(out, name), written, lambda path: write(path, x, y, part))
            counts[name] = len(part)
            names.append(name)
        listed[split] = names
    metadata = {"format": fmt, "source": source, "feature_shape": shape, "num_classes": splits.num_classes,
                "feature_key": "x", "label_key": "y", "label_column": "label",
                "examples": counts, "train_examples": len(splits.x_train),
                "validation_examples": len(splits.x_val), **listed}
    if fmt == "image_folder":
        metadata.pop("examples")
    return metadata


def _write_whole(path: str, written: list[str], write: Callable[[str], Any]) -> Any:
    """`write(temporary)`, then the temporary file or folder renamed to `path`: no reader (a pattern such as
    train-*) sees it half-written."""
    folder, name = posixpath.split(path)
    temporary = posixpath.join(folder, f".{name}.partial")
    written.append(temporary)
    result = write(temporary)
    tf.io.gfile.rename(temporary, path)
    written[-1] = path
    return result


def _remove(path: str) -> None:
    if not tf.io.gfile.exists(path):
        return
    if tf.io.gfile.isdir(path):
        tf.io.gfile.rmtree(path)
    else:
        tf.io.gfile.remove(path)


def _tfrecord(path: str, x, y, part) -> None:
    with tf.io.TFRecordWriter(path) as writer:
        for i in part:
            example = tf.train.Example(features=tf.train.Features(feature={
                # tolist: the same floats, 4x faster to serialize than a numpy row (read element by element).
                "x": tf.train.Feature(float_list=tf.train.FloatList(value=x[i].reshape(-1).tolist())),
                "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(y[i])])),
                "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(i)])),
            }))
            writer.write(example.SerializeToString())


def _csv(path: str, x, y, part) -> None:
    flat = x.reshape(len(x), -1)
    with tf.io.gfile.GFile(path, "w") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "label", *(f"f{j}" for j in range(flat.shape[1]))])
        for i in part:
            writer.writerow([int(i), int(y[i]), *(repr(float(v)) for v in flat[i])])


def _images(root: str, x, y, num_classes: int) -> list[float]:
    """One PNG per example in <root>/<class>/<id>.png. Features outside [0, 1] are scaled linearly from their
    range (returned, and recorded in metadata.json as scaled_from) to 0-255."""
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ConfigError(f"--format: image_folder needs image features (height, width, 1 or 3 channels); "
                          f"these have shape {list(x.shape[1:])}")
    low, high = (0.0, 1.0) if x.min() >= 0 and x.max() <= 1 else (float(x.min()), float(x.max()))
    pixels = np.clip(np.round((x - low) / (high - low) * 255), 0, 255).astype(np.uint8)
    digits = len(str(num_classes - 1))
    for label in range(num_classes):
        tf.io.gfile.makedirs(posixpath.join(root, f"class_{label:0{digits}d}"))
    for i in range(len(x)):
        path = posixpath.join(root, f"class_{int(y[i]):0{digits}d}", f"{i:06d}.png")
        tf.io.write_file(path, tf.io.encode_png(pixels[i]))
    return [low, high]
