"""train.precision: the policy chosen (auto included), the dtypes a run really uses, accuracy, no leaked policy;
devices.threads: applied before TensorFlow starts, and passed on to cluster tasks."""

import json
import subprocess
import sys

import numpy as np
import pytest

import paradl_tf
from paradl_tf.builders import precision as pr
from paradl_tf.errors import ConfigError

DIGITS = ["train.epochs=15", "train.verbose=0", "strategy.devices=2"]


def test_precision_values_and_the_impossible_combination():
    assert paradl_tf.load_config(None, ["train.precision=auto"]).train.precision == "auto"
    with pytest.raises(ConfigError, match=r"train\.precision: input should be 'float32', 'mixed_bfloat16', "):
        paradl_tf.load_config(None, ["train.precision=bfloat16"])
    with pytest.raises(ConfigError, match=r"mixed_float16 needs loss scaling, which Keras does not support under "
                                          r"ParameterServerStrategy.*Received: train\.precision='mixed_float16'$"):
        paradl_tf.load_config("configs/async_ps.yaml", ["train.precision=mixed_float16"])


@pytest.mark.parametrize("flags, capability, device, policy", [
    ({"avx512_bf16", "avx2"}, None, "CPU", "mixed_bfloat16"),
    ({"avx2"}, None, "CPU", "float32"),
    (set(), (8, 0), "GPU", "mixed_bfloat16"),
    (set(), (7, 5), "GPU", "mixed_float16"),
    (set(), (6, 1), "GPU", "float32"),
    (set(), None, "GPU", "float32"),
])
def test_auto_picks_by_hardware_and_says_why(monkeypatch, flags, capability, device, policy):
    monkeypatch.setattr(pr, "_cpu_flags", lambda: flags)
    monkeypatch.setattr(pr, "_gpu_capability", lambda: capability)
    chosen = pr.resolve_precision("auto", device)
    assert chosen.policy == policy and chosen.why.startswith("auto: ")


def test_float16_on_a_cpu_without_it_runs_and_says_it_is_emulated(monkeypatch):
    monkeypatch.setattr(pr, "_cpu_flags", lambda: {"avx512_bf16"})
    chosen = pr.resolve_precision("mixed_float16", "CPU")
    assert chosen.loss_scaling and "emulates" in chosen.why


@pytest.mark.parametrize("keras", ["keras3", "tf_keras"])
def test_dtypes_are_what_plan_says_and_the_policy_does_not_leak(keras):
    import keras as keras3
    import tf_keras

    cfg = paradl_tf.load_config("configs/sync_mirrored.yaml", ["train.precision=mixed_bfloat16", f"keras={keras}",
                                                               "strategy.devices=2"])
    job = paradl_tf.prepare(cfg)
    shown = paradl_tf.plan(cfg)["precision"]
    assert shown["policy"] == "mixed_bfloat16" and shown["variable_dtypes"] == ["float32"]
    assert shown["activation_dtype"] == "bfloat16" and shown["output_dtype"] == "float32"
    assert {pr.dtype_name(v.dtype) for v in job.model.weights} == {"float32"}
    hidden = job.keras.Model(job.model.inputs, job.model.get_layer("hidden_0").output)
    assert pr.dtype_name(hidden([np.zeros((2, *job.datasets.input_shape), "float32")]).dtype) == "bfloat16"
    assert keras3.mixed_precision.global_policy().name == "float32"
    assert tf_keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.timeout(400)
def test_bfloat16_trains_digits_within_a_point_of_float32(tmp_path):
    accuracy = {}
    for policy in ("float32", "mixed_bfloat16"):
        cfg = paradl_tf.load_config("configs/sync_mirrored.yaml", DIGITS + [
            f"train.precision={policy}", f"output_dir={tmp_path / policy}"])
        results = paradl_tf.train(cfg)
        assert results["precision"]["policy"] == policy
        accuracy[policy] = results["val_accuracy"]
    written = json.loads((tmp_path / "mixed_bfloat16" / "results.json").read_text())
    assert written["precision"]["activation_dtype"] == "bfloat16"
    assert accuracy["mixed_bfloat16"] >= accuracy["float32"] - 0.01, accuracy


