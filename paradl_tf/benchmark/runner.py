"""Benchmarks: every method measured side by side against one device and against hand-written tf.distribute.

    paradl-tf bench --quick              # fewer repetitions and points: under 9 minutes on 2 cores
    paradl-tf bench --out=bench          # the full run: under 66 minutes on 2 cores
    paradl-tf bench --parts=sections     # some parts only (PARTS: main, sections, sweeps, data)
    make bench

    from paradl_tf.benchmark.runner import run_bench
    results = run_bench(quick=True, out_dir="bench")   # the same, from Python

Writes <out>/results.json (machine, every figure as min/median/max), <out>/RESULTS.md (the
tables, with ratios) and <out>/*.png (throughput per method, scaling curves, pipeline curve).

How: every measurement is one fresh process (`python -m paradl_tf.benchmark.worker`), because
logical devices must be set before TensorFlow starts and a process keeps one layout. The
toolkit side builds everything with paradl_tf.prepare(cfg) and runs train()'s model.fit call
(parameter servers, MultiWorkerMirrored: paradl_tf.train, which starts the local cluster); the
hand-written side runs paradl_tf.benchmark.reference (plain tf.distribute + Keras, the same data,
model, optimizer; its own local cluster of processes on 127.0.0.1 where the toolkit starts one).
Parameter servers and MultiWorkerMirrored have a third side, `tutorial`: the same workload written as
TensorFlow's own tutorials write it (paradl_tf.benchmark.reference.TUTORIALS), toolkit / tutorial target 1.0.
Processes run one at a time, interleaved (A B C A B C ...), so slow drift of the machine hits
every method alike; each process trains one warm-up epoch (tracing) and then timed epochs.
A figure is the min/median/max over the timed epochs of all its processes (quick mode: one
process). A method that cannot run here is reported "not available", with why.

Beside the main table, sections vary one config key of the toolkit on a few workloads and methods
(`Section`): precision (float32, mixed_bfloat16, mixed_float16 where native; each row against the matmul
peak of the dtype it computes in) and threads (intra_op 1 against 2, against the physical cores' ceiling).
The data section (`DataPlan`, measured last on its own budget) reads the same examples from TFRecord shards and
from memory: the input pipeline alone, training files / memory, and peak RSS over ~1 GB against ~20 MB of shards.

Adding a method is one entry in METHODS; a workload, one entry in WORKLOADS; a section, one in a Mode.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil

from paradl_tf import cluster as cl
from paradl_tf.benchmark import report as bench_report
from paradl_tf.benchmark.worker import MARK
from paradl_tf.config import Config
from paradl_tf.errors import ConfigError, ParadlError

# ================================================================ workloads
Widen = Callable[[dict, int], dict]


@dataclass(frozen=True)
class Workload:
    """A reference model and its data; `width` is swept by `widen(model, width)`."""

    name: str
    title: str
    model: dict
    data: dict
    steps: int
    """Steps per epoch at the default batch and width (full mode); scaled so every epoch does similar work."""
    width: int
    """The default width (MLP: first hidden layer; CNN: filters of the last conv; inception: branch filters)."""
    widen: Widen
    batch: int = 64
    sweep_data: dict | None = None
    """Data for the batch sweep (enough examples for the largest batch); default: `data`."""


def _mlp_width(model: dict, w: int) -> dict:
    return {**model, "hidden": [w, max(w // 2, 1)]}


def _cnn_width(model: dict, w: int) -> dict:
    return {**model, "filters": [max(w // 2, 1), w]}


def _inception_width(model: dict, w: int) -> dict:
    return {**model, "branch_filters": w}


def _wide_mlp_width(model: dict, w: int) -> dict:
    return {**model, "hidden": [w, w]}


_TABULAR_64 = {"kind": "synthetic_tabular", "features": 64, "num_classes": 10, "train_examples": 4096,
               "validation_examples": 128}
_IMAGES_32 = {"kind": "synthetic_images", "image_shape": [32, 32, 3], "num_classes": 10, "train_examples": 4096,
              "validation_examples": 128}

WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    Workload("mlp", "digits MLP (8x8 images, hidden 128-64)", {"kind": "mlp", "hidden": [128, 64]},
             {"kind": "digits", "validation_split": 0.1}, steps=200, width=128, widen=_mlp_width,
             sweep_data=_TABULAR_64),
    Workload("cnn", "small CNN (32x32x3 synthetic images, filters 32-64)",
             {"kind": "cnn", "filters": [32, 64], "kernel_size": 3, "dense": 128}, _IMAGES_32, steps=30, width=64,
             widen=_cnn_width),
    Workload("inception", "inception-style (32x32x3 synthetic images, 2 blocks of 4 branches)",
             {"kind": "inception", "stem_filters": 32, "blocks": 2, "branch_filters": 16}, _IMAGES_32, steps=12,
             width=16, widen=_inception_width),
    # Compute-bound where the digits MLP is dispatch-bound (0.2 ms steps): the precision section's MLP.
    Workload("mlp_wide", "wide MLP (256 features, hidden 1024-1024)", {"kind": "mlp", "hidden": [1024, 1024]},
             {**_TABULAR_64, "features": 256}, steps=60, width=1024, widen=_wide_mlp_width, batch=256),
]}

# Small enough for a test to run the whole pipeline in about a minute.
TINY_WORKLOADS: dict[str, Workload] = {w.name: w for w in [
    Workload("mlp", "tiny MLP (digits, hidden 16-8)", {"kind": "mlp", "hidden": [16, 8]},
             {"kind": "digits", "validation_split": 0.1}, steps=10, width=16, widen=_mlp_width, batch=32,
             sweep_data={**_TABULAR_64, "train_examples": 256, "validation_examples": 32}),
]}


# ================================================================ methods
@dataclass(frozen=True)
class Method:
    """One way to train: the toolkit's `strategy` section, the devices it needs, its hand-written reference."""

    name: str
    title: str
    group: str
    """baseline, sync (synchronous data parallel), async (parameter servers), model (model parallel), pipeline."""
    strategy: dict
    devices: int = 1
    """Logical devices (CPU) or GPUs this method needs in one process."""
    reference: str | None = None
    """Key of paradl_tf.benchmark.reference.REFERENCES; None: no hand-written reference yet (ratio n/a)."""
    tutorial: str | None = None
    """Key of paradl_tf.benchmark.reference.TUTORIALS: TensorFlow's tutorial-style code for this method, measured
    as a third side (ratio toolkit_over_tutorial); None: none."""
    workloads: tuple[str, ...] = ("mlp", "cnn")
    cluster: dict | None = None
    curve: tuple[str, int] | None = None
    """(curve name, x): a point of a curve plotted against x, e.g. ("pipeline", microbatches)."""
    todo: str | None = None
    """Set while the toolkit lacks this method: the runner reports it as not available, with this reason."""
    train: dict | None = None
    """Overrides of the `train` section, e.g. {"steps_per_execution": 16}."""


def _mirrored(n: int) -> Method:
    return Method(f"mirrored_{n}", f"MirroredStrategy, {n} device(s)", "sync", {"kind": "mirrored", "devices": n},
                  devices=n, reference="mirrored")


def _model_parallel(n: int) -> Method:
    return Method(f"model_parallel_{n}", f"model parallel, {n} stages (auto, params)", "model",
                  {"kind": "model_parallel", "placement": {"kind": "auto", "devices": n}}, devices=n,
                  reference="model_parallel", curve=("pipeline", 1) if n == 2 else None)


def _pipeline(m: int) -> Method:
    return Method(f"pipeline_{m}", f"pipeline, 2 stages, {m} micro-batches", "pipeline",
                  {"kind": "model_parallel", "placement": {"kind": "auto", "devices": 2},
                   "pipeline": {"microbatches": m}}, devices=2, reference="model_parallel", workloads=("cnn",),
                  curve=("pipeline", m))


