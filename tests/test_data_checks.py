"""Data you can trust: a corpus of broken files, made from `paradl-tf data write` output of the digits, each
variant refused with one line that names the file, the record (row, image) and the key at fault, or read
through where the input is valid after all; a diverging run stopped at its step; nothing overwritten.

Most variants go through what a run does in-process (load the source, read an epoch and the validation split,
translate a failure as fit_run does); a few go through the real CLI, one under MultiWorkerMirrored to show that a
worker's error reaches the terminal once."""

import json
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from paradl_tf.builders.data import build_dataset, load_source, load_splits
from paradl_tf.config import load_config
from paradl_tf.config.schema import Config
from paradl_tf.errors import ConfigError
from paradl_tf.files import write as write_module
from paradl_tf.files.sources import DATA_ERRORS, data_error
from paradl_tf.files.write import write_shards

TRAIN, VALIDATION = "train-{:05d}-of-00004.{}", "validation-00000-of-00001.{}"


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """The digits written once per format, as `paradl-tf data write` writes them: 4 training files, 1 validation."""
    root = tmp_path_factory.mktemp("written")
    digits = load_splits(Config().data, 0)
    for fmt in ("tfrecord", "csv", "image_folder"):
        write_shards(digits, str(root / fmt), 4, fmt, 1, "digits")
    return root


def data_section(fmt: str, root: Path) -> dict:
    if fmt == "image_folder":
        return {"kind": "image_folder", "train_dir": f"{root}/train", "validation_dir": f"{root}/validation",
                "image_size": [8, 8], "channels": 1}
    return {"kind": fmt, "train_files": f"{root}/train-*", "validation_files": f"{root}/validation-*"}


def read_through(data: dict, *extra: str):
    """What a run does with the data section, in-process: load and check the source, then read one epoch of
    training and the validation split; a failure is translated as paradl_tf.runs.fit.fit_run translates it."""
    cfg = load_config("configs/one_device.yaml", ["data=" + json.dumps(data), "train.global_batch_size=32", *extra])
    source = load_source(cfg.data, cfg.train.seed)
    datasets = build_dataset(cfg, source)
    try:
        batches = sum(1 for _ in datasets.validation) + sum(1 for _ in datasets.train)  # the quicker first
    except DATA_ERRORS as exc:
        raise data_error(source, exc) from None
    return source, batches


# ---------------------------------------------------------------- how the corpus is made
def records(path: Path) -> list[tf.train.Example]:
    return [tf.train.Example.FromString(r) for r in tf.data.TFRecordDataset(str(path)).as_numpy_iterator()]


def rewrite(path: Path, examples: list[tf.train.Example]) -> None:
    with tf.io.TFRecordWriter(str(path)) as w:
        for e in examples:
            w.write(e.SerializeToString())


def edit_record(path: Path, index: int, change) -> None:
    examples = records(path)
    change(examples[index].features.feature)
    rewrite(path, examples)


def set_label(value):
    def change(f):
        f["y"].int64_list.value[:] = [value]
    return change


def set_feature(j, value):
    def change(f):
        f["x"].float_list.value[j] = value
    return change


def retype(name, kind, values):
    def change(f):
        f[name].Clear()
        getattr(f[name], kind).value.extend(values)
    return change


def edit_metadata(root: Path, change) -> None:
    meta = json.loads((root / "metadata.json").read_text())
    change(meta)
    (root / "metadata.json").write_text(json.dumps(meta))


def edit_csv(path: Path, line: int, change) -> None:
    """Change line `line` (1 = the header) of a CSV file: change(cells) -> cells."""
    lines = path.read_text().splitlines()
    lines[line - 1] = ",".join(change(lines[line - 1].split(",")))
    path.write_text("\n".join(lines) + "\n")


def set_cell(column: int, value: str):
    def change(cells):
        cells[column] = value
        return cells
    return change


