"""Specs: one measurement each (a worker process's spec, repeated), and the paradl_tf config it trains."""

from __future__ import annotations

import copy
import os
import tempfile
from dataclasses import dataclass, field

from paradl_tf.benchmark.methods import Method
from paradl_tf.benchmark.modes import Mode
from paradl_tf.benchmark.workloads import Workload, input_shape, model_cost


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


def train_spec(key: tuple, cfg: dict, method: Method, reps: int) -> Spec:
    impl = key[3]
    worker = {"kind": "train", "impl": impl, "config": cfg, "keras": resolved_keras(cfg), "reference": method.reference,
              "tutorial": method.tutorial}
    return Spec(key, worker, reps)


def forward_flops(spec: Spec) -> int:
    """Forward FLOPs per example of the model a spec trains, on its data."""
    cfg = spec.worker["config"]
    shape, classes = input_shape(cfg["data"])
    return model_cost(cfg["model"], shape, classes)["forward_flops"]
