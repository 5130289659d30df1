"""Model parallel on the 4 logical CPUs of conftest: variables and ops on their stage's device, the same
numbers as the unplaced model (with and without micro-batches), balance, branches, errors, the CLI."""

import json
import re

import numpy as np
import pytest
import tensorflow as tf

from equivalence import TOLERANCE, float64, max_abs_diff  # tests/ is on sys.path under pytest
from paradl_tf import ConfigError, load_config, prepare
from paradl_tf.builders.devices import canonical_device
from paradl_tf.model_parallel.placed import plan_stages, variable_bytes_by_device
from paradl_tf.model_parallel.placement import LayerInfo
from paradl_tf.api import plan
from paradl_tf.runs.plan import format_plan
from test_placement import brute_force_largest  # tests/ is on sys.path under pytest

DEV = [f"/device:CPU:{i}" for i in range(4)]
MLP_STAGES = "strategy.placement={kind: stages, stages: [{device: /cpu:1, layers: [hidden_0]}, " \
             "{device: /cpu:2, layers: [hidden_1]}, {device: /cpu:3, layers: [logits]}]}"
CNN_STAGES = "strategy.placement={kind: stages, stages: [{device: /cpu:1, layers: [conv_0..pool_1]}, " \
             "{device: /cpu:2, layers: [dense, logits]}]}"


def job(*overrides, keras="keras3", seed=3):
    cfg = load_config(None, [
        "devices.count=4", "strategy.kind=model_parallel", f"keras={keras}", "train.verbose=0", f"train.seed={seed}",
        *overrides,
    ])
    return prepare(cfg)


def device_of_layer(j):
    return {name: stage["device"] for stage in j.placement["stages"] for name in stage["layers"]}


def variable_device(v, keras):
    # Keras 3 wraps the tf.Variable (v.value); a tf_keras variable is a tf.Variable.
    return canonical_device(v.value.device if keras == "keras3" else v.device)


def fit(j, steps):
    return j.model.fit(j.datasets.train_stream, epochs=1, steps_per_epoch=steps, shuffle=False, verbose=0).history


# ---------------------------------------------------------------- variables and ops on their devices
@pytest.mark.parametrize("keras", ["keras3", "tf_keras"])
def test_each_stage_keeps_its_variables_and_optimizer_slots_on_its_device(keras):
    j = job("model.hidden=[32, 16]", MLP_STAGES, keras=keras)
    expected = {"hidden_0": DEV[1], "hidden_1": DEV[2], "logits": DEV[3]}
    assert device_of_layer(j)["flatten"] == DEV[1]  # in no stage: runs with what it reads, the first stage
    fit(j, 2)  # Keras may create state lazily; it must not move anything
    for layer in j.model.layers:
        for v in layer.weights:
            assert variable_device(v, keras) == expected[layer.name], (layer.name, v.name)
    # Adam keeps two slots (m, v) per variable, each on the variable's device.
    slots = [v for v in j.model.optimizer.variables if len(v.shape) > 0]
    params = variable_bytes_by_device(j.model.trainable_weights)
    assert variable_bytes_by_device(slots) == {d: 2 * b for d, b in params.items()}
    assert set(params) == {DEV[1], DEV[2], DEV[3]}


def layer_of(op_name, names):
    """The layer whose name scope an op (forward or gradient) was created in: 'conv_0' or 'conv_0_1' for conv_0."""
    found = [n for part in op_name.split("/") for n in names if re.fullmatch(re.escape(n) + r"(_\d+)?", part)]
    return max(found, key=len) if found else None


@pytest.mark.parametrize("keras", ["keras3", "tf_keras"])
def test_traced_training_step_runs_each_stage_on_its_device(keras):
    j = job("model.kind=cnn", "model.filters=[8, 16]", "model.dense=32", CNN_STAGES,
            "strategy.pipeline.microbatches=2", keras=keras)
    where = device_of_layer(j)
    step = tf.function(j.model.train_step)
    graph = step.get_concrete_function(
        (tf.TensorSpec([64, 8, 8, 1], tf.float32), tf.TensorSpec([64], tf.int32))
    ).graph
    heavy = [op for op in graph.get_operations()
             if op.type in ("MatMul", "Conv2D", "Conv2DBackpropFilter", "Conv2DBackpropInput")]
    seen = {}
    for op in heavy:
        layer = layer_of(op.name, list(where))
        assert layer is not None, op.name
        assert op.device and canonical_device(op.device) == where[layer], (op.name, op.device)
        backward = "gradients" in op.name.split("/")[0]
        seen.setdefault((layer, backward), 0)
        seen[(layer, backward)] += 1
    for layer in ("conv_0", "conv_1", "dense", "logits"):  # forward and backward of every weighted layer, 2 micro-batches
        assert seen.get((layer, False), 0) >= 2 and seen.get((layer, True), 0) >= 2, (layer, seen)