def tr(i, ext="tfrecord"):
    return TRAIN.format(i, ext)


def va(ext="tfrecord"):
    return VALIDATION.format(ext)


def image(root: Path, split: str, label: int, n: int = 3) -> Path:
    return sorted((root / split / f"class_{label}").iterdir())[n]


# Each variant: (format, how to break the written files, the line expected, or None: valid after all). Lines are
# regular expressions over the whole message; ROOT stands for the variant's folder.
R = "ROOT"
VARIANTS = {
    # TFRecord: a record's values
    "tfrecord_label_too_large": ("tfrecord", lambda r: edit_record(r / tr(2), 100, set_label(15)),
                                 rf"data\.train_files: {R}/{tr(2)}: record 100: 'y' is 15, outside \[0, 10\) "
                                 r"\(data\.num_classes: 10\)"),
    "tfrecord_label_negative_in_validation": ("tfrecord", lambda r: edit_record(r / va(), 50, set_label(-1)),
                                              rf"data\.validation_files: {R}/{va()}: record 50: 'y' is -1, "
                                              r"outside \[0, 10\) \(data\.num_classes: 10\)"),
    "tfrecord_label_in_first_record": ("tfrecord", lambda r: edit_record(r / tr(0), 0, set_label(10)),
                                       rf"data\.train_files: {R}/{tr(0)}: record 0: 'y' is 10, outside \[0, 10\)"),
    "tfrecord_nan_feature": ("tfrecord", lambda r: edit_record(r / tr(1), 7, set_feature(3, float("nan"))),
                             rf"data\.train_files: {R}/{tr(1)}: record 7: feature 'x'\[3\] is nan; features must "
                             r"be finite"),
    "tfrecord_inf_feature_in_validation": ("tfrecord", lambda r: edit_record(r / va(), 200, set_feature(0, np.inf)),
                                           rf"data\.validation_files: {R}/{va()}: record 200: feature 'x'\[0\] is "
                                           r"inf; features must be finite"),
    "tfrecord_feature_too_short": ("tfrecord", lambda r: edit_record(r / tr(3), 9, retype("x", "float_list", [0.5] * 63)),
                                   rf"data\.train_files: {R}/{tr(3)}: record 9: feature 'x' has 63 values; "
                                   r"data\.feature_shape \[8, 8, 1\] needs 64"),
    "tfrecord_label_as_float": ("tfrecord", lambda r: edit_record(r / tr(0), 0, retype("y", "float_list", [3.0])),
                                rf"data\.train_files: {R}/{tr(0)}: record 0: feature 'y' is float_list; it must be "
                                r"int64_list"),
    "tfrecord_features_as_int": ("tfrecord", lambda r: edit_record(r / tr(3), 3, retype("x", "int64_list", [1] * 64)),
                                 rf"data\.train_files: {R}/{tr(3)}: record 3: feature 'x' is int64_list; it must be "
                                 r"float_list"),
    "tfrecord_label_missing": ("tfrecord", lambda r: edit_record(r / tr(1), 11, lambda f: f.pop("y")),
                               rf"data\.train_files: {R}/{tr(1)}: a record lacks a feature the spec needs: record 11 "
                               r"has no 'y' \(it has id, x; data\.feature_key and data\.label_key name them\)"),
    "tfrecord_two_labels": ("tfrecord", lambda r: edit_record(r / tr(2), 5, retype("y", "int64_list", [1, 2])),
                            rf"data\.train_files: {R}/{tr(2)}: record 5: feature 'y' has 2 values; the label is one "
                            r"class id"),
    # TFRecord: the file
    "tfrecord_truncated": ("tfrecord", lambda r: (r / tr(3)).write_bytes((r / tr(3)).read_bytes()[:-100]),
                           rf"data\.train_files: {R}/{tr(3)}: a corrupt or truncated record at record 35\d "),
    "tfrecord_corrupt_bytes": ("tfrecord", lambda r: corrupt(r / tr(1)),
                               rf"data\.train_files: {R}/{tr(1)}: a corrupt or truncated record at record \d+ "),
    "tfrecord_empty_file": ("tfrecord", lambda r: (r / tr(2)).write_bytes(b""),
                            rf"data\.train_files: {R}/{tr(2)} is empty \(0 bytes\): write it again, or leave it out "
                            r"of the pattern"),
    "tfrecord_fewer_records_than_metadata": ("tfrecord", lambda r: rewrite(r / tr(1), records(r / tr(1))[:300]),
                                             rf"data\.train_files: {R}/{tr(1)}: holds 300 records, but metadata\.json "
                                             r"says examples: 359 for it: write the data again, or remove the file's "
                                             r"entry from metadata\.json's examples and the run counts it itself"),
    "tfrecord_more_records_than_metadata": ("tfrecord", lambda r: rewrite(r / va(), records(r / va()) * 2),
                                            rf"data\.validation_files: {R}/{va()}: holds 720 records, but "
                                            r"metadata\.json says examples: 360 for it"),
    "tfrecord_not_a_tfrecord": ("tfrecord", lambda r: (r / tr(0)).write_text("id,label\n1,2\n"),
                                rf"data\.train_files: {R}/{tr(0)}: a corrupt or truncated record at record 0 "
                                r"\(corrupted record at 0 \(Is this even a TFRecord file\?\)\)"),
    "tfrecord_extra_file_not_in_metadata": ("tfrecord", lambda r: shutil.copy(r / tr(0), r / TRAIN.format(4, "tfrecord")),
                                            None),
    # metadata.json
    "metadata_shape_a_string": ("tfrecord", lambda r: edit_metadata(r, lambda m: m.update(feature_shape="8x8")),
                                rf"data\.metadata: {R}/metadata\.json: feature_shape: input should be a valid list\. "
                                r"Received: feature_shape='8x8' \(str\)"),
    "metadata_classes_a_string": ("tfrecord", lambda r: edit_metadata(r, lambda m: m.update(num_classes="10")),
                                  rf"data\.metadata: {R}/metadata\.json: num_classes: input should be a valid integer\. "
                                  r"Received: num_classes='10' \(str\)"),
    "metadata_one_class": ("tfrecord", lambda r: edit_metadata(r, lambda m: m.update(num_classes=1)),
                           rf"data\.metadata: {R}/metadata\.json: num_classes: input should be greater than or equal "
                           r"to 2\. Received: num_classes=1 \(int\)"),
    "metadata_shape_of_other_size": ("tfrecord", lambda r: edit_metadata(r, lambda m: m.update(feature_shape=[8, 9])),
                                     rf"data\.train_files: {R}/{tr(0)}: record 0: feature 'x' has 64 values; "
                                     r"data\.feature_shape \[8, 9\] needs 72"),
    "metadata_shape_nested": ("tfrecord", lambda r: edit_metadata(r, lambda m: m.update(feature_shape=[[8, 8]])),
                              rf"data\.metadata: {R}/metadata\.json: feature_shape\[0\]: input should be a valid "
                              r"integer\. Received: feature_shape\[0\]=\[8, 8\] \(list\)"),
    "metadata_count_negative": ("tfrecord", lambda r: edit_metadata(r, lambda m: m["examples"].update({tr(0): -5})),
                                rf"data\.metadata: {R}/metadata\.json: examples\['{tr(0)}'\]: input should be greater "
                                rf"than or equal to 0\. Received: examples\['{tr(0)}'\]=-5 \(int\)"),
    "metadata_unknown_key": ("tfrecord", lambda r: edit_metadata(r, lambda m: m.update(num_class=m.pop("num_classes"))),
                             rf"data\.metadata: {R}/metadata\.json: unknown key 'num_class'; did you mean "
                             r"'num_classes'\? Valid keys: format, "),
    "metadata_not_json": ("tfrecord", lambda r: (r / "metadata.json").write_text('{"format": "tfrecord", '),
                          rf"data\.metadata: {R}/metadata\.json is not a readable JSON file \(Expecting"),
    "metadata_a_list": ("tfrecord", lambda r: (r / "metadata.json").write_text("[8, 8, 1]"),
                        rf"data\.metadata: {R}/metadata\.json holds a JSON list; it must be an object of keys"),
    "metadata_lists_a_missing_file": ("tfrecord", lambda r: (r / tr(3)).unlink(),
                                      rf"data\.metadata: {R}/metadata\.json lists train file '{tr(3)}', which is not "
                                      rf"in {R}: write the data again, or remove it from the list"),
    "metadata_format_disagrees": ("tfrecord", lambda r: edit_metadata(r, lambda m: m.update(format="csv")),
                                  rf"data\.kind: tfrecord disagrees with {R}/metadata\.json, which says format: csv"),
    "metadata_without_counts": ("tfrecord", lambda r: edit_metadata(r, lambda m: m.pop("examples")), None),
    # CSV (row 1 is the header; columns: id, label, f0 ... f63)
    "csv_label_too_large": ("csv", lambda r: edit_csv(r / tr(2, "csv"), 101, set_cell(1, "15")),
                            rf"data\.train_files: {R}/{tr(2, 'csv')}: row 101: column 'label' is 15, outside \[0, 10\) "
                            r"\(data\.num_classes: 10\)"),
    "csv_label_negative_in_validation": ("csv", lambda r: edit_csv(r / va("csv"), 300, set_cell(1, "-3")),
                                         rf"data\.validation_files: {R}/{va('csv')}: row 300: column 'label' is -3, "
                                         r"outside \[0, 10\)"),
    # (in the first rows of the first file: met before training)
    "csv_label_not_an_integer": ("csv", lambda r: edit_csv(r / tr(0, "csv"), 3, set_cell(1, "3.5")),
                                 rf"data\.train_files: {R}/{tr(0, 'csv')}: row 3: column 'label' is '3\.5'; it must "
                                 r"be an integer class id"),
    "csv_cell_not_a_number": ("csv", lambda r: edit_csv(r / va("csv"), 2, set_cell(9, "abc")),
                              rf"data\.validation_files: {R}/{va('csv')}: row 2: column 'f7' is 'abc'; features "
                              r"must be numbers"),
    "csv_cell_nan": ("csv", lambda r: edit_csv(r / tr(0, "csv"), 20, set_cell(5, "nan")),
                     rf"data\.train_files: {R}/{tr(0, 'csv')}: row 20: column 'f3' is nan; features must be finite"),
    "csv_cell_inf_in_validation": ("csv", lambda r: edit_csv(r / va("csv"), 7, set_cell(60, "inf")),
                                   rf"data\.validation_files: {R}/{va('csv')}: row 7: column 'f58' is inf; features "
                                   r"must be finite"),
    "csv_row_short": ("csv", lambda r: edit_csv(r / tr(2, "csv"), 30, lambda c: c[:-1]),
                      rf"data\.train_files: {R}/{tr(2, 'csv')}: row 30: 65 columns; the header has 66"),
    # A cell more (a stray comma): the columns after it would be read shifted, the label a feature's value.
    "csv_row_long": ("csv", lambda r: edit_csv(r / tr(3, "csv"), 40, lambda c: c[:5] + ["0.5"] + c[5:]),
                     rf"data\.train_files: {R}/{tr(3, 'csv')}: row 40: 67 columns; the header has 66"),
    "csv_header_only": ("csv", lambda r: (r / tr(1, "csv")).write_text((r / tr(1, "csv")).read_text().split("\n")[0] + "\n"),
                        rf"data\.train_files: {R}/{tr(1, 'csv')}: holds 0 rows of examples, but metadata\.json says "
                        r"examples: 359 for it"),
    "csv_header_differs": ("csv", lambda r: edit_csv(r / tr(3, "csv"), 1, set_cell(2, "g0")),
                           rf"data\.train_files: {R}/{tr(3, 'csv')}'s header differs from {R}/{tr(0, 'csv')}'s"),
    "csv_no_label_column": ("csv", lambda r: edit_csv(r / va("csv"), 1, set_cell(1, "class")),
                            rf"data\.label_column: {R}/{va('csv')} has no column 'label' \(its columns: id, class, "),
    # image folders
    "image_not_an_image": ("image_folder", lambda r: image(r, "train", 4).write_bytes(b"not a png"),
                           r"data\.train_dir: ROOT/train/class_4/\d+\.png: not an image that decodes"),
    "image_empty_file": ("image_folder", lambda r: image(r, "validation", 2).write_bytes(b""),
                         r"data\.validation_dir: ROOT/validation/class_2/\d+\.png: not an image that decodes"),
    # three images: an epoch's last partial batch is dropped, and one image alone could fall in it
    "image_truncated": ("image_folder", lambda r: [truncate_image(image(r, "train", 7, n)) for n in (3, 4, 5)],
                        r"data\.train_dir: ROOT/train/class_7/\d+\.png: not an image that decodes"),
    "image_missing_class_in_validation": ("image_folder", lambda r: shutil.rmtree(r / "validation" / "class_9"),
                                          r"data\.validation_dir: ROOT/validation has classes \['class_0', .*'class_8'\], "
                                          r"but the training images have \['class_0', .*'class_9'\]"),
    "image_of_another_size": ("image_folder", lambda r: image(r, "train", 1).write_bytes(
        tf.io.encode_png(tf.zeros([16, 12, 1], tf.uint8)).numpy()), None),
    "image_in_color": ("image_folder", lambda r: image(r, "train", 5).write_bytes(
        tf.io.encode_png(tf.fill([8, 8, 3], tf.constant(200, tf.uint8))).numpy()), None),
    "image_removed": ("image_folder", lambda r: image(r, "train", 6).unlink(), None),  # counted, and said (below)
    "image_folder_with_a_text_file": ("image_folder", lambda r: (r / "train" / "class_0" / "README.txt").write_text("hi"),
                                      None),
}


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2:len(data) // 2 + 8] = b"\xff" * 8
    path.write_bytes(bytes(data))