METHODS: list[Method] = [
    Method("no_strategy", "one device, no strategy", "baseline", {"kind": "default"}, reference="one_device",
           workloads=("mlp", "cnn", "inception")),
    _mirrored(1), _mirrored(2), _mirrored(4),
    # The MLP's steps are so short that dispatching each one costs as much as running it: several steps per
    # tf.function call remove that cost (tf_keras with 2+ replicas: Keras 3 crashes, keras-team/keras#19246).
    Method("no_strategy_spe16", "one device, no strategy, 16 steps per execution", "baseline",
           {"kind": "default"}, reference="one_device", workloads=("mlp",), train={"steps_per_execution": 16}),
    Method("mirrored_4_spe16", "MirroredStrategy, 4 device(s), 16 steps per execution", "sync",
           {"kind": "mirrored", "devices": 4}, devices=4, reference="mirrored", workloads=("mlp",),
           train={"steps_per_execution": 16}),
    Method("multi_worker_mirrored_2", "MultiWorkerMirroredStrategy, 2 local processes", "sync",
           {"kind": "multi_worker_mirrored"}, reference="multi_worker_mirrored", tutorial="multi_worker_mirrored",
           cluster={"resolver": "local", "mode": "process", "workers": 2, "private_network": "auto"}),
    Method("parameter_server", "parameter servers: 2 workers, 1 ps (local processes)", "async",
           {"kind": "parameter_server"}, reference="parameter_server", tutorial="parameter_server",
           cluster={"resolver": "local", "mode": "process", "workers": 2, "ps": 1, "private_network": "auto"}),
    _model_parallel(2), _model_parallel(4),
    _pipeline(2), _pipeline(4), _pipeline(8),
    Method("branches_4", "model parallel, inception branches on 4 devices", "model",
           {"kind": "model_parallel", "placement": {"kind": "branches", "devices": 4}}, devices=4,
           reference="model_parallel", workloads=("inception",)),
    # Model parallel inside data parallel, beside mirrored_4 and model_parallel_4 on the same 4 devices.
    Method("hybrid_2x2", "hybrid, 2 replica groups x 2 stages", "model",
           {"kind": "hybrid", "replicas": 2, "placement": {"kind": "auto", "devices": 2}}, devices=4,
           reference="hybrid"),
]
METHOD_BY_NAME = {m.name: m for m in METHODS}
BASELINE = "no_strategy"


# ================================================================ sections: one config key varied
@dataclass(frozen=True)
class Section:
    """A table beside the main one: the toolkit on workloads x methods with one config key set to each value in
    turn. Its processes run interleaved (every value once per round), so each row's ratio to the `baseline`
    value pairs processes of the same round."""

    name: str
    title: str
    key: tuple[str, ...]
    """Where the value goes in the config, e.g. ("train", "precision")."""
    values: tuple
    baseline: Any
    workloads: tuple[str, ...]
    methods: tuple[str, ...]


PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def _precision(workloads: tuple[str, ...], methods: tuple[str, ...]) -> Section:
    return Section("precision", "Precision: float32 against mixed precision", ("train", "precision"), PRECISIONS,
                   "float32", workloads, methods)


def _threads(workloads: tuple[str, ...]) -> Section:
    return Section("threads", "Threads: intra-op pool of 1 against 2 threads", ("devices", "threads", "intra_op"),
                   (1, 2), 1, workloads, (BASELINE,))


# ================================================================ the data section: files against memory
@dataclass(frozen=True)
class DataPlan:
    """The data section (issue 13): the same examples from TFRecord shards and from memory, on one device.

    input: examples/s of the training pipeline alone (no model), both sources in one process, interleaved;
    train: training examples/s from files against in memory (same model, batch, steps), processes interleaved;
    memory: peak RSS of a training process over `rss_big` examples of `rss_shape` images against `rss_small`
    (same model, `rss_steps` steps: one pass over the big set), each in its own process."""

    workloads: tuple[str, ...]
    shards: int
    input_batches: int
    """Batches per timed round of the input measurement (after as many for warm-up)."""
    input_rounds: int
    reps: int
    """Training processes per source."""
    rss_shape: tuple[int, ...]
    rss_small: int
    rss_big: int
    rss_shards: int
    rss_model: dict
    rss_batch: int
    budget_s: float
    """The section's own wall-clock budget (it runs after the sweeps, whose budget it does not share)."""


# ================================================================ modes
@dataclass(frozen=True)
class Mode:
    """How much to measure: which workloads and methods, how many processes, epochs and sweep points."""

    name: str
    workloads: dict[str, Workload]
    methods: dict[str, tuple[str, ...]]
    """workload -> methods measured in the main table (others are listed as skipped in this mode)."""
    reps: int
    sweep_reps: int
    epochs: int
    """Per process: one warm-up epoch, then epochs - 1 timed."""
    steps_scale: float
    batches: tuple[int, ...]
    width_factors: tuple[float, ...]
    """Swept widths, as multiples of each workload's default width."""
    sweep_workloads: tuple[str, ...]
    matmul_sizes: tuple[int, ...]
    budget_s: float
    """The main table's wall-clock budget: past it, the specs not yet run are reported as skipped."""
    timeout_s: float
    jobs: int = 1
    """Processes at a time. More than 1 only for tests: concurrent processes make the timings meaningless."""
    note: str = ""
    sections: tuple[Section, ...] = ()
    """Measured after the main table, `sweep_reps` processes per row."""
    sections_budget_s: float = 0.0
    sweeps_budget_s: float = 0.0
    """Each part after the main table has its own budget, so a slow main table cannot starve the sections."""
    data: DataPlan | None = None
    """The data section (files against memory), measured last."""


_ALL = tuple(m.name for m in METHODS)
# The memory rows' model: cheap per example, so one pass over ~1 GB of images takes seconds, not minutes.
_RSS_MODEL = {"kind": "mlp", "hidden": [64]}
MODES: dict[str, Mode] = {
    "full": Mode(
        "full", WORKLOADS, {w: _ALL for w in WORKLOADS}, reps=3, sweep_reps=2, epochs=4, steps_scale=1.0,
        batches=(64, 256, 1024, 2048), width_factors=(1, 2, 4), sweep_workloads=("mlp", "cnn"),
        matmul_sizes=(1024, 2048, 4096), budget_s=38 * 60, timeout_s=300,
        note="3 processes per figure (2 per sweep point and section row), each 1 warm-up epoch + 3 timed epochs: "
             "a figure is the min/median/max of 9 timed epochs (6 per sweep point and section row)",
        sections=(_precision(("cnn", "mlp_wide"), (BASELINE, "mirrored_2", "model_parallel_2")),
                  _threads(("mlp", "cnn"))), sections_budget_s=8 * 60, sweeps_budget_s=8 * 60,
        # 32x32x3 float32 images are 12.3 KB a record: 87,000 are 1.07 GB of shards, 1,700 are 21 MB.
        data=DataPlan(("mlp", "cnn"), shards=8, input_batches=200, input_rounds=5, reps=3, rss_shape=(32, 32, 3),
                      rss_small=1_700, rss_big=87_000, rss_shards=16, rss_model=_RSS_MODEL, rss_batch=128,
                      budget_s=12 * 60)),
    "quick": Mode(
        "quick", WORKLOADS, {"mlp": ("no_strategy", "mirrored_2", "multi_worker_mirrored_2", "model_parallel_2"),
                             "cnn": ("no_strategy", "mirrored_2", "pipeline_4")},
        reps=1, sweep_reps=1, epochs=3, steps_scale=0.5, batches=(64, 512), width_factors=(1, 4),
        sweep_workloads=("mlp",), matmul_sizes=(2048, 4096), budget_s=200, timeout_s=120,
        note="QUICK MODE: 1 process per figure, min/median/max over its 2 timed epochs; fewer methods, "
             "sweep points and section rows. Run without --quick for the real figures (3 processes per figure)",
        sections=(_precision(("cnn", "mlp_wide"), (BASELINE,)), _threads(("mlp", "cnn"))), sections_budget_s=90,
        sweeps_budget_s=45,
        data=DataPlan(("mlp", "cnn"), shards=8, input_batches=100, input_rounds=3, reps=1, rss_shape=(32, 32, 3),
                      rss_small=1_700, rss_big=17_000, rss_shards=8, rss_model=_RSS_MODEL, rss_batch=128,
                      budget_s=180)),
    "tiny": Mode(
        "tiny", TINY_WORKLOADS, {"mlp": ("no_strategy", "mirrored_2", "model_parallel_2")}, reps=1, sweep_reps=1,
        epochs=2, steps_scale=1.0, batches=(32, 64), width_factors=(0.5, 1), sweep_workloads=("mlp",),
        matmul_sizes=(256,), budget_s=180, timeout_s=150, jobs=2,
        note="TINY MODE (tests): tiny models, processes run 2 at a time; the speeds mean nothing",
        sections=(_precision(("mlp",), (BASELINE,)), _threads(("mlp",))), sections_budget_s=60, sweeps_budget_s=60,
        data=DataPlan(("mlp",), shards=4, input_batches=20, input_rounds=2, reps=1, rss_shape=(8, 8, 3),
                      rss_small=256, rss_big=2_048, rss_shards=4, rss_model={"kind": "mlp", "hidden": [16]},
                      rss_batch=64, budget_s=120)),
}

