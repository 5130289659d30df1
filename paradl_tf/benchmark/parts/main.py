"""The main table: every method on every workload, toolkit against hand-written (and tutorial-style) code."""

from __future__ import annotations

from typing import Sequence

from paradl_tf.benchmark.budgets import Budget
from paradl_tf.benchmark.figures import summarize_train
from paradl_tf.benchmark.machine import measure_peaks
from paradl_tf.benchmark.methods import METHOD_BY_NAME, METHODS
from paradl_tf.benchmark.modes import Mode
from paradl_tf.benchmark.parts import Bench
from paradl_tf.benchmark.specs import Spec, build_config, devices_for, forward_flops, steps_for, train_spec, unavailable


def run(bench: Bench, budget: Budget) -> None:
    """Measure the main table's specs interleaved with the matmul peaks' other processes (the same drift)."""
    mode = bench.mode
    specs, missing = main_specs(mode, bench.machine, bench.virtual_gpus, bench.gpu_memory_mb, bench.methods)
    bench.log(f"main table: {len(specs)} measurements x {mode.reps} process(es), interleaved")
    # Local clusters last in each round: they take several times longer, so a tight time budget skips them first.
    in_order = sorted(specs, key=lambda s: METHOD_BY_NAME[s.key[2]].cluster is not None)
    bench.peaks = measure_peaks(mode, bench.machine, bench.probe, in_order, bench.out, budget, bench.log)
    bench.rows += [summarize_train(s, bench.peak_flops(), forward_flops(s)) for s in specs]
    bench.missing += missing


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
            specs += [train_spec(("main", wname, method.name, impl, None), cfg, method, mode.reps) for impl in impls]
    return specs, missing