def truncate_image(path: Path) -> None:
    # numpy's seeded generator, not tf.random's op seed, whose values depend on what ran before in the process
    pixels = np.random.default_rng(1).integers(0, 255, size=(8, 8, 1), dtype=np.uint8)
    data = tf.io.encode_png(pixels).numpy()
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize("name", list(VARIANTS))
def test_a_broken_file_is_one_line_naming_it_or_reads_through(written, tmp_path, name):
    fmt, breaks, expected = VARIANTS[name]
    root = tmp_path / fmt
    shutil.copytree(written / fmt, root)
    breaks(root)
    if expected is None:  # valid after all: every batch reads
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            source, batches = read_through(data_section(fmt, root))
        assert batches > 0 and source.train_examples > 0
        print(f"{name}\t(valid after all: {source.train_examples} training examples, {batches} batches read)")
        if name == "image_removed":
            assert f"data.train_dir: {root}/train holds 1436 images, but {root}/metadata.json says train_examples: " \
                   "1437; training on the 1436 found" in [str(w.message) for w in said]
        return
    with pytest.raises(ConfigError) as caught:
        read_through(data_section(fmt, root))
    message = str(caught.value)
    assert "\n" not in message
    assert re.fullmatch(expected.replace("ROOT", re.escape(str(root))) + ".*", message), message
    print(f"{name}\t{message}")


