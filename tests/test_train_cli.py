"""End to end: the CLI trains the default config; plan describes a run without training; the Python API trains."""

import json

import pytest
import yaml

import paradl_tf
from equivalence import max_abs_diff  # tests/ is on sys.path under pytest

FOUNDATION_KEYS = {
    "strategy", "keras", "replicas", "devices", "global_batch_size", "epochs", "history",
    "val_accuracy", "examples_per_sec", "wall_seconds",
}


@pytest.mark.timeout(420)
def test_cli_trains_the_default_config(cli, tmp_path):
    out = tmp_path / "run"
    proc = cli("train", "--config=configs/sync_mirrored.yaml", f"--set=output_dir={out}", "--set=train.verbose=2",
               timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"results: {out}/results.json" in proc.stdout
    results = json.loads((out / "results.json").read_text())
    assert FOUNDATION_KEYS <= results.keys()
    assert results["strategy"] == "mirrored" and results["keras"] == "keras3"
    assert results["replicas"] == 4 and len(results["devices"]) == 4
    assert results["global_batch_size"] == 64 and results["per_replica_batch_size"] == 16
    assert results["epochs"] == 15 and len(results["history"]["val_accuracy"]) == 15
    assert results["val_accuracy"] >= 0.95
    assert results["history"]["loss"][-1] < results["history"]["loss"][0]
    assert results["examples_per_sec"] > 0 and results["wall_seconds"] >= results["fit_seconds"] > 0
    written = yaml.safe_load((out / "config.yaml").read_text())
    assert written["strategy"]["kind"] == "mirrored" and written["output_dir"] == str(out)


@pytest.mark.timeout(200)
def test_cli_plan_text_and_json(cli):
    proc = cli("plan", "--config=configs/sync_mirrored.yaml", "--set=strategy.devices=2", timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    assert "strategy: mirrored (MirroredStrategy), 2 replica(s)" in text
    assert "batch: global 64, per replica 32" in text
    assert "strategy.devices" in text and "[--set]" in text and "[file]" in text and "[default]" in text
    assert "hidden_0/kernel" in text and "8x128" not in text and "64x128" in text
    proc = cli("plan", "--config=configs/sync_mirrored.yaml", "--json", timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(proc.stdout)
    assert plan["replicas"] == 4 and plan["per_replica_batch_size"] == 16 and plan["keras"] == "keras3"
    kernel = next(v for v in plan["variables"] if v["name"].endswith("hidden_0/kernel"))
    assert kernel["bytes"] == 64 * 128 * 4 and len(kernel["devices"]) == 4  # mirrored: a copy per replica
    assert plan["provenance"]["train.epochs"] == "file" and plan["provenance"]["train.seed"] == "file"


def test_plan_shows_one_copy_per_replica_in_process():
    cfg = paradl_tf.load_config("configs/sync_mirrored.yaml", ["strategy.devices=2"])
    p = paradl_tf.plan(cfg)
    devices = {tuple(v["devices"]) for v in p["variables"]}
    assert devices == {("/job:localhost/replica:0/task:0/device:CPU:0", "/job:localhost/replica:0/task:0/device:CPU:1")}
    assert p["parameter_bytes"] == 4 * (64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10)


@pytest.mark.parametrize("keras", ["keras3", "tf_keras"])
def test_python_api_train_writes_results(tmp_path, keras):
    cfg = paradl_tf.load_config("configs/sync_mirrored.yaml", [
        f"output_dir={tmp_path}", "train.epochs=2", "train.verbose=0", "strategy.devices=2", f"keras={keras}",
        "train.tensorboard=true",
    ])
    results = paradl_tf.train(cfg)
    assert results["keras"] == keras and results["replicas"] == 2
    assert json.loads((tmp_path / "results.json").read_text())["val_accuracy"] == results["val_accuracy"]
    assert any((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))


def test_steps_per_execution_with_replicas_runs_on_tf_keras(tmp_path):
    cfg = paradl_tf.load_config("configs/mirrored_tabular.yaml", [
        f"output_dir={tmp_path}", "train.epochs=1", "train.verbose=0", "data.train_examples=1024",
        "devices.count=4", "strategy.devices=2",  # this process has 4 logical CPUs
    ])
    results = paradl_tf.train(cfg)
    assert results["keras"] == "tf_keras" and results["replicas"] == 2
    assert results["steps_per_epoch"] == 4


def test_default_strategy_trains_and_names_its_device(tmp_path):
    cfg = paradl_tf.load_config("configs/default_strategy.yaml", [
        f"output_dir={tmp_path}", "devices.count=4", "train.epochs=1", "train.verbose=0", "train.steps_per_epoch=3"])
    results = paradl_tf.train(cfg)
    assert results["strategy"] == "default" and results["replicas"] == 1
    assert results["devices"] == ["/device:CPU:0"]


def _keras3_weights(path):
    import keras
    import numpy as np

    return [np.asarray(w) for w in keras.models.load_model(path, compile=False).get_weights()]


@pytest.mark.timeout(300)
def test_killed_mirrored_run_resumes_from_its_backup_to_the_same_weights(tmp_path, equivalence):
    """SIGKILL a MirroredStrategy run after a few epochs; the same command resumes at the epoch after the last
    backup, the data skip the steps done, and the weights equal an uninterrupted run's (op determinism on)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    common = ["--config=configs/sync_mirrored.yaml", "--set=strategy.devices=2", "--set=devices.count=2",
              "--set=train.epochs=30", "--set=train.deterministic=true", "--set=train.verbose=0",
              "--set=checkpoint.export=true", f"--set=train.seed={equivalence.seed(0)}"]
    run = [*common, f"--set=output_dir={tmp_path / 'run'}", f"--set=checkpoint.dir={tmp_path / 'backup'}"]
    argv = [sys.executable, "-m", "paradl_tf.cli", "train"]
    proc = subprocess.Popen([*argv, *run], cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    metadata = tmp_path / "backup" / "training_metadata.json"
    deadline = time.monotonic() + 200
    try:
        while True:  # kill it once 3 epochs are backed up: preempted mid-run
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            try:
                if json.loads(metadata.read_text())["epoch"] >= 3:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert not (tmp_path / "run" / "results.json").exists()

    done = subprocess.run([*argv, *run], cwd=root, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((tmp_path / "run" / "results.json").read_text())
    steps = resumed["steps_per_epoch"]
    assert resumed["resumed_from_step"] >= 3 * steps and resumed["resumed_from_step"] % steps == 0, resumed
    assert resumed["resumed_from_step"] + resumed["steps_this_run"] == 30 * steps
    assert not (tmp_path / "backup").exists()  # removed once the run finished

    reference = subprocess.run([*argv, *common, f"--set=output_dir={tmp_path / 'ref'}"], cwd=root,
                               capture_output=True, text=True, timeout=200)
    assert reference.returncode == 0, reference.stderr[-3000:]
    # Bit for bit: op determinism, the same steps on the same batches from exactly restored variables. No rounding
    # difference exists for a ReLU to amplify, so the check holds on any CPU and catches any lost or repeated step.
    equivalence.check(0.0, weights=max_abs_diff(_keras3_weights(tmp_path / "run" / "model.keras"),
                                                _keras3_weights(tmp_path / "ref" / "model.keras")))
