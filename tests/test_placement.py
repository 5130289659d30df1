"""Placement plans as pure functions: layer descriptions and device names in, stages out. No TensorFlow."""

import itertools
import random
import subprocess
import sys

import pytest

from paradl_tf.errors import ConfigError
from paradl_tf.model_parallel.placement import (
    LayerInfo, Stage, auto_stages, branch_stages, explicit_stages, find_branches, stage_table,
)

CPU = [f"cpu:{i}" for i in range(4)]


def chain(*sizes, output_bytes=None, prefix="l"):
    """A sequential model: layer i reads layer i-1 (layer 0 reads the model input 'x')."""
    outs = output_bytes or [4] * len(sizes)
    return [
        LayerInfo(f"{prefix}{i}", params=s // 4, param_bytes=s, flops=2 * s, output_bytes=o,
                  inputs=(f"{prefix}{i - 1}",) if i else ("x",))
        for i, (s, o) in enumerate(zip(sizes, outs))
    ]


def mlp():
    """The digits MLP of configs/model_parallel.yaml (hidden [128, 64]) with its real sizes."""
    return [
        LayerInfo("flatten", 0, 0, 64, 256, ("inputs",)),
        LayerInfo("hidden_0", 8320, 33280, 16384, 512, ("flatten",)),
        LayerInfo("hidden_1", 8256, 33024, 16384, 256, ("hidden_0",)),
        LayerInfo("logits", 650, 2600, 1280, 40, ("hidden_1",)),
    ]


def inception(blocks=2):
    """The inception model's graph: a stem, then blocks of four branches joined by a concatenation."""
    layers = [LayerInfo("stem", 40, 160, 0, 4096, ("inputs",))]
    x = "stem"
    for b in range(blocks):
        p = f"block{b}_"
        layers += [
            LayerInfo(p + "b1_1x1", 100, 400, 0, 1024, (x,)),
            LayerInfo(p + "b2_reduce", 50, 200, 0, 512, (x,)),
            LayerInfo(p + "b2_3x3", 300, 1200, 0, 1024, (p + "b2_reduce",)),
            LayerInfo(p + "b3_reduce", 50, 200, 0, 512, (x,)),
            LayerInfo(p + "b3_5x5", 900, 3600, 0, 1024, (p + "b3_reduce",)),
            LayerInfo(p + "b4_pool", 0, 0, 0, 4096, (x,)),
            LayerInfo(p + "b4_1x1", 100, 400, 0, 1024, (p + "b4_pool",)),
            LayerInfo(p + "concat", 0, 0, 0, 4096, (p + "b1_1x1", p + "b2_3x3", p + "b3_5x5", p + "b4_1x1")),
        ]
        x = p + "concat"
    return layers + [LayerInfo("gap", 0, 0, 0, 256, (x,)), LayerInfo("logits", 650, 2600, 0, 40, ("gap",))]


def largest(stages, layers, key="param_bytes"):
    size = {l.name: getattr(l, key) for l in layers}
    return max(sum(size[n] for n in s.layers) for s in stages)


def brute_force_largest(sizes, n):
    """The least largest stage over every way to cut `sizes` into n contiguous non-empty stages."""
    best = None
    for cuts in itertools.combinations(range(1, len(sizes)), n - 1):
        bounds = [0, *cuts, len(sizes)]
        worst = max(sum(sizes[bounds[i]:bounds[i + 1]]) for i in range(n))
        best = worst if best is None else min(best, worst)
    return best


# ---------------------------------------------------------------- auto
def test_auto_splits_the_digits_mlp_into_two_balanced_stages():
    stages = auto_stages(mlp(), CPU[:2])
    assert stages == [Stage("cpu:0", ("flatten", "hidden_0")), Stage("cpu:1", ("hidden_1", "logits"))]
    total = sum(l.param_bytes for l in mlp())
    assert largest(stages, mlp()) <= 1.15 * total / 2


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("n", [2, 3, 4])
def test_auto_finds_the_least_largest_stage(seed, n):
    rng = random.Random(seed)
    sizes = [rng.choice([0, 0, rng.randint(1, 1000)]) for _ in range(rng.randint(n, 9))]
    layers = chain(*sizes)
    stages = auto_stages(layers, CPU[:n])
    assert [name for s in stages for name in s.layers] == [l.name for l in layers], "contiguous, in order, all layers"
    assert all(s.layers for s in stages)
    optimum = brute_force_largest(sizes, n)
    assert largest(stages, layers) == optimum
    if optimum <= 1.15 * sum(sizes) / n:  # "where the layer sizes allow it"
        assert largest(stages, layers) <= 1.15 * sum(sizes) / n