# ---------------------------------------------------------------- same numbers as the unplaced model
_REFERENCE = {}
CNN = ["model.kind=cnn", "model.filters=[8, 16]", "model.dense=32", "train.optimizer=sgd", "train.learning_rate=0.1"]
STEPS = 8


def unplaced(keras, seed=3):
    """The same model unplaced, under TensorFlow's default strategy (which model_parallel uses too), in float64.

    Not OneDeviceStrategy: under it, Keras 3's fit reads the reshuffling dataset in another order.
    """
    if (keras, seed) not in _REFERENCE:
        cfg = load_config(None, ["devices.count=4", "strategy.kind=default", f"keras={keras}", *CNN,
                                 f"train.seed={seed}", "train.verbose=0"])
        with float64():
            j = prepare(cfg)
            initial = {l.name: l.get_weights() for l in j.model.layers if l.name != "inputs"}
            x = next(iter(j.datasets.validation))[0]
            before = np.asarray(j.model(x, training=False))
            history = fit(j, STEPS)
        trained = {l.name: l.get_weights() for l in j.model.layers if l.name != "inputs"}
        _REFERENCE[keras, seed] = initial, x, before, trained, history["loss"][0]
    return _REFERENCE[keras, seed]


def placed_vs_unplaced(keras, microbatches, seed=3):
    """The CNN placed in 2 stages with `microbatches` micro-batches against the unplaced one, both in float64 (see
    equivalence.py): how far the unplaced dense kernel moved, and how far apart the outputs before training, the weights
    after STEPS SGD steps and the mean losses (relative) are."""
    initial, x, before, weights, loss = unplaced(keras, seed)
    with float64():
        j = job(*CNN, CNN_STAGES, f"strategy.pipeline.microbatches={microbatches}", keras=keras, seed=seed)
        output = np.asarray(j.model(x, training=False))
        history = fit(j, STEPS)
    placed = {l.name: l.get_weights() for l in j.model.layers}  # the same layers, max_abs_diff checks
    assert j.model.layers[0].weights[0].dtype == "float64"
    return {"moved": max_abs_diff(initial["dense"], weights["dense"]), "output": float(np.abs(output - before).max()),
            "weights": max_abs_diff(placed, weights), "loss": abs(history["loss"][0] - loss) / loss}


@pytest.mark.parametrize("keras,microbatches", [("keras3", 1), ("keras3", 4), ("tf_keras", 1), ("tf_keras", 4)])
def test_placed_model_computes_what_the_unplaced_model_computes(keras, microbatches, equivalence):
    found = placed_vs_unplaced(keras, microbatches, equivalence.seed(3))
    assert found.pop("moved") > 1e-2, "the steps must change the weights for the comparison to mean anything"
    equivalence.check(TOLERANCE, **found)


# ---------------------------------------------------------------- balance, from the real variables
@pytest.mark.parametrize("model,n,bound_holds", [
    (["model.kind=mlp"], 2, True),
    (["model.kind=mlp", "model.hidden=[64, 64, 64, 64, 64, 64, 64]"], 4, True),
    (["model.kind=inception", "model.stem_filters=16"], 2, True),
    (["model.kind=inception", "model.blocks=4"], 4, True),
    (["model.kind=cnn"], 2, False),  # dense alone is 62% of the parameters: no split can do better
])
def test_auto_largest_stage_within_1_15_of_the_mean_where_layer_sizes_allow(model, n, bound_holds):
    j = job(*model, f"strategy.placement.devices={n}")
    on_device = variable_bytes_by_device(j.model.weights)  # read from the variables themselves
    assert set(on_device) <= set(DEV[:n])
    total, largest = sum(on_device.values()), max(on_device.values())
    layer_bytes = [sum(int(np.prod(w.shape)) * 4 for w in l.weights) for l in j.model.placed_layers]
    assert largest == brute_force_largest(layer_bytes, n)  # the best contiguous split
    assert (largest <= 1.15 * total / n) == bound_holds
    assert j.placement["balance"] == pytest.approx(largest / (total / n))