def test_a_file_gone_during_training_is_named(written, tmp_path):
    root = tmp_path / "tfrecord"
    shutil.copytree(written / "tfrecord", root)
    cfg = load_config("configs/one_device.yaml", ["data=" + json.dumps(data_section("tfrecord", root))])
    source = load_source(cfg.data, 0)
    (root / va()).unlink()  # after the run checked its files
    with pytest.raises(DATA_ERRORS) as caught:
        sum(1 for _ in build_dataset(cfg, source).validation)
    message = str(data_error(source, caught.value))
    assert message.startswith(f"data.validation_files: {root / va()}: cannot be read ("), message
    print(f"file_removed_during_training\t{message}")


# ---------------------------------------------------------------- a user's pipeline or arrays
USER_VARIANTS = {
    "user_dataset_label_out_of_range": (
        {"fault": "label_out_of_range"},
        r"data\.fn: user_code:broken_dataset, train split: a batch failed a check of the input pipeline: a label of "
        r"2 or more; classes are \[0, 2\)"),
    "user_dataset_nan_in_validation": (
        {"fault": "nan_feature"},
        r"data\.fn: user_code:broken_dataset, validation split: a batch failed a check of the input pipeline: a "
        r"feature that is not finite; features must be finite"),
    "user_dataset_float_labels": (
        {"fault": "float_labels"},
        r"data\.fn: user_code:broken_dataset's class ids must be integer scalars; its train split gives float32 of "
        r"shape \(\)"),
    "user_dataset_empty": ({"fault": "empty"}, r"data\.fn: user_code:broken_dataset, train split: the dataset is empty"),
    "user_dataset_validation_shape": (
        {"fault": "validation_shape"},
        r"data\.fn: user_code:broken_dataset's validation features have shape \(3,\), its training features \(2,\); "
        r"both splits need one shape"),
}
ARRAY_VARIANTS = {
    "user_arrays_negative_label": ("negative_label", r"data\.fn: user_code:broken_arrays's training label -1 "
                                                     r"\(example 17\) is negative; class ids are 0, 1, \.\.\."),
    "user_arrays_inf_feature": ("nan_feature", r"data\.fn: user_code:broken_arrays's training example 42 has a "
                                               r"feature that is not finite; features must be finite"),
    "user_arrays_float_labels": ("float_labels", r"data\.fn: user_code:broken_arrays's training labels must be one "
                                                 r"integer class id per example; got float64 of shape \[160\]"),
}


