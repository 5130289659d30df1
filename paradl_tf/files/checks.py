"""What is wrong with one data file, in one line: the file, the record (row, image) and key at fault, and what is
valid there. The input pipeline checks cheaply as it reads (parse errors, paradl_tf.files.formats.checked_batch,
each file's record count); when a check fails, this module reads the files one by one, in plain Python, to say
where and why. That costs a read of the data, paid only on the error path.

Records count from 0 (`record 17`); CSV rows count as a text editor shows them, the header being row 1.
"""

from __future__ import annotations

import csv
import math
from typing import Iterator

import numpy as np
import tensorflow as tf

from paradl_tf.files.formats import Format, first_error_line


def file_problem(fmt: Format, path: str, key: str, expected: int | None = None) -> str | None:
    """The first thing in `path` that the pipeline cannot use, as `KEY: PATH: ...`; None if there is none.
    `expected`: the records the file should hold (metadata.json's count)."""
    if fmt.one_example_per_file:
        found = _image_problem(fmt, path)
    elif fmt.kind == "tfrecord":
        found = _records_problem(_tfrecord_rows(fmt, path), expected, "record", "records")
    else:
        found = _records_problem(_csv_rows(fmt, path), expected, "row", "rows of examples")
    return f"{key}: {path}: {found}" if found else None


def _records_problem(rows: Iterator[str | None], expected: int | None, what: str, plural: str) -> str | None:
    """The first problem `rows` reports (each item: None for a good record, else what is wrong), then the count."""
    seen = 0
    for problem in rows:
        if problem:
            return problem
        seen += 1
    if expected is not None and seen != expected:
        return (f"holds {seen} {plural}, but metadata.json says examples: {expected} for it: write the data again, "
                "or remove the file's entry from metadata.json's examples and the run counts it itself")
    return None


# ---------------------------------------------------------------- TFRecord
def _tfrecord_rows(fmt: Format, path: str) -> Iterator[str | None]:
    width = int(np.prod(fmt.input_shape))
    feature_key, label_key = fmt.options["feature_key"], fmt.options["label_key"]
    index = 0
    try:
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            yield _example_problem(record, index, feature_key, label_key, width, fmt)
            index += 1
    except tf.errors.NotFoundError as exc:
        yield f"cannot be read ({first_error_line(exc)})"
    except tf.errors.OpError as exc:
        yield f"a corrupt or truncated record at record {index} ({first_error_line(exc)})"


def _example_problem(record: bytes, index: int, feature_key: str, label_key: str, width: int,
                     fmt: Format) -> str | None:
    try:
        features = tf.train.Example.FromString(record).features.feature
    except Exception as exc:  # noqa: BLE001 - protobuf's DecodeError
        return f"record {index}: not a tf.train.Example ({type(exc).__name__})"
    where = f"record {index}: feature {{!r}}"
    for name, kind in ((feature_key, "float_list"), (label_key, "int64_list")):
        if name not in features:
            return (f"a record lacks a feature the spec needs: record {index} has no {name!r} (it has "
                    f"{', '.join(sorted(features)) or 'none'}; data.feature_key and data.label_key name them)")
        held = features[name].WhichOneof("kind")
        if held != kind:
            return f"{where.format(name)} is {held or 'empty'}; it must be {kind}"
    values = features[feature_key].float_list.value
    if len(values) != width:
        return (f"{where.format(feature_key)} has {len(values)} values; data.feature_shape {list(fmt.input_shape)} "
                f"needs {width}")
    bad = next((j for j, v in enumerate(values) if not math.isfinite(v)), None)
    if bad is not None:
        return f"{where.format(feature_key)}[{bad}] is {values[bad]}; features must be finite"
    labels = features[label_key].int64_list.value
    if len(labels) != 1:
        return f"{where.format(label_key)} has {len(labels)} values; the label is one class id"
    return _label_problem(f"record {index}: {label_key!r}", labels[0], fmt.num_classes)


def _label_problem(where: str, label: int, num_classes: int) -> str | None:
    if not 0 <= label < num_classes:
        return f"{where} is {label}, outside [0, {num_classes}) (data.num_classes: {num_classes})"
    return None


# ---------------------------------------------------------------- CSV
def _csv_rows(fmt: Format, path: str) -> Iterator[str | None]:
    o = fmt.options
    label_at, features_at = o["label_position"], o["feature_positions"]
    try:
        with tf.io.gfile.GFile(path) as f:
            reader = csv.reader(f)
            header = next(reader, [])
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue  # a blank line: CsvDataset skips it too
                if len(row) != len(header):  # e.g. a stray comma, which shifts every column after it
                    yield f"row {line}: {len(row)} columns; the header has {len(header)}"
                    return
                yield _csv_row_problem(row, line, header, label_at, features_at, fmt.num_classes)
    except (tf.errors.OpError, csv.Error, UnicodeDecodeError) as exc:
        yield f"cannot be read as CSV ({first_error_line(exc)})"


def _csv_row_problem(row: list[str], line: int, header: list[str], label_at: int, features_at: list[int],
                     num_classes: int) -> str | None:
    try:
        label = int(row[label_at])
    except ValueError:
        return f"row {line}: column {header[label_at]!r} is {row[label_at]!r}; it must be an integer class id"
    for j in features_at:
        try:
            value = float(row[j])
        except ValueError:
            return f"row {line}: column {header[j]!r} is {row[j]!r}; features must be numbers"
        if not math.isfinite(value):
            return f"row {line}: column {header[j]!r} is {row[j]}; features must be finite"
    return _label_problem(f"row {line}: column {header[label_at]!r}", label, num_classes)


# ---------------------------------------------------------------- images
def _image_problem(fmt: Format, path: str) -> str | None:
    try:
        data = tf.io.read_file(path)
    except tf.errors.OpError as exc:
        return f"cannot be read ({first_error_line(exc)})"
    try:
        tf.io.decode_image(data, channels=fmt.input_shape[-1], expand_animations=False)
    except tf.errors.OpError as exc:
        return f"not an image that decodes ({first_error_line(exc)})"
    return None