# ---------------------------------------------------------------- branches
def test_inception_branches_each_on_its_own_device():
    j = job("model.kind=inception", "model.stem_filters=8", "model.branch_filters=8",
            "strategy.placement={kind: branches, devices: 4}")
    where = {}
    for layer in j.model.layers:
        devices = {variable_device(v, "keras3") for v in layer.weights}
        assert len(devices) <= 1
        where[layer.name] = devices.pop() if devices else device_of_layer(j)[layer.name]
    for b in range(2):
        assert where[f"block{b}_b1_1x1"] == DEV[0]
        assert where[f"block{b}_b2_reduce"] == where[f"block{b}_b2_3x3"] == DEV[1]
        assert where[f"block{b}_b3_reduce"] == where[f"block{b}_b3_5x5"] == DEV[2]
        assert where[f"block{b}_b4_1x1"] == DEV[3]
        assert device_of_layer(j)[f"block{b}_b4_pool"] == DEV[3]
        assert device_of_layer(j)[f"block{b}_concat"] == DEV[0]
    assert where["stem"] == where["logits"] == DEV[0]
    graph = tf.function(lambda x: j.model(x, training=False)).get_concrete_function(
        tf.TensorSpec([16, 8, 8, 1], tf.float32)).graph
    for op in graph.get_operations():
        if op.type in ("Conv2D", "MaxPool", "ConcatV2") and layer_of(op.name, list(where)):
            assert canonical_device(op.device) == device_of_layer(j)[layer_of(op.name, list(where))], op.name
    assert j.placement["idle_fraction"] is None


# ---------------------------------------------------------------- plan
def test_plan_shows_the_stage_table_balance_and_idle_fraction():
    cfg = load_config("configs/pipeline.yaml", ["devices.count=4"])
    p = plan(cfg)
    stages = p["placement"]["stages"]
    assert [s["device"] for s in stages] == DEV[:2]
    assert stages[0]["layers"] == ["conv_0", "pool_0", "conv_1", "pool_1", "flatten"]
    assert stages[0]["sends_bytes_per_example"] == 2 * 2 * 32 * 4  # pool_1's output, 2x2x32 floats
    assert p["placement"]["idle_fraction"] == pytest.approx(1 / 5)
    assert sum(s["parameter_bytes"] for s in stages) == p["parameter_bytes"]
    assert {d for v in p["variables"] for d in v["devices"]} == {f"/job:localhost/replica:0/task:0{d}" for d in DEV[:2]}
    text = format_plan(p)
    assert re.search(r"stage\s+device\s+params\s+param bytes\s+sends bytes/example\s+layers", text)
    assert re.search(r"1\s+/device:CPU:1\s+8906\s+35624\s+0\s+dense, logits", text)
    assert "idle fraction (S-1)/(M+S-1) = 0.200" in text


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("overrides,message", [
    (["strategy.placement={kind: stages, stages: [{device: /cpu:0, layers: [hidden_0]}, {device: /cpu:1, layers: [hiden_1]}]}"],
     r"strategy\.placement\.stages\[1\]\.layers: unknown layer 'hiden_1'; did you mean 'hidden_1'\? "
     r"Layers: flatten, hidden_0, hidden_1, logits\. Received: strategy\.placement\.stages\[1\]\.layers entry 'hiden_1'"),
    (["strategy.placement={kind: stages, stages: [{device: /cpu:0, layers: [0]}, {device: /gpu:0, layers: [logits]}]}"],
     r"strategy\.placement\.stages\[1\]\.device: device '/gpu:0' does not exist; logical devices: /device:CPU:0, "
     r"/device:CPU:1, /device:CPU:2, /device:CPU:3\. Received: strategy\.placement\.stages\[1\]\.device='/gpu:0'"),
    (["strategy.placement={kind: branches}"],
     r"strategy\.placement\.kind: branches needs a model with independent parallel paths"),
])
def test_bad_placement_is_a_precise_one_line_error(overrides, message):
    if "/gpu:0" in overrides[0] and tf.config.list_logical_devices("GPU"):
        pytest.skip("a GPU exists here")
    with pytest.raises(ConfigError, match=message) as info:
        job(*overrides)
    assert "\n" not in str(info.value)


