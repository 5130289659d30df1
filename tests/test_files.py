"""Data from files (paradl_tf.files): shards written and read back, sharding that gives every example once,
training to the in-memory bars under every strategy, resuming over files, and each bad input's one line.

Every test that starts processes has a timeout."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from paradl_tf import cluster as cl
from paradl_tf.builders.data import Splits, build_dataset, load_splits
from paradl_tf.config import load_config
from paradl_tf.config.schema import Config
from paradl_tf.errors import ConfigError
from paradl_tf.files.sources import load_file_source, shard_plan
from paradl_tf.files.write import write_shards

ROOT = Path(__file__).resolve().parents[1]
ISOLATION = cl.isolation_available()
needs_isolation = pytest.mark.skipif(ISOLATION is not None, reason=f"no private network namespace: {ISOLATION}")


def _synthetic(train=2048, val=256, features=16, classes=4, seed=0) -> Splits:
    cfg = Config.model_validate({"data": {"kind": "synthetic_tabular", "features": features, "num_classes": classes,
                                          "train_examples": train, "validation_examples": val}})
    return load_splits(cfg.data, seed)


def _tfrecord_data(root: Path, **extra) -> dict:
    return {"kind": "tfrecord", "train_files": f"{root}/train-*", "validation_files": f"{root}/validation-*", **extra}


# ---------------------------------------------------------------- written and read back
@pytest.mark.parametrize("fmt", ["tfrecord", "csv", "image_folder"])
def test_shards_read_back_the_examples_written(tmp_path, fmt):
    """Every example comes back once with its features (images: to 8 bits) and label, found by its id."""
    digits = load_splits(Config().data, 0)
    meta = write_shards(digits, str(tmp_path / "s"), 3, fmt, 2, "digits")
    assert meta["train_examples"] == len(digits.x_train) and meta["num_classes"] == 10
    if fmt == "image_folder":
        data = {"kind": "image_folder", "train_dir": f"{tmp_path}/s/train", "validation_dir": f"{tmp_path}/s/validation",
                "image_size": [8, 8], "channels": 1}
    else:
        data = {"kind": fmt, "train_files": f"{tmp_path}/s/train-*", "validation_files": f"{tmp_path}/s/validation-*"}
    source = load_file_source(Config.model_validate({"data": data}).data)
    assert source.input_shape == (8, 8, 1) and source.num_classes == 10
    assert source.train_examples == len(digits.x_train) and source.validation.examples == len(digits.x_val)
    plan = source.plan(1, 7, 1)
    batches = source.train_pipeline(plan, 0, 7, seed=0, epoch_batches=plan.batches_per_pass, with_ids=True)
    x, y, ids = (np.concatenate(parts) for parts in zip(*batches.as_numpy_iterator()))
    if fmt == "image_folder":  # ids are the images' order in the folder: map them back through the file names
        names = [int(Path(f).stem) for f in source.train.files]
        ids = np.array([names[i] for i in ids])
    assert len(ids) == len(set(ids)) == plan.batches_per_pass * 7
    atol = 0.5 / 255 + 1e-6 if fmt == "image_folder" else 1e-6
    np.testing.assert_allclose(x, digits.x_train[ids], atol=atol)
    np.testing.assert_array_equal(y, digits.y_train[ids])


def test_data_write_cli_writes_shards_and_metadata(cli, tmp_path):
    out = tmp_path / "shards"
    done = cli("data", "write", "--config=configs/sync_mirrored.yaml", f"--out={out}", "--shards=3", timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "metadata.json", "train-00000-of-00003.tfrecord", "train-00001-of-00003.tfrecord",
        "train-00002-of-00003.tfrecord", "validation-00000-of-00001.tfrecord"]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["feature_shape"] == [8, 8, 1] and sum(meta["examples"].values()) == 1797
    again = cli("data", "write", "--config=configs/sync_mirrored.yaml", f"--out={out}", timeout=120)
    assert again.returncode == 2 and again.stderr == f"error: --out: {out} is not empty; give a new directory " \
                                                     "(nothing was overwritten)\n"


@pytest.mark.parametrize("fmt", ["tfrecord", "image_folder"])
def test_a_write_that_fails_leaves_nothing_not_even_the_directory_it_made(tmp_path, monkeypatch, fmt):
    import paradl_tf.files.write as write

    def interrupted(path, written, write_file):  # the first file is whole; the second never is
        if written:
            raise KeyboardInterrupt
        write_file(path)
        written.append(path)

    monkeypatch.setattr(write, "_write_whole", interrupted)
    digits = load_splits(Config().data, 0)
    for out in (tmp_path / "new", tmp_path / "given"):
        if out.name == "given":
            out.mkdir()  # an empty directory the user made stays, empty
        with pytest.raises(KeyboardInterrupt):
            write_shards(digits, str(out), 3, fmt, 1, "digits")
        assert (sorted(out.iterdir()) == []) if out.name == "given" else not out.exists()


# ---------------------------------------------------------------- sharding
def test_shard_plan_policies():
    from paradl_tf.files.formats import FileSplit

    split = FileSplit(tuple(f"f{i}" for i in range(5)), (100, 100, 100, 100, 60))
    file = shard_plan(split, 2, "auto", batch=16, fed=1, key="data.train_files")
    assert file.policy == "file" and file.files == (("f0", "f2", "f4"), ("f1", "f3"))
    assert file.examples == (260, 200) and file.batches_per_pass == 200 // 16  # the smaller share sets the steps
    data = shard_plan(split, 8, "auto", batch=4, fed=2, key="data.train_files")
    assert data.policy == "data" and data.files == (split.files,) * 8 and data.examples == (58,) * 4 + (57,) * 4
    assert data.batches_per_pass == 2 * (57 // 8)
    assert data.warning.startswith("data.train_files: 5 file(s) for 8 input pipelines: sharding by example (data)")
    with pytest.raises(ConfigError, match=r"^data\.shard_policy: file needs at least as many files as input "
                                          r"pipelines, but data\.train_files has 5 file\(s\) for 8 pipelines"):
        shard_plan(split, 8, "file", batch=4, fed=1, key="data.train_files")


@pytest.mark.parametrize("shards,pipelines,fed", [(4, 2, 1), (4, 4, 1), (1, 2, 1), (4, 2, 2)])
def test_every_example_exactly_once_per_epoch_across_pipelines(tmp_path, shards, pipelines, fed):
    """Synchronous training: the pipelines' batches of one pass hold every example exactly once (2048 examples
    split evenly), whatever the policy (4 shards: file; 1 shard for 2 pipelines: data); the next pass holds them
    all again, in another order."""
    write_shards(_synthetic(), str(tmp_path / "s"), shards, "tfrecord", 1, "synthetic")
    source = load_file_source(Config.model_validate({"data": _tfrecord_data(tmp_path / "s")}).data)
    global_batch = 64
    per_replica = global_batch // (pipelines * fed)
    plan = source.plan(pipelines, per_replica, fed)
    assert plan.policy == ("file" if shards >= pipelines else "data")
    steps = plan.batches_per_pass // fed
    assert steps * global_batch == 2048
    passes = []
    for k in range(2):
        seen = []
        for i in range(pipelines):
            stream = source.train_pipeline(plan, i, per_replica, seed=3, start_batch=k * plan.batches_per_pass,
                                           with_ids=True)
            batches = list(stream.take(plan.batches_per_pass).as_numpy_iterator())
            assert all(len(ids) == per_replica for _, _, ids in batches)
            seen.append(np.concatenate([ids for _, _, ids in batches]))
        everything = np.concatenate(seen)
        assert np.array_equal(np.sort(everything), np.arange(2048))  # each example exactly once this pass
        passes.append(everything)
    assert not np.array_equal(passes[0], passes[1])


def test_a_resumed_stream_sees_what_the_uninterrupted_one_saw(tmp_path):
    write_shards(_synthetic(), str(tmp_path / "s"), 4, "tfrecord", 1, "synthetic")
    source = load_file_source(Config.model_validate({"data": _tfrecord_data(tmp_path / "s")}).data)
    plan = source.plan(2, 32, 1)
    whole = [ids for _, _, ids in source.train_pipeline(plan, 1, 32, 5, with_ids=True).take(70).as_numpy_iterator()]
    resumed = [ids for _, _, ids in source.train_pipeline(plan, 1, 32, 5, start_batch=45, with_ids=True)
               .take(25).as_numpy_iterator()]
    assert all(np.array_equal(a, b) for a, b in zip(whole[45:], resumed)) and len(resumed) == 25


def test_the_training_stream_from_files_is_declared_infinite(digits_shards):
    # Not unknown (a flat_map's): MultiWorkerMirrored reads an unknown one with an all-reduce more per step.
    data = build_dataset(Config.model_validate({"data": _tfrecord_data(digits_shards)}))
    assert data.train_stream.cardinality().numpy() == -1  # tf.data.INFINITE_CARDINALITY
    assert data.train.cardinality().numpy() == data.steps_per_epoch


def test_plan_shows_each_workers_files(cli, digits_shards):
    data = json.dumps(_tfrecord_data(digits_shards))
    done = cli("plan", "--config=configs/sync_multiworker.yaml", "--set", f"data={data}", timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("input: tfrecord"))
    assert "shard policy file over 2 input pipeline(s)" in lines[start]
    assert re.match(r"  pipeline 0: 2 file\(s\), 719 examples: .*train-00000-of-00004.tfrecord, "
                    r".*train-00002-of-00004.tfrecord$", lines[start + 1]), lines[start + 1]
    assert re.match(r"  pipeline 1: 2 file\(s\), 718 examples: .*train-00001-of-00004.tfrecord, "
                    r".*train-00003-of-00004.tfrecord$", lines[start + 2]), lines[start + 2]


# ---------------------------------------------------------------- training to the bars
@pytest.mark.parametrize("fmt", ["tfrecord", "csv", "image_folder"])
def test_mirrored_trains_digits_from_files_to_the_bar(tmp_path, fmt):
    import paradl_tf as pdl

    write_shards(load_splits(Config().data, 0), str(tmp_path / "s"), 4, fmt, 1, "digits")
    if fmt == "image_folder":
        data = {"kind": "image_folder", "train_dir": f"{tmp_path}/s/train", "validation_dir": f"{tmp_path}/s/validation",
                "image_size": [8, 8], "channels": 1}
    else:
        data = _tfrecord_data(tmp_path / "s") | {"kind": fmt}
    cfg = Config.model_validate({"devices": {"count": 4}, "strategy": {"kind": "mirrored", "devices": 2}, "data": data,
                                 "model": {"kind": "mlp", "hidden": [128, 64]}, "output_dir": str(tmp_path / "out"),
                                 "train": {"epochs": 12, "learning_rate": 0.003, "verbose": 0}})
    r = pdl.train(cfg)
    assert r["val_accuracy"] >= 0.95, r["history"]["val_accuracy"]
    assert r["input"]["source"] == fmt and r["input"]["shard_policy"] == "file" and r["input"]["service"] is None
    assert r["input"]["pipelines"]["pipelines"] == 2 and r["steps_per_epoch"] == 22


@needs_isolation
@pytest.mark.timeout(240)
def test_multiworker_trains_from_tfrecord_shards_with_file_sharding(cli, tmp_path, digits_shards):
    data = json.dumps(_tfrecord_data(digits_shards))
    done = cli("train", "--config=configs/tfrecord_multiworker.yaml", "--set", f"data={data}",
               "--set", f"output_dir={tmp_path}", timeout=220)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["val_accuracy"] >= 0.95, r["history"]["val_accuracy"]
    assert r["input"]["shard_policy"] == "file" and r["input"]["files"] == 4
    assert [p["files"] for p in r["input"]["pipelines"]["per_pipeline"]] == [2, 2]


@needs_isolation
@pytest.mark.timeout(240)
def test_parameter_servers_train_from_tfrecord_shards(cli, tmp_path, digits_shards):
    data = json.dumps(_tfrecord_data(digits_shards))
    done = cli("train", "--config=configs/async_ps.yaml", "--set", f"data={data}", "--set", f"output_dir={tmp_path}",
               timeout=220)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["val_accuracy"] >= 0.90, r["history"]["val_accuracy"]
    assert r["input"]["shard_policy"] == "file" and r["input"]["pipelines"]["pipelines"] == 2


PS_VISITS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    from paradl_tf import cluster as cl
    from paradl_tf.config.schema import Config
    from paradl_tf.files.sources import load_file_source
    from paradl_tf.runs.parameter_server import file_worker_dataset_fn

    cl.loopback_up()
    spec = cl.local_cluster_spec({"chief": 1, "worker": 2, "ps": 1})
    cl.start_in_process_servers(spec, private_network="required")
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(spec), task_type="chief", task_id=0, rpc_layer="grpc")
    strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
    coordinator = tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)
    source = load_file_source(Config.model_validate({"data": json.loads(sys.argv[1])}).data)
    fn = file_worker_dataset_fn(source, 2, 32, seed=0, with_ids=True)
    dataset = coordinator.create_per_worker_dataset(
        lambda: strategy.distribute_datasets_from_function(fn))
    iterator = iter(dataset)

    @tf.function
    def step(it):
        x, y, ids = next(it)
        return tf.distribute.coordinator.experimental_get_current_worker_index(), ids

    steps = 2 * source.train_examples // 32
    results = [coordinator.schedule(step, args=(iterator,)) for _ in range(steps)]
    coordinator.join()
    rows = [(int(w), [int(i) for i in ids]) for w, ids in (r.fetch() for r in results)]
    print("RESULT " + json.dumps({"rows": rows, "files": [list(f) for f in fn.plan.files]}))
""")