TARGETS = {
    "toolkit_over_reference": 0.98,
    "toolkit_over_tutorial": 1.0,  # issue 14: parameter servers and MultiWorkerMirrored against TF's tutorials
    "vs_one_device": {("mirrored_2", "cnn"): 0.9, ("mirrored_4", "cnn"): 0.9, ("mirrored_2", "mlp"): 0.6,
                      ("mirrored_4", "mlp"): 0.6, ("parameter_server", "cnn"): 0.8,
                      ("multi_worker_mirrored_2", "cnn"): 0.8},
}

# ================================================================ model cost, from the config alone
def model_cost(model: dict, input_shape: Sequence[int], classes: int) -> dict[str, int]:
    """Parameters and forward FLOPs per example (2 per multiply-add) of a paradl_tf model config.

    Counts the matmuls and convolutions, which dominate; activations and pooling are left out.
    A training step costs about 3x the forward pass (forward, gradients of inputs and of weights)."""
    model = with_defaults("model", model)
    kind = model["kind"]
    if kind == "mlp":
        sizes = [int(_prod(input_shape)), *model["hidden"], classes]
        params = sum(a * b + b for a, b in zip(sizes, sizes[1:]))
        return {"params": params, "forward_flops": sum(2 * a * b for a, b in zip(sizes, sizes[1:]))}
    h, w, c = input_shape
    layers: list[tuple[int, int, int, int]] = []  # (kernel, c_in, c_out, output positions)
    if kind == "cnn":
        k = model["kernel_size"]
        for filters in model["filters"]:
            layers.append((k, c, filters, h * w))
            c = filters
            if h >= 2 and w >= 2:
                h, w = h // 2, w // 2
        layers += [(1, h * w * c, model["dense"], 1), (1, model["dense"], classes, 1)]
    elif kind == "inception":
        f, stem = model["branch_filters"], model["stem_filters"]
        r, hw = f // 2 or 1, h * w
        layers.append((3, c, stem, hw))
        c = stem
        for _ in range(model["blocks"]):
            layers += [(1, c, f, hw), (1, c, r, hw), (3, r, f, hw), (1, c, r, hw), (5, r, f, hw), (1, c, f, hw)]
            c = 4 * f
        layers.append((1, c, classes, 1))
    else:
        raise ValueError(f"no cost model for model kind {kind!r}")
    params = sum(k * k * ci * co + co for k, ci, co, _ in layers)
    return {"params": params, "forward_flops": sum(2 * k * k * ci * co * n for k, ci, co, n in layers)}


def with_defaults(section: str, value: dict) -> dict:
    """A config section as a dict with every default filled in, from the config schema."""
    return getattr(Config.model_validate({section: value}), section).model_dump(mode="json")


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= int(v)
    return out


def input_shape(data: dict) -> tuple[list[int], int]:
    """(example shape, classes) of a paradl_tf data config."""
    data = with_defaults("data", data)
    if data["kind"] == "digits":
        return [8, 8, 1], 10
    if data["kind"] == "synthetic_images":
        return list(data["image_shape"]), data["num_classes"]
    if data["kind"] == "synthetic_tabular":
        return [data["features"]], data["num_classes"]
    raise ValueError(f"no shape for data kind {data['kind']!r}")


# ================================================================ specs: one process each
@dataclass
class Spec:
    """One measurement to repeat: a worker spec plus where its figure goes."""

    key: tuple
    """(section, workload, method, impl, x): section main, batch or width."""
    worker: dict
    reps: int
    results: list[dict] = field(default_factory=list)


def build_config(workload: Workload, method: Method, devices: dict, batch: int, width: int, steps: int,
                 epochs: int, data: dict | None = None) -> dict:
    """The paradl_tf config (as a dict) of one measurement."""
    cfg = {
        "devices": devices,
        "strategy": copy.deepcopy(method.strategy),
        "model": workload.widen(copy.deepcopy(workload.model), width),
        "data": copy.deepcopy(data or workload.data),
        "train": {"epochs": epochs, "steps_per_epoch": steps, "global_batch_size": batch, "optimizer": "adam",
                  "learning_rate": 1e-3, "seed": 0, "steps_per_execution": 1, "verbose": 0},
    }
    cfg["train"].update(method.train or {})
    if method.cluster:
        cfg["cluster"] = copy.deepcopy(method.cluster)
    return cfg


GPU_STEPS_SCALE = 10  # a GPU runs these small models' steps about this much faster than 2 CPU cores


def steps_for(workload: Workload, mode: Mode, batch: int, width: int, device_type: str = "CPU") -> int:
    """Steps per epoch so that each epoch does about the work of the default batch and width."""
    shape, classes = input_shape(workload.data)
    base = model_cost(workload.widen(workload.model, workload.width), shape, classes)["forward_flops"]
    here = model_cost(workload.widen(workload.model, width), shape, classes)["forward_flops"]
    work = (workload.batch * base) / (batch * here)
    scale = mode.steps_scale * (GPU_STEPS_SCALE if device_type == "GPU" else 1)
    return max(3, round(workload.steps * scale * min(work, 1.0)))


def devices_for(method: Method, machine: dict, virtual_gpus: bool, gpu_memory_mb: int) -> dict:
    """The `devices` section: logical CPUs on a CPU machine; the real GPUs (split only if asked) on a GPU one."""
    if machine["device_type"] == "CPU":
        return {"type": "CPU", "count": method.devices}
    if virtual_gpus and method.devices > 1:
        return {"type": "GPU", "count": method.devices, "memory_limit_mb": gpu_memory_mb}
    return {"type": "GPU", "count": 1}


def unavailable(method: Method, workload: Workload, machine: dict, virtual_gpus: bool) -> str | None:
    """Why `method` cannot run here (None: it can): a TODO entry, a method the toolkit rejects, too few GPUs."""
    if method.todo:
        return method.todo
    if machine["device_type"] == "GPU" and not virtual_gpus and method.devices > len(machine["gpus"]):
        return f"needs {method.devices} GPUs, this machine has {len(machine['gpus'])} (run with virtual GPUs to split one)"
    cfg = build_config(workload, method, {"type": "CPU", "count": method.devices}, workload.batch, workload.width,
                       3, 2)
    return config_error(cfg)


def config_error(cfg: dict) -> str | None:
    """The toolkit's own one-line error for a config dict, or None if it validates (no TensorFlow needed)."""
    import yaml

    from paradl_tf.config import load_config
    from paradl_tf.errors import ParadlError

    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(cfg, f)
    try:
        load_config(f.name)
        return None
    except ParadlError as exc:
        return f"the toolkit rejects it: {exc}"
    finally:
        os.unlink(f.name)


def resolved_keras(cfg: dict) -> str:
    """The Keras the toolkit picks for this config (keras: auto); the hand-written reference uses the same one."""
    from paradl_tf.builders.keras_version import resolve_keras

    strategy = cfg["strategy"]
    replicas = strategy.get("devices", 1) if strategy["kind"] == "mirrored" else 1
    return resolve_keras("auto", strategy["kind"], replicas, cfg["train"]["steps_per_execution"])


def _train_spec(key: tuple, cfg: dict, method: Method, reps: int) -> Spec:
    impl = key[3]
    worker = {"kind": "train", "impl": impl, "config": cfg, "keras": resolved_keras(cfg), "reference": method.reference,
              "tutorial": method.tutorial}
    return Spec(key, worker, reps)