def test_more_devices_than_this_process_has():
    # The config allows 8 (devices.count=8); this process made 4 before the config was read.
    cfg = load_config(None, ["devices.count=8", "strategy.kind=model_parallel", "strategy.placement.devices=8"])
    layers = [LayerInfo(f"dense_{i}", param_bytes=4, inputs=(f"dense_{i - 1}",)) for i in range(8)]
    with pytest.raises(ConfigError, match=r"^strategy\.placement\.devices asks for 8 CPU devices but 4 exist\. "
                       r"Received: strategy\.placement\.devices=8$"):
        plan_stages(cfg.strategy, cfg.devices, layers)


@pytest.mark.parametrize("overrides,message", [
    (["strategy.pipeline.microbatches=5"],
     r"strategy\.pipeline\.microbatches must divide train\.global_batch_size=64 into equal micro-batches\. "
     r"Received: strategy\.pipeline\.microbatches=5"),
    (["strategy.placement={kind: stages, stages: [{device: /cpu:0, layers: [0]}, {device: /cpu:4, layers: [1]}]}"],
     r"strategy\.placement\.stages\[1\]\.device: device '/cpu:4' does not exist; devices\.count makes 4 logical "
     r"CPU\(s\), /device:CPU:0 to /device:CPU:3\. Received: strategy\.placement\.stages\[1\]\.device='/cpu:4'"),
    (["strategy.placement={kind: stages, stages: [{device: /cpu:1, layers: [0]}, {device: /device:CPU:1, layers: [1]}]}"],
     r"strategy\.placement\.stages\[1\]\.device: device '/device:CPU:1' is already used by "
     r"strategy\.placement\.stages\[0\]\.device; give each device one stage"),
    (["strategy.placement.devices=5"],
     r"strategy\.placement\.devices asks for 5 devices but only 4 logical CPU\(s\) exist \(devices\.count\)"),
    (["strategy.placement={kind: auto, balance: memory}"],
     r"strategy\.placement\.balance: input should be 'params' or 'flops'\. Received: strategy\.placement\.balance='memory'"),
    (["strategy.placement={kind: pipeline}"],
     r"strategy\.placement\.kind: unknown strategy\.placement kind 'pipeline'; choose one of: stages, auto, branches"),
])
def test_bad_placement_fails_before_tensorflow_runs(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, ["devices.count=4", "strategy.kind=model_parallel", *overrides])
    assert "\n" not in str(info.value)


@pytest.mark.timeout(240)
def test_cli_bad_layer_name_exits_2_with_one_line(cli):
    proc = cli("plan", "--config=configs/pipeline.yaml", "--set",
               "strategy.placement.stages=[{device: /cpu:0, layers: [conv_0]}, {device: /cpu:1, layers: [dense_9]}]")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "error: strategy.placement.stages[1].layers: unknown layer 'dense_9'; did you mean 'dense'?")
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- end to end
@pytest.mark.timeout(300)
def test_cli_trains_model_parallel_config_and_records_the_placement(cli, tmp_path):
    proc = cli("train", "--config=configs/model_parallel.yaml", "--set", f"output_dir={tmp_path}",
               "--set", "train.verbose=0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["strategy"] == "model_parallel" and results["keras"] == "keras3" and results["replicas"] == 1
    assert results["val_accuracy"] >= 0.9
    placement = results["placement"]
    assert placement["kind"] == "auto" and placement["balance_by"] == "params"
    assert [(s["device"], s["layers"]) for s in placement["stages"]] == [
        (DEV[0], ["flatten", "hidden_0"]), (DEV[1], ["hidden_1", "logits"])]
    assert [s["parameter_bytes"] for s in placement["stages"]] == [33280, 35624]  # 8320 and 8906 float32 parameters
    assert placement["balance"] <= 1.15
    assert results["devices"] == DEV[:2]
