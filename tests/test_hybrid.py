"""Hybrid parallelism (R replica groups x S stages) on the 4 logical CPUs of conftest: variables, slots and ops where
the plan says on all R x S devices, the same step as the unplaced model with the same global batch, copies that never
drift, the mesh in plan, the digits config, bad input."""

import json
import re

import numpy as np
import pytest
import tensorflow as tf

from equivalence import TOLERANCE, float64, max_abs_diff  # tests/ is on sys.path under pytest
from paradl_tf import ConfigError, load_config, prepare
from paradl_tf.api import plan
from paradl_tf.builders.devices import canonical_device
from paradl_tf.model_parallel.placed import tf_variable, variable_bytes_by_device
from paradl_tf.runs.plan import format_plan

DEV = [f"/device:CPU:{i}" for i in range(4)]
CNN = ["model.kind=cnn", "model.filters=[8, 16]", "model.dense=32"]
CNN_STAGES = "strategy.placement={kind: stages, stages: [{device: /cpu:0, layers: [conv_0..pool_1]}, " \
             "{device: /cpu:1, layers: [dense, logits]}]}"
STEPS = 8


def job(*overrides, keras="keras3", seed=3):
    cfg = load_config(None, ["devices.count=4", "strategy.kind=hybrid", f"keras={keras}", "train.verbose=0",
                             f"train.seed={seed}", *overrides])
    return prepare(cfg)


def fit(j, steps):
    return j.model.fit(j.datasets.train_stream, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0).history


def where(j):
    """(group, layer) -> device, as the plan says."""
    return {(s["group"], name): s["device"] for s in j.placement["stages"] for name in s["layers"]}


# ---------------------------------------------------------------- variables, slots and ops where the plan says
@pytest.mark.parametrize("keras", ["keras3", "tf_keras"])
def test_every_groups_stages_keep_their_variables_slots_and_ops_on_their_devices(keras):
    j = job(*CNN, CNN_STAGES, "strategy.pipeline.microbatches=2", keras=keras)
    plan_of = where(j)
    assert sorted(set(plan_of.values())) == DEV
    fit(j, 2)  # Keras may create state lazily; it must not move anything
    for r, copy in enumerate(j.model.copies):
        for layer in copy.layers:
            for v in layer.weights:
                assert canonical_device(tf_variable(v).device) == plan_of[r, layer.name], (r, layer.name, v.name)
    slots = [v for v in j.model.optimizer.variables if len(v.shape) > 0]  # Adam's m and v beside each variable
    params = variable_bytes_by_device(j.model.trainable_weights)
    assert set(params) == set(DEV)
    assert variable_bytes_by_device(slots) == {d: 2 * b for d, b in params.items()}
    assert {s["device"]: s["parameter_bytes"] for s in j.placement["stages"]} == variable_bytes_by_device(j.model.weights)

    graph = tf.function(j.model.train_step).get_concrete_function(
        (tf.TensorSpec([64, 8, 8, 1], tf.float32), tf.TensorSpec([64], tf.int32))).graph
    heavy = [op for op in graph.get_operations()
             if op.type in ("MatMul", "Conv2D", "Conv2DBackpropFilter", "Conv2DBackpropInput")]
    seen = {}
    for op in heavy:
        device = canonical_device(op.device)
        group, layer = _group_and_layer(op.name, j)
        assert device == plan_of[group, layer], (op.name, op.device)
        seen[device] = seen.get(device, 0) + 1
    assert set(seen) == set(DEV) and min(seen.values()) >= 4, seen  # forward and backward, 2 micro-batches
    # The reduction: per variable, one sum on group 0's device of its stage, one copy back to group 1's.
    reduce_devices = {canonical_device(op.device) for op in graph.get_operations() if op.type == "AddN"}
    assert reduce_devices <= {DEV[0], DEV[1]}, reduce_devices


def _group_and_layer(op_name, j):
    """The group and layer an op belongs to: 'conv_0_3' inside copy 1's call, forward or gradient."""
    names = [n.name for n in j.model.copies[0].placed_nodes]
    for r, copy in enumerate(j.model.copies):
        if any(part.startswith(copy.name) for part in op_name.split("/")):
            found = [n for part in op_name.split("/") for n in names if re.fullmatch(re.escape(n) + r"(_\d+)?", part)]
            return r, max(found, key=len)
    raise AssertionError(f"op {op_name} is in no group")


# ---------------------------------------------------------------- the same step as the unplaced model
SGD = ["train.optimizer=sgd", "train.learning_rate=0.1"]


def trained_weights(j):
    return {l.name: l.get_weights() for l in j.model.layers if l.name != "inputs"}