@pytest.mark.parametrize("name", list(USER_VARIANTS))
def test_a_users_broken_pipeline_is_one_line(name):
    args, expected = USER_VARIANTS[name]
    data = {"kind": "user_dataset", "fn": "user_code:broken_dataset", "args": args, "num_classes": 2}
    with pytest.raises(ConfigError) as caught:
        read_through(data, "train.steps_per_epoch=15")
    assert re.fullmatch(expected, str(caught.value)), str(caught.value)
    print(f"{name}\t{caught.value}")


@pytest.mark.parametrize("name", list(ARRAY_VARIANTS))
def test_a_users_broken_arrays_are_one_line(name):
    fault, expected = ARRAY_VARIANTS[name]
    cfg = load_config(None, ["data.kind=user", "data.fn=user_code:broken_arrays", f"data.args={{fault: {fault}}}"])
    with pytest.raises(ConfigError) as caught:
        load_splits(cfg.data, 0)
    assert re.fullmatch(expected, str(caught.value)), str(caught.value)
    print(f"{name}\t{caught.value}")


# ---------------------------------------------------------------- data write: nothing overwritten or half-written
def test_data_write_refuses_a_file_and_a_full_directory(tmp_path):
    digits = load_splits(Config().data, 0)
    (tmp_path / "a_file").write_text("keep me")
    with pytest.raises(ConfigError, match=rf"^--out: {tmp_path}/a_file is a file; give a new directory \(nothing "
                                          r"was overwritten\)$"):
        write_shards(digits, str(tmp_path / "a_file"), 2)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("keep me")
    with pytest.raises(ConfigError, match=rf"^--out: {tmp_path}/full is not empty; give a new directory"):
        write_shards(digits, str(tmp_path / "full"), 2)
    assert (tmp_path / "a_file").read_text() == (tmp_path / "full" / "x").read_text() == "keep me"