def main_specs(mode: Mode, machine: dict, virtual_gpus: bool, gpu_memory_mb: int,
               only: Sequence[str] | None = None) -> tuple[list[Spec], list[dict]]:
    """The main table's specs, and a row for each method that will not run here (not available / skipped).
    only: the methods to measure (`--methods`); the others are left out of this run's results."""
    specs, missing = [], []
    for wname, workload in mode.workloads.items():
        for method in METHODS:
            if wname not in method.workloads or (only and method.name not in only):
                continue
            why, status = unavailable(method, workload, machine, virtual_gpus), "not available"
            if why is None and method.name not in mode.methods.get(wname, ()):
                why, status = f"skipped in {mode.name} mode", "skipped"
            if why:
                missing.append({"section": "main", "workload": wname, "method": method.name, "impl": None,
                                "status": status, "why": why})
                continue
            devices = devices_for(method, machine, virtual_gpus, gpu_memory_mb)
            steps = steps_for(workload, mode, workload.batch, workload.width, machine["device_type"])
            cfg = build_config(workload, method, devices, workload.batch, workload.width, steps, mode.epochs)
            impls = [impl for impl, side in (("toolkit", True), ("reference", method.reference),
                                             ("tutorial", method.tutorial)) if side]
            specs += [_train_spec(("main", wname, method.name, impl, None), cfg, method, mode.reps) for impl in impls]
    return specs, missing


def sweep_specs(mode: Mode, machine: dict, best: dict[str, str], virtual_gpus: bool,
                gpu_memory_mb: int) -> list[Spec]:
    """Batch and width sweeps for one device (hand-written, no strategy) and the best strategy of each workload.

    A point that equals the main table's configuration is not run again: it is taken from there."""
    specs = []
    for wname in mode.sweep_workloads:
        workload = mode.workloads[wname]
        runs = [(METHOD_BY_NAME[BASELINE], "reference")]
        if best.get(wname) and best[wname] != BASELINE:
            runs.append((METHOD_BY_NAME[best[wname]], "toolkit"))
        for method, impl in runs:
            devices = devices_for(method, machine, virtual_gpus, gpu_memory_mb)
            for batch in mode.batches:
                if batch == workload.batch or batch % method.devices:
                    continue
                steps = steps_for(workload, mode, batch, workload.width, machine["device_type"])
                data = workload.sweep_data or workload.data
                cfg = build_config(workload, method, devices, batch, workload.width, steps, mode.epochs, data)
                specs.append(_train_spec(("batch", wname, method.name, impl, batch), cfg, method, mode.sweep_reps))
            for width in widths(workload, mode):
                if width == workload.width:
                    continue
                steps = steps_for(workload, mode, workload.batch, width, machine["device_type"])
                cfg = build_config(workload, method, devices, workload.batch, width, steps, mode.epochs)
                specs.append(_train_spec(("width", wname, method.name, impl, width), cfg, method, mode.sweep_reps))
    return specs


def section_specs(mode: Mode, machine: dict, virtual_gpus: bool,
                  gpu_memory_mb: int) -> tuple[list[Spec], list[dict]]:
    """Every section's specs (key: (section, workload, method, "toolkit", value)), and a row for each value or
    method that cannot run here."""
    specs, missing = [], []
    for section in mode.sections:
        for wname in section.workloads:
            workload = mode.workloads[wname]
            for method in map(METHOD_BY_NAME.__getitem__, section.methods):
                devices = devices_for(method, machine, virtual_gpus, gpu_memory_mb)
                steps = steps_for(workload, mode, workload.batch, workload.width, machine["device_type"])
                for value in section.values:
                    cfg = build_config(workload, method, copy.deepcopy(devices), workload.batch, workload.width,
                                       steps, mode.epochs)
                    _set_key(cfg, section.key, value)
                    why = (unavailable(method, workload, machine, virtual_gpus)
                           or section_unavailable(section, value, machine) or config_error(cfg))
                    if why:
                        missing.append({"section": section.name, "workload": wname, "method": method.name,
                                        "impl": "toolkit", "x": value, "status": "not available", "why": why})
                        continue
                    key = (section.name, wname, method.name, "toolkit", value)
                    specs.append(_train_spec(key, cfg, method, mode.sweep_reps))
    return specs, missing


def _set_key(cfg: dict, key: tuple[str, ...], value) -> None:
    for part in key[:-1]:
        cfg = cfg.setdefault(part, {})
    cfg[key[-1]] = value


def section_unavailable(section: Section, value, machine: dict) -> str | None:
    """Why a section's value is not measured here: float16 without native support (TensorFlow emulates it on
    such CPUs, slower than float32: a figure of the emulation, not of mixed precision), more threads than cores."""
    if section.name == "precision" and value == "mixed_float16" and not machine.get("native_float16"):
        return (f"no native float16 on this {machine['device_type']} (TensorFlow would emulate it, slower than "
                "float32); mixed_bfloat16 is the choice here")
    if section.name == "threads" and value > (machine.get("cpus_usable") or 1):
        return f"{value} threads on {machine.get('cpus_usable')} usable cores"
    return None


def compute_dtype(precision: str) -> str:
    """The dtype a precision policy computes in, whose matmul peak its rows are measured against."""
    return {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}.get(precision, "float32")


def section_ratios(rows: list[dict], mode: Mode, machine: dict) -> list[dict]:
    """Per section row other than its baseline: value / baseline, paired by round; threads: also the ceiling
    (the physical cores the threads can use, against the baseline's) and how much of it the speed-up reaches."""
    index = {(r["section"], r["workload"], r["method"], r["x"]): r for r in rows if r.get("examples_per_sec")}
    cores = machine.get("cpu_cores_physical") or machine.get("cpus_usable") or 1
    out = []
    for section in mode.sections:
        for (name, workload, method, x), row in index.items():
            if name != section.name or x == section.baseline:
                continue
            ratio = paired_ratio(row, index.get((name, workload, method, section.baseline)))
            entry = {"section": name, "workload": workload, "method": method, "x": x, "baseline": section.baseline,
                     "over_baseline": ratio}
            if name == "threads":
                ceiling = min(x, cores) / min(section.baseline, cores)
                entry.update(ceiling=ceiling, of_ceiling=ratio["median"] / ceiling if ratio else None)
            out.append(entry)
    return out


def widths(workload: Workload, mode: Mode) -> list[int]:
    return [max(1, round(workload.width * f)) for f in mode.width_factors]


def matmul_spec(mode: Mode, reps: int, device_type: str = "auto", dtypes: Sequence[str] = ("float32",)) -> Spec:
    return Spec(("peak", None, "matmul", None, None),
                {"kind": "matmul", "sizes": list(mode.matmul_sizes), "device_type": device_type, "dtypes": list(dtypes),
                 "seconds_per_size": 1.0 if mode.name == "full" else 0.5}, reps)


# The matmul peaks measured: float32, and the compute dtypes of mixed precision (float16 where it is native).
PEAK_DTYPES = ("float32", "bfloat16", "float16")


# ================================================================ the data section
RSS_TARGET_BYTES = 150 << 20
TRAIN_TARGET = 0.95


def files_data(root: str) -> dict:
    """The data section of a config reading the shards under `root` (shape and classes from metadata.json)."""
    return {"kind": "tfrecord", "train_files": f"{root}/train-*.tfrecord",
            "validation_files": f"{root}/validation-*.tfrecord"}