@needs_isolation
@pytest.mark.timeout(200)
def test_parameter_server_workers_read_their_own_files_and_cover_the_data(tmp_path):
    """Each worker's batches come from its own files only (the worker index TensorFlow gives its dataset
    function); over two passes' worth of steps, dispatched to whichever worker is free, every example was read at
    least once. The count of examples read more than once is reported."""
    write_shards(_synthetic(train=1024), str(tmp_path / "s"), 4, "tfrecord", 1, "synthetic")
    script = tmp_path / "visits.py"
    script.write_text(PS_VISITS)
    data = json.dumps(_tfrecord_data(tmp_path / "s"))
    done = subprocess.run(cl.isolated([sys.executable, str(script), data]), cwd=ROOT, capture_output=True, text=True,
                          timeout=180)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(line.removeprefix("RESULT "))
    per_file = 1024 // 4
    owned = {w: {int(Path(f).name[6:11]) for f in files} for w, files in enumerate(out["files"])}
    assert owned == {0: {0, 2}, 1: {1, 3}}
    visits = np.zeros(1024, int)
    for worker, ids in out["rows"]:
        assert {i // per_file for i in ids} <= owned[worker], (worker, sorted({i // per_file for i in ids}))
        visits[ids] += 1
    assert {w for w, _ in out["rows"]} == {0, 1}
    print(f"parameter servers, {len(out['rows'])} steps: every example read at least once: {(visits >= 1).all()}, "
          f"{int((visits > 1).sum())} read more than once")
    assert (visits >= 1).all()


# Resuming over files: tests/test_multiworker.py's SIGKILL test trains from TFRecord shards, kills a worker and
# checks that the rerun ends with the uninterrupted run's weights.


# ---------------------------------------------------------------- bad input, one line each
def _source(data: dict):
    return load_file_source(Config.model_validate({"data": data}).data)


def test_a_pattern_that_matches_no_file(tmp_path):
    with pytest.raises(ConfigError, match=rf"^data\.train_files: '{tmp_path}/none-\*' matches no file$"):
        _source({"kind": "tfrecord", "train_files": f"{tmp_path}/none-*", "validation_fraction": 0.2,
                 "feature_shape": [4], "num_classes": 2})


def test_metadata_that_disagrees_with_the_config(digits_shards):
    with pytest.raises(ConfigError, match=rf"^data\.feature_shape: \[64\] disagrees with {digits_shards}/metadata\.json, "
                                          r"which says feature_shape: \[8, 8, 1\]$"):
        _source(_tfrecord_data(digits_shards, feature_shape=[64]))


def test_a_record_without_the_feature_is_named_before_training(tmp_path):
    path = tmp_path / "train-0.tfrecord"
    with tf.io.TFRecordWriter(str(path)) as w:
        for i in range(4):
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "pixels": tf.train.Feature(float_list=tf.train.FloatList(value=[0.0] * 4)),
                "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % 2]))})).SerializeToString())
    with pytest.raises(ConfigError, match=rf"^data\.train_files: {path}: a record lacks a feature the spec needs: "
                                          r"record 0 has no 'x' \(it has pixels, y; "):
        _source({"kind": "tfrecord", "train_files": str(path), "validation_files": str(path),
                 "feature_shape": [4], "num_classes": 2})


def test_a_truncated_shard_fails_training_with_one_line_naming_it(tmp_path, cli):
    write_shards(load_splits(Config().data, 0), str(tmp_path / "s"), 4, "tfrecord", 1, "digits")
    bad = tmp_path / "s" / "train-00002-of-00004.tfrecord"
    bad.write_bytes(bad.read_bytes()[:-100])
    done = cli("train", "--config=configs/one_device.yaml", "--set", "data=" + json.dumps(_tfrecord_data(tmp_path / "s")),
               "--set", f"output_dir={tmp_path / 'out'}", "--set", "train.epochs=2", timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert re.match(rf"error: data\.train_files: {bad}: a corrupt or truncated record", done.stderr), done.stderr


def test_an_image_that_does_not_decode(tmp_path):
    rng = np.random.default_rng(0)
    images = Splits(rng.random((64, 4, 4, 1), dtype=np.float32), np.arange(64, dtype=np.int32) % 4,
                    rng.random((16, 4, 4, 1), dtype=np.float32), np.arange(16, dtype=np.int32) % 4, num_classes=4)
    write_shards(images, str(tmp_path / "s"), 1, "image_folder", 1, "random")
    bad = sorted((tmp_path / "s" / "train" / "class_3").iterdir())[5]
    bad.write_bytes(b"not a png")
    data = {"kind": "image_folder", "train_dir": f"{tmp_path}/s/train", "validation_dir": f"{tmp_path}/s/validation",
            "image_size": [4, 4], "channels": 1}
    source = _source(data)  # the first image decodes: the bad one is met while training
    from paradl_tf.files.sources import explain

    assert explain(source, RuntimeError()).startswith(f"data.train_dir: {bad}: not an image that decodes")


def test_a_csv_without_the_label_column(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("a,b,c\n1,2,0\n")
    with pytest.raises(ConfigError, match=rf"^data\.label_column: {path} has no column 'label' \(its columns: a, b, c\)$"):
        _source({"kind": "csv", "train_files": str(path), "validation_files": str(path), "num_classes": 2})


def test_csv_ignored_columns_may_hold_text_and_blanks(tmp_path):
    """Every column is read (so a row with a cell too many is refused, tests/test_data_checks.py): the ignored ones,
    text or empty, are read as strings and dropped; the features and labels are the right columns."""
    path = tmp_path / "train.csv"
    path.write_text('note,x0,label,id,x1\n"a, quoted",0.5,1,7,2.5\n,1.5,0,8,3.5\n')
    source = _source({"kind": "csv", "train_files": str(path), "validation_files": str(path), "num_classes": 2,
                      "ignore_columns": ["id", "note"]})
    x, y = zip(*source.validation_pipeline(1, 0, 2).as_numpy_iterator())
    assert np.asarray(x[0]).tolist() == [[0.5, 2.5], [1.5, 3.5]] and np.asarray(y[0]).tolist() == [1, 0]


def test_empty_files_are_refused_not_trained_on(tmp_path):
    (tmp_path / "train-0.tfrecord").write_bytes(b"")
    with pytest.raises(ConfigError, match=rf"^data\.train_files: {tmp_path}/train-0\.tfrecord is empty \(0 bytes\)"):
        _source({"kind": "tfrecord", "train_files": f"{tmp_path}/train-*", "validation_files": f"{tmp_path}/train-*",
                 "feature_shape": [4], "num_classes": 2})


def test_file_sharding_asked_for_with_fewer_files_than_workers(cli, digits_shards):
    data = json.dumps(_tfrecord_data(digits_shards, shard_policy="file"))
    done = cli("plan", "--config=configs/sync_multiworker.yaml", "--set", f"data={data}", "--set", "cluster.workers=5", "--set", "train.global_batch_size=80",
               timeout=120)
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: data.shard_policy: file needs at least as many files as input pipelines, "
                                  "but data.train_files has 4 file(s) for 5 pipelines")


def test_validation_is_given_one_way():
    with pytest.raises(ValueError, match=r"data: give exactly one of data\.validation_files and "
                                         r"data\.validation_fraction"):
        Config.model_validate({"data": {"kind": "tfrecord", "train_files": "x/*"}})


def test_a_users_tf_data_pipeline_trains_under_mirrored(tmp_path):
    import paradl_tf as pdl

    cfg = pdl.load_config("configs/user_code.yaml", [
        "data={kind: user_dataset, fn: 'paradl_tf.examples:moons_dataset', args: {examples: 2000}, num_classes: 2}",
        "devices.count=4", "strategy.devices=2", "train.steps_per_epoch=25", "train.epochs=6", "train.verbose=0",
        f"output_dir={tmp_path}"])
    r = pdl.train(cfg)
    assert r["val_accuracy"] >= 0.95, r["history"]["val_accuracy"]
    assert r["input"]["source"] == "user_dataset" and r["replicas"] == 2


def test_validation_fraction_holds_out_the_last_files(digits_shards, tmp_path):
    source = _source({"kind": "tfrecord", "train_files": f"{digits_shards}/train-*", "validation_fraction": 0.25})
    assert [Path(f).name for f in source.validation.files] == ["train-00003-of-00004.tfrecord"]
    assert len(source.train.files) == 3 and source.train_examples + source.validation.examples == 1437
    write_shards(load_splits(Config().data, 0), str(tmp_path / "s"), 1, "image_folder", 1, "digits")
    images = _source({"kind": "image_folder", "train_dir": f"{tmp_path}/s/train", "validation_fraction": 0.2,
                      "image_size": [8, 8], "channels": 1})
    assert sorted(set(images.validation.labels)) == list(range(10))  # every class keeps a share, per class
    assert images.train_examples + images.validation.examples == 1437
    with pytest.raises(ConfigError, match=r"^data\.validation_fraction: data\.train_files has 1 file\(s\); holding "
                                          r"out 1 leaves none to train on"):
        _source({"kind": "tfrecord", "train_files": f"{digits_shards}/train-00000*", "validation_fraction": 0.5})
