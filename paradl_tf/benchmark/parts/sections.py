"""The sections: tables beside the main one that vary one config key (precision, threads) on a few methods."""

from __future__ import annotations

import copy

from paradl_tf.benchmark.budgets import Budget
from paradl_tf.benchmark.figures import paired_ratio, summarize_train
from paradl_tf.benchmark.methods import METHOD_BY_NAME
from paradl_tf.benchmark.modes import Mode, Section
from paradl_tf.benchmark.parts import Bench
from paradl_tf.benchmark.processes import run_interleaved
from paradl_tf.benchmark.specs import (Spec, build_config, config_error, devices_for, forward_flops, steps_for,
                                       train_spec, unavailable)


def run(bench: Bench, budget: Budget) -> None:
    """Measure every section's rows, interleaved; a precision row against the peak of the dtype it computes in, a
    threads row against the float32 peak."""
    mode = bench.mode
    specs, missing = section_specs(mode, bench.machine, bench.virtual_gpus, bench.gpu_memory_mb)
    if specs:
        bench.log(f"sections ({', '.join(s.name for s in mode.sections)}): {len(specs)} measurements x "
                  f"{mode.sweep_reps} process(es), interleaved")
        run_interleaved(specs, bench.out, mode, budget, bench.log)
    bench.rows += [summarize_train(s, bench.peak_flops(compute_dtype(s.key[4]) if s.key[0] == "precision"
                                                       else "float32"), forward_flops(s)) for s in specs]
    bench.missing += missing


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
                    specs.append(train_spec(key, cfg, method, mode.sweep_reps))
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