@pytest.mark.parametrize("keras,microbatches", [("keras3", 1), ("keras3", 2), ("tf_keras", 2)])
def test_hybrid_step_equals_the_unplaced_step_with_the_same_global_batch(keras, microbatches, equivalence):
    seed = equivalence.seed(3)
    with float64():
        cfg = load_config(None, ["devices.count=4", "strategy.kind=default", f"keras={keras}", *CNN, *SGD,
                                 f"train.seed={seed}", "train.verbose=0"])
        ref = prepare(cfg)
        initial = trained_weights(ref)
        loss = fit(ref, STEPS)["loss"][0]
        j = job(*CNN, *SGD, CNN_STAGES, f"strategy.pipeline.microbatches={microbatches}", keras=keras, seed=seed)
        history = fit(j, STEPS)
    reference = trained_weights(ref)
    assert j.model.copies[0].layers[0].weights[0].dtype == "float64"
    assert max_abs_diff(initial["dense"], reference["dense"]) > 1e-2, "the steps must move the weights"
    copies = [{l.name: l.get_weights() for l in copy.layers} for copy in j.model.copies]
    equivalence.check(TOLERANCE, **{f"group{r}_weights": max_abs_diff(c, reference) for r, c in enumerate(copies)},
                      loss=abs(history["loss"][0] - loss) / loss)


# ---------------------------------------------------------------- the copies never drift
def test_copies_are_bitwise_identical_after_training_with_adam():
    j = job("model.hidden=[32, 16]", "strategy.placement.devices=2")
    fit(j, 20)
    first, second = ([w.numpy() for w in c.weights] for c in j.model.copies)
    assert max_abs_diff(first, second) == 0.0
    assert max_abs_diff(first, [w.numpy() for w in j.model.copies[0].weights]) == 0.0


def test_bfloat16_groups_send_bfloat16_keep_float32_variables_and_logits_and_train():
    j = job("model.hidden=[32, 16]", "strategy.placement.devices=2", "train.precision=mixed_bfloat16",
            "data.kind=digits")
    shown = j.precision
    assert shown["activation_dtype"] == "bfloat16" and shown["variable_dtypes"] == ["float32"]
    assert shown["output_dtype"] == "float32" and shown["float32_layers"] == ["logits"]
    assert j.placement["activation_dtypes"] == ["bfloat16"]
    assert [s["sends_bytes_per_example"] for s in j.placement["stages"]] == [32 * 2, 0] * 2  # hidden_0, 2 bytes
    assert "activations sent between stages as: bfloat16" in format_plan(plan(j.cfg))
    loss = fit(j, 30)["loss"]
    assert j.model(np.zeros((4, 8, 8, 1), "float32")).dtype == tf.float32
    first, second = ([w.numpy() for w in c.weights] for c in j.model.copies)
    assert max_abs_diff(first, second) == 0.0 and np.isfinite(loss[-1])


# ---------------------------------------------------------------- branches in two groups
def test_inception_branches_in_two_groups():
    j = job("model.kind=inception", "model.stem_filters=8", "model.branch_filters=8", "model.blocks=1",
            "strategy.placement={kind: branches, devices: 2}")
    plan_of = where(j)
    for r, (a, b) in enumerate([(DEV[0], DEV[1]), (DEV[2], DEV[3])]):
        assert plan_of[r, "stem"] == plan_of[r, "block0_b1_1x1"] == plan_of[r, "block0_b3_reduce"] == a
        assert plan_of[r, "block0_b2_3x3"] == plan_of[r, "block0_b4_1x1"] == b
    fit(j, 2)
    assert variable_bytes_by_device(j.model.weights) == {s["device"]: s["parameter_bytes"] for s in j.placement["stages"]}
    assert j.placement["idle_fraction"] is None


# ---------------------------------------------------------------- plan
def test_plan_shows_the_mesh_and_the_bytes_all_reduced_per_stage():
    p = plan(load_config("configs/hybrid.yaml"))
    mesh = p["placement"]
    assert [g["devices"] for g in mesh["groups"]] == [DEV[:2], DEV[2:]]
    assert [(s["group"], s["stage"], s["device"], s["layers"]) for s in mesh["stages"]] == [
        (0, 0, DEV[0], ["flatten", "hidden_0"]), (0, 1, DEV[1], ["hidden_1", "logits"]),
        (1, 0, DEV[2], ["flatten", "hidden_0"]), (1, 1, DEV[3], ["hidden_1", "logits"])]
    assert [s["all_reduce_bytes_per_step"] for s in mesh["stages"]] == [33280, 35624] * 2
    assert mesh["mirrored_all_reduce_bytes_per_step"] == mesh["all_reduce_bytes_per_step"] == 33280 + 35624
    assert p["replicas"] == 2 and p["per_replica_batch_size"] == 32
    text = format_plan(p)
    assert "mesh: 2 replica group(s) x 2 stage(s), placement auto (balanced by params)" in text
    assert "group 1: /device:CPU:2, /device:CPU:3" in text
    assert re.search(r"1\s+1\s+/device:CPU:3\s+35624\s+35624\s+hidden_1, logits", text)