def test_auto_meets_the_bound_on_many_equal_layers():
    layers = chain(*[1000] * 8, 10)
    for n in (2, 4):
        assert largest(auto_stages(layers, CPU[:n]), layers) <= 1.15 * sum(l.param_bytes for l in layers) / n


def test_auto_among_equally_balanced_splits_sends_the_fewest_bytes():
    # Cutting after l0, l1 or l2 all give a largest stage of 10; after l2 sends 8 bytes, not 4096.
    layers = chain(10, 0, 0, 10, output_bytes=[4096, 4096, 8, 40])
    assert auto_stages(layers, CPU[:2]) == [Stage("cpu:0", ("l0", "l1", "l2")), Stage("cpu:1", ("l3",))]


def test_auto_balances_flops_when_asked():
    layers = [
        LayerInfo("conv_0", param_bytes=100, flops=1000, inputs=("x",)),
        LayerInfo("conv_1", param_bytes=100, flops=1000, inputs=("conv_0",)),
        LayerInfo("dense", param_bytes=10_000, flops=100, inputs=("conv_1",)),
    ]
    assert auto_stages(layers, CPU[:2], "params") == [Stage("cpu:0", ("conv_0", "conv_1")), Stage("cpu:1", ("dense",))]
    assert auto_stages(layers, CPU[:2], "flops") == [Stage("cpu:0", ("conv_0",)), Stage("cpu:1", ("conv_1", "dense"))]


def test_auto_needs_a_layer_per_device():
    with pytest.raises(ConfigError, match=r"^strategy\.placement\.devices: 4 contiguous stages need at least 4 layers, "
                       r"but the model has 2\. Received: strategy\.placement\.devices=4$"):
        auto_stages(chain(1, 2), CPU)


# ---------------------------------------------------------------- explicit stages
def test_explicit_stages_by_name_index_and_range():
    layers = chain(*[1] * 6)
    stages = explicit_stages(layers, [("cpu:0", ["l0..2"]), ("cpu:1", [3, "l4..l5"])])
    assert stages == [Stage("cpu:0", ("l0", "l1", "l2")), Stage("cpu:1", ("l3", "l4", "l5"))]


def test_a_layer_in_no_stage_runs_with_the_layer_it_reads():
    stages = explicit_stages(mlp(), [("cpu:1", ["hidden_0"]), ("cpu:0", ["hidden_1", "logits"])])
    # flatten reads only the model input, so it goes to the first stage
    assert stages == [Stage("cpu:1", ("flatten", "hidden_0")), Stage("cpu:0", ("hidden_1", "logits"))]
    stages = explicit_stages(mlp(), [("cpu:0", ["hidden_0"]), ("cpu:1", ["logits"])])
    assert stages[0].layers == ("flatten", "hidden_0", "hidden_1")


@pytest.mark.parametrize("stages,message", [
    ([("cpu:0", ["hidden_0"]), ("cpu:1", ["hiden_1"])],
     r"strategy\.placement\.stages\[1\]\.layers: unknown layer 'hiden_1'; did you mean 'hidden_1'\? "
     r"Layers: flatten, hidden_0, hidden_1, logits\. Received: strategy\.placement\.stages\[1\]\.layers entry 'hiden_1'"),
    ([("cpu:0", [7])],
     r"strategy\.placement\.stages\[0\]\.layers: layer index 7 is out of range; the model has 4 layers \(0\.\.3\)"),
    ([("cpu:0", ["logits..hidden_0"])],
     r"strategy\.placement\.stages\[0\]\.layers: range 'logits\.\.hidden_0' runs backwards \(3 > 1\)"),
    ([("cpu:0", ["0..2"]), ("cpu:1", ["hidden_1", "logits"])],
     r"strategy\.placement\.stages\[1\]\.layers: layer 'hidden_1' is already in stage 0; a layer runs on one device"),
])
def test_bad_explicit_stages_are_one_line_errors(stages, message):
    with pytest.raises(ConfigError, match=message) as info:
        explicit_stages(mlp(), stages)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- branches