def data_specs(mode: Mode, machine: dict, root: str, virtual_gpus: bool = False,
               gpu_memory_mb: int = 0) -> dict[str, Any]:
    """Every process of the data section, with the shards under `root` that they read: `write` (the worker spec
    that writes them all, one job per name), `input` (one worker spec per workload), `train` and `memory` (Specs)."""
    plan, method = mode.data, METHOD_BY_NAME[BASELINE]
    devices = devices_for(method, machine, virtual_gpus, gpu_memory_mb)
    write, input_, train = {}, {}, []
    for wname in plan.workloads:
        w = mode.workloads[wname]
        where = f"{root}/{wname}"
        write[wname] = {"out": where, "data": w.data, "shards": plan.shards}
        steps = steps_for(w, mode, w.batch, w.width, machine["device_type"])
        configs = {}
        for source, data in (("memory", w.data), ("files", files_data(where))):
            cfg = build_config(w, method, copy.deepcopy(devices), w.batch, w.width, steps, mode.epochs, data)
            configs[source] = cfg
            train.append(_train_spec(("data", wname, method.name, "toolkit", source), cfg, method, plan.reps))
        input_[wname] = {"kind": "input", "configs": configs, "warmup": plan.input_batches,
                         "batches": plan.input_batches, "rounds": plan.input_rounds}
    memory = []
    rss = Workload("rss", "memory rows", plan.rss_model, _rss_images(plan), steps=1, width=0,
                   widen=lambda m, _: m, batch=plan.rss_batch)
    steps = plan.rss_big // plan.rss_batch  # one pass over the big set; the small one is passed over many times
    for size, examples in (("small", plan.rss_small), ("big", plan.rss_big)):
        write[f"rss_{size}"] = {"out": f"{root}/rss_{size}", "stream": {
            "image_shape": list(plan.rss_shape), "num_classes": 10, "examples": examples,
            "validation_examples": 64, "shards": plan.rss_shards if size == "big" else 4}}
    # big_small_buffer: the big shards with the small set's example count as shuffle buffer, so that both hold
    # the same buffer and only the data's size differs (the default buffer, 10,000 records, holds all of the small
    # set's 1,700 and 10,000 of the big set's: that difference is the buffer's, whatever the data's size).
    for row, where, buffer in (("small", "rss_small", None), ("big", "rss_big", None),
                               ("big_small_buffer", "rss_big", plan.rss_small)):
        data = {**files_data(f"{root}/{where}"), **({"shuffle_buffer": buffer} if buffer else {})}
        cfg = build_config(rss, method, copy.deepcopy(devices), plan.rss_batch, 0, steps, 1, data)
        memory.append(_train_spec(("data_memory", "images", method.name, "toolkit", row), cfg, method, 1))
    return {"write": {"kind": "data_write", "jobs": write}, "input": input_, "train": train, "memory": memory}


def _rss_images(plan: DataPlan) -> dict:
    return {"kind": "synthetic_images", "image_shape": list(plan.rss_shape), "num_classes": 10}


def run_data_section(mode: Mode, machine: dict, out: Path, peak_flops: float | None, virtual_gpus: bool,
                     gpu_memory_mb: int, log: Callable[[str], None]) -> tuple[list[dict], dict]:
    """Write the shards into a temporary folder (removed on every path), then measure input, training and memory
    (see DataPlan). Returns the training and memory rows, and results.json's `data` section."""
    plan, t0 = mode.data, time.perf_counter()
    budget = Budget.start("data section", plan.budget_s)
    root = tempfile.mkdtemp(prefix="paradl_bench_data_")
    log(f"data section (files against memory): shards written to {root} (removed at the end), "
        f"budget {plan.budget_s:.0f} s")
    try:
        specs = data_specs(mode, machine, root, virtual_gpus, gpu_memory_mb)
        t = time.perf_counter()
        result = run_worker(specs["write"], out / "logs" / "data_write.log", mode.timeout_s)
        shards = {name: {"ok": bool(result.get("ok")), **(result.get("written") or {}).get(name, {}),
                         **({} if result.get("ok") else {"error": result.get("error")})}
                  for name in specs["write"]["jobs"]}
        log(f"  [{time.perf_counter() - t:5.1f} s] wrote " + (", ".join(
            f"{name} ({s['train_examples']:,} examples, {s['bytes'] / 1e6:,.1f} MB, {s['write_seconds']:.0f} s)"
            for name, s in shards.items()) if result.get("ok") else f"nothing: FAILED: {result.get('error')}"))
        inputs = []
        for wname, worker in specs["input"].items():
            if not shards[wname]["ok"] or time.monotonic() > budget.deadline:
                inputs.append({"workload": wname, "status": "skipped" if shards[wname]["ok"] else "failed"})
                continue
            t = time.perf_counter()
            result = run_worker(worker, out / "logs" / f"data_input_{wname}.log", mode.timeout_s)
            inputs.append(summarize_input(wname, result))
            log(f"  [{time.perf_counter() - t:5.1f} s] data input {wname}: " + (
                f"memory {inputs[-1]['memory']['median']:,.0f}, files {inputs[-1]['files']['median']:,.0f} examples/s"
                if result.get("ok") else f"FAILED: {result.get('error')}"))
        train = [s for s in specs["train"] if shards[s.key[1]]["ok"]]
        run_interleaved(train, out, mode, budget, log)
        memory = [s for s in specs["memory"] if shards[s.worker["config"]["data"]["train_files"].split("/")[-2]]["ok"]]
        run_interleaved(memory, out, mode, budget, log)
        service = run_service_row(plan, out, budget.deadline, mode.timeout_s, log)
    finally:
        _remove(root)
    rows = [summarize_train(s, peak_flops, _data_flops(mode, s)) for s in train + memory]
    return rows, {**data_summary(mode, shards, inputs, rows, time.perf_counter() - t0), "service": service,
                  "folder": root}


def run_service_row(plan: DataPlan, out: Path, deadline: float, timeout_s: float,
                    log: Callable[[str], None]) -> dict:
    """The tf.data service row (paradl_tf.benchmark.service) in its own process, inside a private network
    namespace where the kernel allows one: its dispatcher and data workers serve unauthenticated gRPC."""
    if time.monotonic() > deadline:
        return {"status": "skipped", "why": "the data section's budget was spent"}
    t, result = time.perf_counter(), out / "logs" / "data_service.json"
    result.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "paradl_tf.benchmark.service", f"--rounds={plan.input_rounds}",
            f"--batches={plan.input_batches}", f"--out={result}"]
    with open(out / "logs" / "data_service.log", "w") as stderr:
        try:
            code = cl.run_isolated(argv, timeout_s=timeout_s, stderr=stderr)
        except ParadlError as exc:
            code = str(exc)
    if code != 0 or not result.exists():
        log(f"  [{time.perf_counter() - t:5.1f} s] data service: FAILED ({code}); see logs/data_service.log")
        return {"status": "failed", "why": f"exit {code}; see logs/data_service.log"}
    row = {"status": "ok", **json.loads(result.read_text())}
    log(f"  [{time.perf_counter() - t:5.1f} s] data service: {row['service_over_in_process']:.2f} of in-process "
        f"input ({row['data_workers']} local data workers); estimate with remote data workers "
        f"{row['remote_estimate_examples_per_sec']:,.0f} examples/s")
    return row


def _data_flops(mode: Mode, spec: Spec) -> int:
    cfg = spec.worker["config"]
    shape, classes = (list(mode.data.rss_shape), 10) if spec.key[0] == "data_memory" else \
        input_shape(mode.workloads[spec.key[1]].data)
    return model_cost(cfg["model"], shape, classes)["forward_flops"]


def summarize_input(workload: str, result: dict) -> dict:
    """One workload's input figures: examples/s per source over the rounds, and files / memory round by round."""
    if not result.get("ok"):
        return {"workload": workload, "status": "failed", "why": result.get("error")}
    mem, files = result["examples_per_sec"]["memory"], result["examples_per_sec"]["files"]
    return {"workload": workload, "status": "ok", "memory": stat(mem), "files": stat(files),
            "files_over_memory": stat([f / m for f, m in zip(files, mem)]),
            "global_batch_size": result["global_batch_size"], "batches_per_round": result["batches_per_round"],
            "peak_rss_bytes": result.get("peak_rss_bytes")}


