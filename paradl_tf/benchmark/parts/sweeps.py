"""The sweeps: global batch size and model width, for one device and the best strategy of the main table."""

from __future__ import annotations

from paradl_tf.benchmark.budgets import Budget
from paradl_tf.benchmark.figures import best_strategies, summarize_train
from paradl_tf.benchmark.methods import BASELINE, METHOD_BY_NAME
from paradl_tf.benchmark.modes import Mode
from paradl_tf.benchmark.parts import Bench
from paradl_tf.benchmark.processes import run_interleaved
from paradl_tf.benchmark.specs import Spec, build_config, devices_for, forward_flops, steps_for, train_spec
from paradl_tf.benchmark.workloads import Workload


def run(bench: Bench, budget: Budget) -> None:
    best = best_strategies(bench.rows, bench.mode)
    sweeps = sweep_specs(bench.mode, bench.machine, best, bench.virtual_gpus, bench.gpu_memory_mb)
    bench.log(f"sweeps (batch, width) for one device and the best strategy {best}: {len(sweeps)} measurements")
    run_interleaved(sweeps, bench.out, bench.mode, budget, bench.log)
    bench.rows += [summarize_train(s, bench.peak_flops(), forward_flops(s)) for s in sweeps]


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
                specs.append(train_spec(("batch", wname, method.name, impl, batch), cfg, method, mode.sweep_reps))
            for width in widths(workload, mode):
                if width == workload.width:
                    continue
                steps = steps_for(workload, mode, workload.batch, width, machine["device_type"])
                cfg = build_config(workload, method, devices, workload.batch, width, steps, mode.epochs)
                specs.append(train_spec(("width", wname, method.name, impl, width), cfg, method, mode.sweep_reps))
    return specs


def widths(workload: Workload, mode: Mode) -> list[int]:
    return [max(1, round(workload.width * f)) for f in mode.width_factors]
