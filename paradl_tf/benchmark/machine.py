"""The machine: what it is (cores, memory, versions, devices) and its matmul peak in each dtype."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Callable, Sequence

import psutil

from paradl_tf.benchmark.budgets import Budget
from paradl_tf.benchmark.figures import stat
from paradl_tf.benchmark.modes import Mode
from paradl_tf.benchmark.processes import run_interleaved, run_one
from paradl_tf.benchmark.specs import Spec
from paradl_tf.cluster.processes import usable_cpus


# The matmul peaks measured: float32, and the compute dtypes of mixed precision (float16 where it is native).
PEAK_DTYPES = ("float32", "bfloat16", "float16")


def probe(mode: Mode, out: Path, budget: Budget, virtual_gpus: bool,
          log: Callable[[str], None]) -> tuple[Spec, dict[str, Any]]:
    """The first matmul process, which also finds the devices, and the machine it describes."""
    log("machine: the matmul peaks (float32, bfloat16, float16 where native; this process also finds the devices)")
    spec = matmul_spec(mode, 1, dtypes=PEAK_DTYPES)
    run_one(spec, 0, out, mode, budget, log)
    return spec, describe_machine(spec.results[0], virtual_gpus)


def measure_peaks(mode: Mode, machine: dict, first: Spec, along: list[Spec], out: Path, budget: Budget,
                  log: Callable[[str], None]) -> dict[str, dict | None]:
    """The matmul peak of each dtype measured here over the probe and mode.reps - 1 more processes, run
    interleaved with `along` (the main table's specs: the same drift of the machine) under its budget."""
    dtypes = [d for d in PEAK_DTYPES if d != "float16" or machine["native_float16"]]
    more = matmul_spec(mode, mode.reps - 1, machine["device_type"], dtypes)
    run_interleaved(along + ([more] if more.reps else []), out, mode, budget, log)
    every = Spec(more.key, more.worker, mode.reps, first.results + more.results)
    return {d: summarize_peak(every, d) for d in dtypes}


def matmul_spec(mode: Mode, reps: int, device_type: str = "auto", dtypes: Sequence[str] = ("float32",)) -> Spec:
    return Spec(("peak", None, "matmul", None, None),
                {"kind": "matmul", "sizes": list(mode.matmul_sizes), "device_type": device_type, "dtypes": list(dtypes),
                 "seconds_per_size": 1.0 if mode.name == "full" else 0.5}, reps)


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
        "cpus_usable": usable_cpus(),
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


def median_flops(peak: dict | None) -> float | None:
    return peak["flops_per_sec"]["median"] if peak else None