# ---------------------------------------------------------------- bad input, one line each
@pytest.mark.parametrize("overrides,message", [
    (["strategy.replicas=3", "strategy.placement.devices=2"],
     r"^strategy\.replicas: 3 groups x 2 stages need 6 devices but devices\.count makes 4 logical CPU\(s\)\. "
     r"Received: strategy\.replicas=3$"),
    (["strategy.groups=[[/cpu:0, /cpu:1], [/cpu:2]]"],
     r"^strategy\.groups: groups of unequal size \[2, 1\]; every group runs the same stages, one per device\."),
    (["train.global_batch_size=66", "strategy.pipeline.microbatches=2"],
     r"^train\.global_batch_size must split into strategy\.replicas=2 groups x strategy\.pipeline\.microbatches=2 "
     r"equal micro-batches\. Received: train\.global_batch_size=66$"),
    (["strategy.groups=[[/cpu:0, /cpu:1], [/cpu:2, /cpu:3]]",
      "strategy.placement={kind: stages, stages: [{device: /cpu:0, layers: [hidden_0]}, {device: /cpu:3, layers: [logits]}]}"],
     r"^strategy\.placement\.stages\[1\]\.device: '/cpu:3' is not group 0's device 1 \(/cpu:1\); every group runs the "
     r"same stage list, stage k on its own k-th device"),
    (["strategy.groups=[[/cpu:0, /cpu:1], [/cpu:1, /cpu:2]]"], r"^strategy\.groups: a device is listed twice"),
])
def test_bad_hybrid_config_is_one_line_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, ["devices.count=4", "strategy.kind=hybrid", *overrides])
    assert "\n" not in str(info.value)


@pytest.mark.timeout(240)
def test_cli_bad_hybrid_config_exits_2_with_one_line(cli):
    proc = cli("plan", "--config=configs/hybrid.yaml", "--set", "strategy.replicas=3")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: configs/hybrid.yaml: strategy.replicas: 3 groups x 2 stages need 6 devices")
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- end to end
@pytest.mark.timeout(300)
def test_cli_trains_the_hybrid_config_on_digits_with_backup_and_results(cli, tmp_path):
    proc = cli("train", "--config=configs/hybrid.yaml", "--set", f"output_dir={tmp_path}", "--set",
               "train.verbose=0", "--set", f"checkpoint.dir={tmp_path / 'backup'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["strategy"] == "hybrid" and results["replicas"] == 2 and results["per_replica_batch_size"] == 32
    assert results["val_accuracy"] >= 0.95, results["val_accuracy"]
    assert results["devices"] == DEV and results["runs_on"] == "2 group(s) x 2 stage(s)"
    assert results["placement"]["all_reduce_bytes_per_step"] == 68904


# ---------------------------------------------------------------- BackupAndRestore
def test_backup_restores_every_copy_and_the_optimizer(tmp_path):
    """A run stopped after its epoch-2 backup; a fresh job's fit resumes from it with every group's weights and
    the optimizer's step count as they were, and both copies still identical."""
    overrides = ["model.hidden=[32, 16]", "strategy.placement.devices=2", "train.steps_per_epoch=4",
                 f"checkpoint.dir={tmp_path}"]
    first = job(*overrides)

    class Stop(first.keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt  # after BackupAndRestore has backed up epoch 2

    backup = first.keras.callbacks.BackupAndRestore(backup_dir=str(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        first.model.fit(first.datasets.train_stream, epochs=5, steps_per_epoch=4, callbacks=[backup, Stop()],
                         shuffle=False, verbose=0)
    second = job(*overrides)
    second.model.fit(second.datasets.train_stream, epochs=2, steps_per_epoch=4, shuffle=False, verbose=0,
                     callbacks=[second.keras.callbacks.BackupAndRestore(backup_dir=str(tmp_path))])  # nothing left
    for a, b in zip(first.model.copies, second.model.copies):
        assert max_abs_diff([w.numpy() for w in a.weights], [w.numpy() for w in b.weights]) == 0.0
    assert int(second.model.optimizer.iterations.numpy()) == 8
    assert max_abs_diff(*([w.numpy() for w in c.weights] for c in second.model.copies)) == 0.0