@pytest.mark.parametrize("fmt", ["tfrecord", "image_folder"])
def test_a_write_that_fails_midway_leaves_no_metadata_and_no_shard(tmp_path, monkeypatch, fmt):
    """The third file's write fails: nothing is left that a pattern or a metadata.json would pick up."""
    calls = []
    real = write_module._tfrecord if fmt == "tfrecord" else write_module._images

    def failing(*args):
        calls.append(args)
        if len(calls) == (3 if fmt == "tfrecord" else 2):
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(write_module, "_tfrecord" if fmt == "tfrecord" else "_images", failing)
    with pytest.raises(OSError, match="disk full"):
        write_shards(load_splits(Config().data, 0), str(tmp_path / "out"), 4, fmt)
    assert not (tmp_path / "out").exists()  # nor the directory the write made


# ---------------------------------------------------------------- through the CLI: exit 2, one line, once
def one_error_line(done) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr + done.stdout, done.stderr[-3000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr[-3000:]
    assert "error:" not in done.stdout, done.stdout[-3000:]
    return done.stderr.strip()


@pytest.fixture(scope="module")
def cli_shards(tmp_path_factory):
    """`paradl-tf data write` output (the real CLI), for the runs below to break."""
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path_factory.mktemp("cli") / "digits"
    done = subprocess.run([sys.executable, "-m", "paradl_tf.cli", "data", "write", "--config=configs/one_device.yaml",
                           f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return out


@pytest.mark.timeout(120)
def test_cli_data_write_onto_a_file_is_one_line(cli, tmp_path):
    (tmp_path / "taken").write_text("")
    line = one_error_line(cli("data", "write", "--config=configs/one_device.yaml", f"--out={tmp_path / 'taken'}",
                              timeout=120))
    assert line == f"error: --out: {tmp_path / 'taken'} is a file; give a new directory (nothing was overwritten)"
    print(f"cli_data_write_onto_a_file\t{line}")


@pytest.mark.timeout(180)
def test_cli_mirrored_replicas_meet_a_bad_label_and_say_one_line(cli, tmp_path, cli_shards):
    """One replica's pipeline fails its check while the other waits in the all-reduce: TensorFlow's C++ abort
    line for that stays out of the terminal, the run's own line comes once."""
    root = tmp_path / "tfrecord"
    shutil.copytree(cli_shards, root)
    edit_record(root / tr(1), 50, set_label(12))
    line = one_error_line(cli("train", "--config=configs/sync_mirrored.yaml", "--set",
                              "data=" + json.dumps(data_section("tfrecord", root)), "--set", f"output_dir={tmp_path}/out",
                              "--set", "devices.count=2", "--set", "strategy.devices=2", timeout=180))
    assert line == (f"error: data.train_files: {root / tr(1)}: record 50: 'y' is 12, outside [0, 10) "
                    "(data.num_classes: 10)")
    print(f"cli_mirrored_label_out_of_range\t{line}")


@pytest.mark.timeout(240)
def test_cli_multiworker_reports_a_workers_data_error_once_naming_it(cli, tmp_path, cli_shards):
    root = tmp_path / "tfrecord"
    shutil.copytree(cli_shards, root)
    edit_record(root / tr(2), 90, set_label(12))  # file 2: worker 0's (file sharding: 0, 2 and 1, 3)
    done = cli("train", "--config=configs/tfrecord_multiworker.yaml", "--set",
               "data=" + json.dumps(data_section("tfrecord", root)), "--set", f"output_dir={tmp_path / 'out'}",
               "--set", "train.epochs=2", timeout=240)
    line = one_error_line(done)
    assert line == (f"error: worker:0: data.train_files: {root / tr(2)}: record 90: 'y' is 12, outside [0, 10) "
                    "(data.num_classes: 10)")
    print(f"cli_multiworker_label_out_of_range\t{line}")


# ---------------------------------------------------------------- a diverging run stops at its step
def test_a_non_finite_loss_raises_at_its_step_keeps_the_backup_and_a_fixed_run_resumes(tmp_path):
    """Keras 3, in-process: epoch 2's first batch is NaN. fit stops there with the epoch and step, the backup of
    epoch 1 stays, and a rerun on fixed data resumes at epoch 2."""
    import keras

    from paradl_tf.errors import TrainingDiverged
    from paradl_tf.runs.fit import stop_on_nan

    cfg = load_config(None, [f"checkpoint.dir={tmp_path / 'backup'}"])
    x = np.random.default_rng(0).random((40, 4), dtype=np.float32)
    y = np.arange(40, dtype=np.int32) % 2

    def fit(poison: bool, epochs: int = 3):
        bad = x.copy()
        bad[20:] = np.nan if poison else bad[20:]
        data = tf.data.Dataset.from_tensor_slices((bad, y)).batch(4).repeat()  # 5 steps per epoch
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        callbacks = [stop_on_nan(keras, cfg, 5), keras.callbacks.BackupAndRestore(cfg.checkpoint.dir)]
        return model.fit(data, steps_per_epoch=5, epochs=epochs, callbacks=callbacks, verbose=0)

    with pytest.raises(TrainingDiverged) as caught:
        fit(poison=True)
    assert (caught.value.epoch, caught.value.step) == (2, 1)
    assert str(caught.value).startswith("train: the loss became nan at epoch 2, step 1 of 5: the run stopped there "
                                        "and did not finish (results.json says so); its last backup in checkpoint.dir=")
    print(f"keras3_nan_loss_in_epoch_2\t{caught.value}")
    assert any((tmp_path / "backup").iterdir())  # epoch 1's backup is kept
    history = fit(poison=False)
    assert len(history.history["loss"]) == 2  # resumed at epoch 2 of 3
    assert not (tmp_path / "backup").exists()  # a finished run removes its backup


@pytest.mark.timeout(180)
def test_cli_non_finite_loss_exits_2_naming_the_step_and_results_say_unfinished(cli, tmp_path, cli_shards):
    """Features of 1e30 in one file are finite, and drive the loss to inf or NaN under MirroredStrategy: the run
    stops at that step, exit 2, and results.json says it did not finish."""
    root = tmp_path / "tfrecord"
    shutil.copytree(cli_shards, root)
    huge = records(root / tr(3))
    for example in huge:
        example.features.feature["x"].float_list.value[:] = [1e30] * 64
    rewrite(root / tr(3), huge)
    out = tmp_path / "out"
    line = one_error_line(cli("train", "--config=configs/sync_mirrored.yaml", "--set",
                              "data=" + json.dumps(data_section("tfrecord", root)), "--set", f"output_dir={out}",
                              "--set", "devices.count=2", "--set", "strategy.devices=2", "--set", "train.epochs=3",
                              timeout=180))
    assert re.fullmatch(r"error: train: the loss became (nan|inf) at epoch 1, step \d+ of \d+: the run stopped there "
                        r"and did not finish \(results\.json says so\); fix the data \(or lower train\.learning_rate\); "
                        r"with checkpoint\.dir set, a rerun resumes from the last backup", line), line
    results = json.loads((out / "results.json").read_text())
    assert results["finished"] is False and results["stopped"] == line.removeprefix("error: ")
    assert results["stopped_at"]["epoch"] == 1 and results["stopped_at"]["step"] >= 1
    print(f"cli_nan_loss\t{line}")