def data_summary(mode: Mode, shards: dict, inputs: list[dict], rows: list[dict], wall: float) -> dict:
    """results.json's `data` section: the shards, input alone, training ratios, memory, the service's place."""
    plan = mode.data
    index = {(r["section"], r["workload"], r["x"]): r for r in rows}
    train = []
    for wname in plan.workloads:
        files, memory = index.get(("data", wname, "files")), index.get(("data", wname, "memory"))
        train.append({"workload": wname, "memory": memory and memory.get("examples_per_sec"),
                      "files": files and files.get("examples_per_sec"),
                      "files_over_memory": paired_ratio(files, memory), "target": TRAIN_TARGET})
    rss = {}
    for name, size, n in (("small", "small", plan.rss_small), ("big", "big", plan.rss_big),
                          ("big_small_buffer", "big", plan.rss_big)):
        row = index.get(("data_memory", "images", name)) or {}
        rss[name] = {"examples": n, "bytes": shards.get(f"rss_{size}", {}).get("bytes"),
                     "shuffle_buffer": row.get("config", {}).get("data", {}).get("shuffle_buffer", "default"),
                     "peak_rss_bytes": row.get("peak_rss_bytes"), "status": row.get("status")}

    def over_small(name: str) -> float | None:
        a, b = rss[name]["peak_rss_bytes"], rss["small"]["peak_rss_bytes"]
        return a["median"] - b["median"] if a and b else None

    return {
        "shards": shards,
        "input": inputs,
        "train": train,
        "memory": {**rss, "difference_bytes": over_small("big"),
                   "difference_same_buffer_bytes": over_small("big_small_buffer"),
                   "target_bytes": RSS_TARGET_BYTES, "model": plan.rss_model,
                   "image_shape": list(plan.rss_shape), "global_batch_size": plan.rss_batch,
                   "steps": plan.rss_big // plan.rss_batch},
        "budget_s": plan.budget_s,
        "wall_seconds": wall,
    }


# ================================================================ running processes
def run_worker(worker: dict, log_path: Path, timeout_s: float) -> dict:
    """Run one bench_worker process; its result dict (ok False with the reason on any failure). Never leaves it running."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix="paradl_bench_")
    spec = {**worker, "run_dir": run_dir, "spawned_at": time.time()}
    argv = [sys.executable, "-m", "paradl_tf.benchmark.worker", "--spec=" + json.dumps(spec)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": _package_root()}
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                                start_new_session=True, preexec_fn=cl.preexec_die_with_parent())
        _RUNNING.add(proc)
        try:
            stdout, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return {"ok": False, "error": f"timed out after {timeout_s:.0f} s and was killed; log: {log_path}"}
        finally:
            _kill(proc)
            _RUNNING.discard(proc)
            _remove(run_dir)
    wall = time.perf_counter() - start
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARK):
            return {**json.loads(line[len(MARK):]), "process_wall_seconds": wall}
    return {"ok": False, "error": f"the worker exited with status {proc.returncode} without a result; log: {log_path}",
            "process_wall_seconds": wall}


_RUNNING: set[subprocess.Popen] = set()  # worker processes now running (several only in tiny mode)


def _kill(proc: subprocess.Popen) -> None:
    """Kill the worker and everything it started (its session, then any descendant that left it)."""
    processes = [proc.pid, *(c.pid for c in cl.descendants(proc.pid))]
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the session, even after the worker exited
        os.killpg(proc.pid, signal.SIGKILL)
    cl.kill_tree([p for pid in processes if (p := _process(pid))], grace_s=0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _process(pid: int) -> psutil.Process | None:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid)
    return None


def _remove(path: str) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _package_root() -> str:
    root = str(Path(__file__).resolve().parents[1])
    return os.pathsep.join([root, os.environ["PYTHONPATH"]]) if os.environ.get("PYTHONPATH") else root


@dataclass(frozen=True)
class Budget:
    """A part's wall-clock budget: a process that would end past `deadline` is reported as skipped."""

    part: str
    seconds: float
    deadline: float

    @classmethod
    def start(cls, part: str, seconds: float) -> Budget:
        return cls(part, seconds, time.monotonic() + seconds)


def run_interleaved(specs: list[Spec], out: Path, mode: Mode, budget: Budget, log: Callable[[str], None]) -> None:
    """Round r runs repetition r of every spec, in order (A B C A B C ...); past the budget the rest are skipped."""
    rounds = max((s.reps for s in specs), default=0)
    for r in range(rounds):
        batch = [s for s in specs if s.reps > r]
        if mode.jobs > 1:
            with ThreadPoolExecutor(mode.jobs) as pool:
                try:
                    list(pool.map(lambda s: _run_one(s, r, out, mode, budget, log), batch))
                except BaseException:  # Ctrl-C or SIGTERM in this thread: stop the workers the others wait for
                    for proc in list(_RUNNING):
                        _kill(proc)
                    pool.shutdown(cancel_futures=True)
                    raise
        else:
            for spec in batch:
                _run_one(spec, r, out, mode, budget, log)


_WALLS: list[float] = []  # wall seconds of the processes run so far: what the next one will likely take
# The last wall of each method: a local cluster's processes take several times the median.
_METHOD_WALLS: dict[str, float] = {}


def _run_one(spec: Spec, r: int, out: Path, mode: Mode, budget: Budget, log: Callable[[str], None]) -> None:
    name = "_".join(str(k) for k in spec.key if k is not None)
    expected = _METHOD_WALLS.get(spec.key[2]) or (statistics.median(_WALLS) if _WALLS else 0.0)
    if time.monotonic() + expected > budget.deadline:
        spec.results.append({"ok": False, "skipped": True, "error": f"it would end past the {mode.name} mode's "
                             f"{budget.part} budget of {budget.seconds:.0f} s"})
        log(f"  skipped {name} #{r + 1}: time budget")
        return
    t = time.perf_counter()
    result = run_worker(spec.worker, out / "logs" / f"{_safe(name)}_{r}.log", mode.timeout_s)
    wall = time.perf_counter() - t
    _WALLS.append(wall)
    _METHOD_WALLS[spec.key[2]] = wall
    spec.results.append(result)
    status = "ok" if result.get("ok") else f"FAILED: {result.get('error')}"
    log(f"  [{wall:5.1f} s] {name} #{r + 1}: {_brief(result) if result.get('ok') else status}")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _brief(result: dict) -> str:
    if "matmul" in result:
        return "peak " + ", ".join(f"{d} {max(m['flops_per_sec']) / 1e9:.1f}" for d, m in result["matmul"].items()) \
            + " GFLOP/s"
    per_proc = _process_figures(result)
    return f"{per_proc['examples_per_sec']:.0f} examples/s, {per_proc['step_seconds'] * 1e3:.2f} ms/step"


# ================================================================ figures
def stat(values: Sequence[float]) -> dict[str, Any] | None:
    """min / median / max (and n, the samples) of the values; None when there are none."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values),
            "samples": values}


def _process_figures(result: dict) -> dict[str, float]:
    """Steady-state throughput of one process: the timed epochs (all but the first)."""
    timed = result["epoch_seconds"][1:] or result["epoch_seconds"]
    steps, batch = result["steps_per_epoch"], result["global_batch_size"]
    return {"examples_per_sec": steps * batch * len(timed) / sum(timed), "step_seconds": sum(timed) / (steps * len(timed))}


def _samples(results: list[dict]) -> tuple[list[float], list[float], list[str], str]:
    """Throughput and step-time samples and their keys: one per timed epoch of every process (key:
    "<round>.<epoch>"), so that 3 processes x 3 timed epochs give 9 repetitions after warm-up while
    the interleaving still spreads them over the whole run."""
    ok = [(i, r) for i, r in enumerate(results) if r.get("ok")]
    if not ok:
        return [], [], [], "none"
    throughput, step, keys = [], [], []
    for i, r in ok:
        timed = r["epoch_seconds"][1:] or r["epoch_seconds"]
        steps, batch = r["steps_per_epoch"], r["global_batch_size"]
        throughput += [steps * batch / t for t in timed]
        step += [t / steps for t in timed]
        keys += [f"{i}.{e}" for e in range(len(timed))]
    over = "timed epochs of one process" if len(ok) == 1 else f"timed epochs of {len(ok)} processes"
    return throughput, step, keys, over


def summarize_train(spec: Spec, peak: float | None, flops_per_example: int) -> dict[str, Any]:
    section, workload, method, impl, x = spec.key
    ok = [r for r in spec.results if r.get("ok")]
    errors = sorted({r["error"] for r in spec.results if not r.get("ok")})
    row: dict[str, Any] = {"section": section, "workload": workload, "method": method, "impl": impl, "x": x,
                           "processes": len(spec.results), "processes_ok": len(ok)}
    if not ok:
        skipped = all(r.get("skipped") for r in spec.results)
        return {**row, "status": "skipped" if skipped else "failed", "why": "; ".join(errors)}
    throughput, step, keys, over = _samples(spec.results)
    train_flops = 3 * flops_per_example
    failed = [r for r in spec.results if not r.get("ok") and not r.get("skipped")]
    row.update(
        # Processes the time budget did not reach are not failures: say which it was.
        status="ok" if not errors else "partly failed" if failed else "partly skipped (time budget)",
        samples_over=over,
        sample_keys=keys,
        examples_per_sec=stat(throughput),
        step_seconds=stat(step),
        train_flops_per_example=train_flops,
        flops_per_sec=stat([t * train_flops for t in throughput]),
        fraction_of_peak=stat([t * train_flops / peak for t in throughput]) if peak else None,
        startup={k: stat([r.get(k) for r in ok]) for k in
                 ("process_start_seconds", "import_seconds", "build_seconds", "first_epoch_seconds",
                  "cluster_start_seconds", "process_wall_seconds")},
        peak_rss_bytes=stat([r["peak_rss_bytes"] for r in ok]),
        train_accuracy=stat([r.get("train_accuracy") for r in ok]),
        children_peak_rss_bytes=stat([r.get("children_peak_rss_bytes") for r in ok]),
        keras=ok[0].get("keras"),
        replicas=ok[0].get("replicas"),
        global_batch_size=ok[0]["global_batch_size"],
        steps_per_epoch=ok[0]["steps_per_epoch"],
        config=spec.worker["config"],
    )
    if errors:
        row["why"] = "; ".join(errors)
    if ok[0].get("parameter_bytes_per_device"):
        row["parameter_bytes_per_device"] = ok[0]["parameter_bytes_per_device"]
    if ok[0].get("all_reduce_bytes_per_device") is not None:
        row["all_reduce_bytes_per_device"] = ok[0]["all_reduce_bytes_per_device"]
    if ok[0].get("params") is not None:
        row["params_counted_by_keras"] = ok[0]["params"]
    return row


def paired_ratio(a: dict | None, b: dict | None) -> dict | None:
    """a / b sample by sample: process against process of the same round (or epoch against epoch of the same
    index when each side is one process), as min/median/max."""
    if not (a and b and a.get("examples_per_sec") and b.get("examples_per_sec")):
        return None
    xs = dict(zip(a.get("sample_keys") or range(a["examples_per_sec"]["n"]), a["examples_per_sec"]["samples"]))
    ys = dict(zip(b.get("sample_keys") or range(b["examples_per_sec"]["n"]), b["examples_per_sec"]["samples"]))
    if a.get("samples_over") != b.get("samples_over"):  # one side lost processes: compare medians only
        return stat([a["examples_per_sec"]["median"] / b["examples_per_sec"]["median"]])
    return stat([xs[k] / ys[k] for k in xs if k in ys])


def ratios(rows: list[dict]) -> list[dict]:
    """Per workload and method: toolkit / hand-written, toolkit / tutorial-style (None where there is none), and
    toolkit / one device (hand-written, no strategy)."""
    index = {(r["workload"], r["method"], r["impl"]): r for r in rows if r["section"] == "main" and r.get("impl")}
    out = []
    for (workload, method, impl), row in index.items():
        if impl != "toolkit":
            continue
        baseline = index.get((workload, BASELINE, "reference"))
        target = TARGETS["vs_one_device"].get((method, workload))
        out.append({
            "workload": workload, "method": method,
            "toolkit_over_reference": paired_ratio(row, index.get((workload, method, "reference"))),
            "toolkit_over_reference_target": TARGETS["toolkit_over_reference"],
            "toolkit_over_tutorial": paired_ratio(row, index.get((workload, method, "tutorial"))),
            "toolkit_over_tutorial_target": TARGETS["toolkit_over_tutorial"],
            "vs_one_device": paired_ratio(row, baseline),
            "vs_one_device_target": target,
            "plain_tf_before": bench_report.PLAIN_TF_BEFORE.get((method, workload)),
        })
    return out


def best_strategy(rows: list[dict], workload: str) -> str | None:
    """The toolkit method other than the baselines with the highest median throughput on `workload`."""
    candidates = [r for r in rows if r["section"] == "main" and r["workload"] == workload and r["impl"] == "toolkit"
                  and METHOD_BY_NAME[r["method"]].group != "baseline" and r.get("examples_per_sec")]
    return max(candidates, key=lambda r: r["examples_per_sec"]["median"])["method"] if candidates else None


# ================================================================ the run
PARTS = ("main", "sections", "sweeps", "data")
"""What `paradl-tf bench --parts` can select, in the order they run; each has its own time budget."""


def check_selection(parts: Sequence[str], methods: Sequence[str] | None) -> None:
    """`--parts` and `--methods` name known parts and methods; a ConfigError (one line) otherwise."""
    if not parts or any(p not in PARTS for p in parts):
        raise ConfigError(f"--parts={','.join(parts)}: each part must be one of {', '.join(PARTS)}")
    unknown = [m for m in methods or () if m not in METHOD_BY_NAME]
    if unknown:
        raise ConfigError(f"--methods={','.join(methods)}: no method {unknown[0]!r}; the methods: "
                          f"{', '.join(METHOD_BY_NAME)}")


def run_bench(quick: bool = False, out_dir: str | Path = "bench", *, tiny: bool = False, reps: int | None = None,
              virtual_gpus: bool = False, gpu_memory_mb: int = 2048, parts: Sequence[str] = PARTS,
              methods: Sequence[str] | None = None, log: Callable[[str], None] = print) -> dict:
    """Measure every available method and write results.json, RESULTS.md and the plots to `out_dir`.

    quick: fewer processes, methods and points (under 9 minutes on 2 cores); tiny: tiny models, for tests.
    reps: processes per figure (default: the mode's). virtual_gpus: on a GPU machine, split GPU 0 into
    logical GPUs of gpu_memory_mb each for the multi-device methods (default: the real GPUs only).
    parts: which of PARTS to measure (the matmul peaks always are); the others are left out of the results.
    methods: the main table's methods to measure (names of METHODS; default: all)."""
    check_selection(parts, methods)
    mode = MODES["tiny" if tiny else "quick" if quick else "full"]
    if reps:
        mode = _with_reps(mode, reps)
    with _sigterm_interrupts():
        return _run_bench(mode, Path(out_dir), virtual_gpus, gpu_memory_mb, frozenset(parts), methods, log)


def _run_bench(mode: Mode, out: Path, virtual_gpus: bool, gpu_memory_mb: int, parts: frozenset[str],
               methods: Sequence[str] | None, log: Callable[[str], None]) -> dict:

    out.mkdir(parents=True, exist_ok=True)
    started, t0 = datetime.datetime.now(datetime.timezone.utc), time.perf_counter()
    budget = Budget.start("main table", mode.budget_s)
    _WALLS.clear()
    _METHOD_WALLS.clear()
    log(f"paradl-tf bench ({mode.name}): {mode.note}")
    log(f"parts: {', '.join(p for p in PARTS if p in parts)} (budgets: main table {mode.budget_s:.0f} s, sections "
        f"{mode.sections_budget_s:.0f} s, sweeps {mode.sweeps_budget_s:.0f} s, data "
        f"{mode.data.budget_s if mode.data else 0:.0f} s)")
    log("machine: the matmul peaks (float32, bfloat16, float16 where native; this process also finds the devices)")
    probe = matmul_spec(mode, 1, dtypes=PEAK_DTYPES)
    _run_one(probe, 0, out, mode, budget, log)
    machine = describe_machine(probe.results[0], virtual_gpus)
    dtypes = [d for d in PEAK_DTYPES if d != "float16" or machine["native_float16"]]

    specs, missing = main_specs(mode, machine, virtual_gpus, gpu_memory_mb, methods) if "main" in parts else ([], [])
    peak_spec = matmul_spec(mode, mode.reps - 1, machine["device_type"], dtypes)
    if "main" in parts:
        log(f"main table: {len(specs)} measurements x {mode.reps} process(es), interleaved")
    # Local clusters last in each round: they take several times longer, so a tight time budget skips them first.
    in_order = sorted(specs, key=lambda s: METHOD_BY_NAME[s.key[2]].cluster is not None)
    run_interleaved(in_order + ([peak_spec] if peak_spec.reps else []), out, mode, budget, log)
    all_peaks = Spec(peak_spec.key, peak_spec.worker, mode.reps, probe.results + peak_spec.results)
    peaks = {d: summarize_peak(all_peaks, d) for d in dtypes}
    peak = peaks["float32"]
    peak_flops = _median_flops(peak)
    rows = [summarize_train(s, peak_flops, _flops(s)) for s in specs]

    extra, not_here = section_specs(mode, machine, virtual_gpus, gpu_memory_mb) if "sections" in parts else ([], [])
    if extra:
        log(f"sections ({', '.join(s.name for s in mode.sections)}): {len(extra)} measurements x "
            f"{mode.sweep_reps} process(es), interleaved")
        run_interleaved(extra, out, mode, Budget.start("sections", mode.sections_budget_s), log)
    # A precision row against the peak of the dtype it computes in, a threads row against the float32 peak.
    rows += [summarize_train(s, _median_flops(peaks.get(compute_dtype(s.key[4]) if s.key[0] == "precision"
                                                        else "float32")), _flops(s)) for s in extra]
    missing += not_here

    best = {w: best_strategy(rows, w) for w in mode.sweep_workloads}
    if "sweeps" in parts:
        sweeps = sweep_specs(mode, machine, best, virtual_gpus, gpu_memory_mb)
        log(f"sweeps (batch, width) for one device and the best strategy {best}: {len(sweeps)} measurements")
        run_interleaved(sweeps, out, mode, Budget.start("sweeps", mode.sweeps_budget_s), log)
        rows += [summarize_train(s, peak_flops, _flops(s)) for s in sweeps]

    data = None
    if mode.data and "data" in parts:
        data_rows, data = run_data_section(mode, machine, out, peak_flops, virtual_gpus, gpu_memory_mb, log)
        rows += data_rows

    results = assemble(mode, started, machine, peaks, rows, missing, best, time.perf_counter() - t0)
    results["parts"] = [p for p in PARTS if p in parts]
    results["methods_selected"] = list(methods) if methods else None
    results["data"] = data
    results["files"] = bench_report.write_all(results, out)
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    log(bench_report.console_table(results))
    log(f"wrote {out / 'results.json'}, {out / 'RESULTS.md'} and {len(results['files']) - 1} plots "
        f"in {results['wall_seconds']:.0f} s")
    return results


def assemble(mode: Mode, started: datetime.datetime, machine: dict, peaks: dict[str, dict | None],
             rows: list[dict], missing: list[dict], best: dict, wall: float) -> dict[str, Any]:
    """The results dict that results.json holds."""
    return {
        "schema": 1,
        "created": started.isoformat(timespec="seconds"),
        "mode": mode.name,
        "repetitions": {"main": mode.reps, "sweeps": mode.sweep_reps, "epochs_per_process": mode.epochs,
                        "timed_epochs_per_process": mode.epochs - 1, "concurrent_processes": mode.jobs,
                        "note": mode.note},
        "machine": machine,
        "peak": peaks["float32"],
        "peaks": peaks,
        "workloads": _workload_table(mode),
        "methods": {m.name: {"title": m.title, "group": m.group, "devices": m.devices, "reference": m.reference,
                             "tutorial": m.tutorial, "todo": m.todo} for m in METHODS},
        "rows": rows + missing,
        "ratios": ratios(rows),
        "best_strategy": best,
        "sweeps": _sweep_curves(rows, best, mode),
        "pipeline": _pipeline_curve(rows),
        "sections": [{"name": s.name, "title": s.title, "key": ".".join(s.key), "values": list(s.values),
                      "baseline": s.baseline, "workloads": list(s.workloads), "methods": list(s.methods)}
                     for s in mode.sections],
        "section_ratios": section_ratios(rows, mode, machine),
        "targets": {"toolkit_over_reference": TARGETS["toolkit_over_reference"],
                    "toolkit_over_tutorial": TARGETS["toolkit_over_tutorial"],
                    "vs_one_device": [{"method": m, "workload": w, "target": t}
                                      for (m, w), t in TARGETS["vs_one_device"].items()]},
        "wall_seconds": wall,
    }


def _with_reps(mode: Mode, reps: int) -> Mode:
    from dataclasses import replace

    return replace(mode, reps=reps, sweep_reps=min(mode.sweep_reps, reps))


class _sigterm_interrupts:
    """SIGTERM raises KeyboardInterrupt while the benchmark runs, so the running worker is killed on the way out."""

    def __enter__(self):
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")


def _flops(spec: Spec) -> int:
    cfg = spec.worker["config"]
    shape, classes = input_shape(cfg["data"])
    return model_cost(cfg["model"], shape, classes)["forward_flops"]


def describe_machine(probe: dict, virtual_gpus: bool) -> dict[str, Any]:
    """Cores, memory, CPU model, TensorFlow and Keras versions, and the device kind the benchmark measures."""
    gpus = probe.get("gpus", []) if probe.get("ok") else []
    device_type = "GPU" if gpus else "CPU"
    if device_type == "CPU":
        layout = "logical CPUs: the one CPU split into N logical devices (tf.config.set_logical_device_configuration)"
    else:
        layout = "GPU 0 split into logical GPUs" if virtual_gpus else "the physical GPUs, no virtual devices"
    return {
        "cpu_model": _cpu_model(),
        "cpu_cores_logical": os.cpu_count(),
        "cpu_cores_physical": psutil.cpu_count(logical=False),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "tensorflow_version": probe.get("tensorflow_version"),
        "keras_version": probe.get("keras_version"),
        "tf_keras_version": probe.get("tf_keras_version"),
        "device_type": device_type,
        "device_kind": (", ".join(gpus) if gpus else _cpu_model()) or device_type,
        "gpus": gpus,
        "native_float16": bool(probe.get("native_float16")),
        "multi_device_layout": layout,
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def summarize_peak(spec: Spec, dtype: str = "float32") -> dict | None:
    """The matmul peak of one dtype over the probe processes that measured it."""
    ok = [r["matmul"][dtype] for r in spec.results if r.get("ok") and dtype in r.get("matmul", {})]
    if not ok:
        return None
    if len(ok) >= 2:
        samples, over = [max(r["flops_per_sec"]) for r in ok], "processes (best call of each)"
    else:
        samples, over = ok[0]["flops_per_sec"], "calls in one process"
    return {"flops_per_sec": stat(samples), "samples_over": over, "matmul_size": ok[0]["size"], "dtype": dtype,
            "device": ok[0]["device"], "how": f"tf.linalg.matmul of two n x n {dtype} matrices, 2 n^3 FLOPs per call"}


def _median_flops(peak: dict | None) -> float | None:
    return peak["flops_per_sec"]["median"] if peak else None


def _workload_table(mode: Mode) -> dict[str, Any]:
    out = {}
    for name, w in mode.workloads.items():
        shape, classes = input_shape(w.data)
        cost = model_cost(w.widen(w.model, w.width), shape, classes)
        out[name] = {"title": w.title, "model": w.widen(w.model, w.width), "data": w.data,
                     "global_batch_size": w.batch, "input_shape": shape, "classes": classes, **cost,
                     "train_flops_per_example": 3 * cost["forward_flops"]}
    return out


def _sweep_curves(rows: list[dict], best: dict[str, str | None], mode: Mode) -> dict[str, list[dict]]:
    """Per sweep (batch, width): a point per (workload, method, x), the main table's point included."""
    curves: dict[str, list[dict]] = {"batch": [], "width": []}
    main = {(r["workload"], r["method"], r["impl"]): r for r in rows if r["section"] == "main" and r.get("impl")}
    for wname in mode.sweep_workloads:
        w = mode.workloads[wname]
        for method, impl in [(BASELINE, "reference"), (best.get(wname), "toolkit")]:
            if not method:
                continue
            for section, default in (("batch", w.batch), ("width", w.width)):
                points = [r for r in rows if r["section"] == section and r["workload"] == wname
                          and r["method"] == method and r["impl"] == impl]
                if (wname, method, impl) in main:
                    points.append({**main[(wname, method, impl)], "x": default})
                for p in sorted(points, key=lambda p: p["x"]):
                    curves[section].append({"workload": wname, "method": method, "impl": impl, "x": p["x"],
                                            "status": p["status"], "examples_per_sec": p.get("examples_per_sec"),
                                            "flops_per_example": p.get("train_flops_per_example")})
    return curves


def _pipeline_curve(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        method = METHOD_BY_NAME.get(r["method"])
        if r["section"] == "main" and method and method.curve and method.curve[0] == "pipeline":
            out.append({"workload": r["workload"], "method": r["method"], "microbatches": method.curve[1],
                        "status": r["status"], "examples_per_sec": r.get("examples_per_sec")})
    return sorted(out, key=lambda p: (p["workload"], p["microbatches"]))