@pytest.mark.timeout(300)
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_model_parallel_sends_activations_in_the_compute_dtype_and_trains(tmp_path, policy):
    cfg = paradl_tf.load_config("configs/model_parallel.yaml", [
        "devices.count=4", "keras=tf_keras", f"train.precision={policy}", "train.epochs=8", "train.verbose=0",
        f"output_dir={tmp_path}"])
    results = paradl_tf.train(cfg)
    placement = results["placement"]
    assert placement["activation_dtypes"] == [policy.removeprefix("mixed_")]
    assert placement["stages"][0]["sends_bytes_per_example"] == 128 * 2  # hidden_0's 128 units, 2 bytes each
    assert results["precision"]["loss_scaling"] == (policy == "mixed_float16")
    assert results["val_accuracy"] >= 0.9


def test_a_model_that_pins_float32_is_a_clear_error():
    cfg = paradl_tf.load_config(None, ["model.kind=user", "model.fn=user_code:float32_model",
                                       "train.precision=mixed_bfloat16", "devices.count=4"])
    with pytest.raises(ConfigError, match=r"^train\.precision: mixed_bfloat16 has no effect on this model: every "
                                          r"layer with weights pins dtype float32 \(dense.*Received: "):
        paradl_tf.prepare(cfg)


@pytest.mark.parametrize("config", ["configs/async_ps.yaml", "configs/sync_multiworker.yaml"])
def test_cluster_plans_show_the_precision(config):
    shown = paradl_tf.plan(paradl_tf.load_config(config, ["train.precision=mixed_bfloat16", "devices.count=4"]))
    assert shown["precision"]["activation_dtype"] == "bfloat16" and shown["keras"] == "tf_keras"


# ---------------------------------------------------------------- threads
_THREADS = """
import json, os
import paradl_tf
cfg = paradl_tf.load_config(None, ["devices.threads.intra_op=3", "devices.threads.inter_op=5", "devices.count=2"])
paradl_tf.setup_devices(cfg.devices)
import tensorflow as tf
tf.zeros([2]) + 1  # the runtime has started with them
t = tf.config.threading
print(json.dumps([t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads(),
                  os.environ["TF_NUM_INTRAOP_THREADS"], os.environ["TF_NUM_INTEROP_THREADS"]]))
"""


@pytest.mark.timeout(150)
def test_threads_are_applied_before_tensorflow_starts():
    proc = subprocess.run([sys.executable, "-c", _THREADS], capture_output=True, text=True, timeout=120,
                          env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout.splitlines()[-1]) == [3, 5, "3", "5"]


def test_threads_after_tensorflow_started_are_a_clear_error():
    cfg = paradl_tf.load_config(None, ["devices.threads.intra_op=7", "devices.count=4"])
    with pytest.raises(paradl_tf.DeviceSetupError, match=r"cannot set devices\.threads\.intra_op: the TensorFlow "
                                                         r"runtime is already initialized.*intra_op=7$"):
        paradl_tf.setup_devices(cfg.devices)


def test_cluster_tasks_inherit_the_threads(tmp_path, monkeypatch):
    from paradl_tf import cluster

    seen = {}
    monkeypatch.setattr(cluster.launcher, "run_isolated", lambda argv, env, **kw: seen.update(env) or 1)
    cfg = paradl_tf.load_config("configs/async_ps.yaml", [
        "devices.threads.intra_op=1", "devices.threads.inter_op=4", f"output_dir={tmp_path}"])
    with pytest.raises(cluster.ClusterError):
        cluster.launch(cfg, driver="paradl_tf.runs.parameter_server")
    assert seen["TF_NUM_INTRAOP_THREADS"] == "1" and seen["TF_NUM_INTEROP_THREADS"] == "4"
