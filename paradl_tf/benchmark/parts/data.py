"""The data part: the same examples read from TFRecord shards and from memory (input, training, peak memory)."""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from paradl_tf import cluster as cl
from paradl_tf.benchmark.budgets import Budget
from paradl_tf.benchmark.figures import paired_ratio, stat, summarize_train
from paradl_tf.benchmark.methods import BASELINE, METHOD_BY_NAME
from paradl_tf.benchmark.modes import Mode
from paradl_tf.benchmark.parts import Bench
from paradl_tf.benchmark.processes import remove_tree, run_interleaved, run_worker
from paradl_tf.benchmark.specs import Spec, build_config, devices_for, steps_for, train_spec
from paradl_tf.benchmark.workloads import Workload, input_shape, model_cost
from paradl_tf.errors import ParadlError


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


# The memory rows' model: cheap per example, so one pass over ~1 GB of images takes seconds, not minutes.
_RSS_MODEL = {"kind": "mlp", "hidden": [64]}
PLANS: dict[str, DataPlan] = {
    # 32x32x3 float32 images are 12.3 KB a record: 87,000 are 1.07 GB of shards, 1,700 are 21 MB.
    "full": DataPlan(("mlp", "cnn"), shards=8, input_batches=200, input_rounds=5, reps=3, rss_shape=(32, 32, 3),
                     rss_small=1_700, rss_big=87_000, rss_shards=16, rss_model=_RSS_MODEL, rss_batch=128),
    "quick": DataPlan(("mlp", "cnn"), shards=8, input_batches=100, input_rounds=3, reps=1, rss_shape=(32, 32, 3),
                      rss_small=1_700, rss_big=17_000, rss_shards=8, rss_model=_RSS_MODEL, rss_batch=128),
    "tiny": DataPlan(("mlp",), shards=4, input_batches=20, input_rounds=2, reps=1, rss_shape=(8, 8, 3),
                     rss_small=256, rss_big=2_048, rss_shards=4, rss_model={"kind": "mlp", "hidden": [16]},
                     rss_batch=64),
}
"""The data part's settings per mode."""

RSS_TARGET_BYTES = 150 << 20
TRAIN_TARGET = 0.95


def run(bench: Bench, budget: Budget) -> None:
    """Write the shards into a temporary folder (removed on every path), then measure input, training and memory
    (see DataPlan); adds the training and memory rows, and results.json's `data` entry."""
    mode, machine, out, log = bench.mode, bench.machine, bench.out, bench.log
    plan, t0 = PLANS[mode.name], time.perf_counter()
    root = tempfile.mkdtemp(prefix="paradl_bench_data_")
    log(f"data section (files against memory): shards written to {root} (removed at the end), "
        f"budget {budget.seconds:.0f} s")
    try:
        specs = data_specs(mode, machine, root, bench.virtual_gpus, bench.gpu_memory_mb)
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
        remove_tree(root)
    rows = [summarize_train(s, bench.peak_flops(), _data_flops(mode, s)) for s in train + memory]
    bench.rows += rows
    bench.entries["data"] = {**data_summary(mode, shards, inputs, rows, budget, time.perf_counter() - t0),
                             "service": service, "folder": root}


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
    shape, classes = (list(PLANS[mode.name].rss_shape), 10) if spec.key[0] == "data_memory" else \
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


def data_summary(mode: Mode, shards: dict, inputs: list[dict], rows: list[dict], budget: Budget,
                 wall: float) -> dict:
    """results.json's `data` section: the shards, input alone, training ratios, memory, the service's place."""
    plan = PLANS[mode.name]
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
        "budget_s": budget.seconds,
        "wall_seconds": wall,
    }


def files_data(root: str) -> dict:
    """The data section of a config reading the shards under `root` (shape and classes from metadata.json)."""
    return {"kind": "tfrecord", "train_files": f"{root}/train-*.tfrecord",
            "validation_files": f"{root}/validation-*.tfrecord"}


def data_specs(mode: Mode, machine: dict, root: str, virtual_gpus: bool = False,
               gpu_memory_mb: int = 0) -> dict[str, Any]:
    """Every process of the data section, with the shards under `root` that they read: `write` (the worker spec
    that writes them all, one job per name), `input` (one worker spec per workload), `train` and `memory` (Specs)."""
    plan, method = PLANS[mode.name], METHOD_BY_NAME[BASELINE]
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
            train.append(train_spec(("data", wname, method.name, "toolkit", source), cfg, method, plan.reps))
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
        memory.append(train_spec(("data_memory", "images", method.name, "toolkit", row), cfg, method, 1))
    return {"write": {"kind": "data_write", "jobs": write}, "input": input_, "train": train, "memory": memory}


def _rss_images(plan: DataPlan) -> dict:
    return {"kind": "synthetic_images", "image_shape": list(plan.rss_shape), "num_classes": 10}