def test_find_branches_of_an_inception_block():
    merges = find_branches(inception(blocks=1))
    assert merges == [[["block0_b1_1x1"], ["block0_b2_reduce", "block0_b2_3x3"],
                       ["block0_b3_reduce", "block0_b3_5x5"], ["block0_b4_pool", "block0_b4_1x1"]]]


def test_branch_placement_puts_branch_j_on_device_j_and_the_trunk_on_one_device():
    stages = branch_stages(inception(), CPU)
    device_of = {name: s.device for s in stages for name in s.layers}
    for b in range(2):
        assert device_of[f"block{b}_b1_1x1"] == "cpu:0"
        assert device_of[f"block{b}_b2_reduce"] == device_of[f"block{b}_b2_3x3"] == "cpu:1"
        assert device_of[f"block{b}_b3_reduce"] == device_of[f"block{b}_b3_5x5"] == "cpu:2"
        assert device_of[f"block{b}_b4_pool"] == device_of[f"block{b}_b4_1x1"] == "cpu:3"
        assert device_of[f"block{b}_concat"] == "cpu:0"
    assert device_of["stem"] == device_of["gap"] == device_of["logits"] == "cpu:0"
    assert [s.device for s in stages] == CPU


def test_branch_placement_with_a_separate_trunk_and_fewer_devices():
    stages = branch_stages(inception(1), ["cpu:1", "cpu:2"], trunk_device="cpu:0")
    device_of = {name: s.device for s in stages for name in s.layers}
    assert device_of["block0_b1_1x1"] == device_of["block0_b3_5x5"] == "cpu:1"
    assert device_of["block0_b2_3x3"] == device_of["block0_b4_1x1"] == "cpu:2"
    assert device_of["block0_concat"] == device_of["stem"] == "cpu:0"
    assert [s.device for s in stages] == ["cpu:1", "cpu:2", "cpu:0"]


def test_branch_placement_needs_parallel_paths():
    residual = chain(1, 1) + [LayerInfo("add", inputs=("l0", "l1"))]  # one path and a skip: no parallel branches
    for layers in (mlp(), residual):
        with pytest.raises(ConfigError, match=r"strategy\.placement\.kind: branches needs a model with independent "
                           r"parallel paths .*use kind: auto or stages\. Received: strategy\.placement\.kind='branches'"):
            branch_stages(layers, CPU)


# ---------------------------------------------------------------- the table
def test_stage_table_bytes_balance_and_idle_fraction():
    stages = auto_stages(mlp(), CPU[:2])
    table = stage_table(mlp(), stages, microbatches=4)
    rows = table["stages"]
    assert [r["device"] for r in rows] == ["cpu:0", "cpu:1"]
    assert [r["params"] for r in rows] == [8320, 8906]
    assert [r["parameter_bytes"] for r in rows] == [33280, 35624]
    assert [r["sends_bytes_per_example"] for r in rows] == [512, 0]  # hidden_0's 128 floats go to stage 1
    assert table["balance"] == pytest.approx(35624 / ((33280 + 35624) / 2))
    assert table["idle_fraction"] == pytest.approx((2 - 1) / (4 + 2 - 1))
    assert stage_table(mlp(), stages, microbatches=1)["idle_fraction"] == pytest.approx(1 / 2)


def test_stage_table_counts_a_tensor_once_per_reading_stage():
    table = stage_table(inception(1), branch_stages(inception(1), CPU), pipelined=False)
    # The trunk sends the stem's output to devices 1, 2, 3 (device 0 reads it itself); each branch sends its 1x1 or
    # 3x3/5x5 output to the concatenation on device 0.
    assert [r["sends_bytes_per_example"] for r in table["stages"]] == [3 * 4096, 1024, 1024, 1024]
    assert table["idle_fraction"] is None


@pytest.mark.timeout(60)
def test_the_planning_module_does_not_start_tensorflow():
    code = "import sys, paradl_tf.model_parallel.placement; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr
