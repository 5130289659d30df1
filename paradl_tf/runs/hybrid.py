"""Hybrid (R replica groups x S stages) in one process: the fit skeleton with the hybrid model compiled in."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from paradl_tf.config import Config
from paradl_tf.model_parallel.hybrid import compile_hybrid_model
from paradl_tf.runs import plan as plan_module
from paradl_tf.runs.fit import Job, Run, fit_run


class HybridRun(Run):
    """Compiles R placed copies into one Keras model; results count the groups as the replicas."""

    def compile(self, model, keras: ModuleType) -> tuple[Any, dict | None]:
        return compile_hybrid_model(model, self.cfg, keras)

    def results(self, job: Job, history: dict, epochs_run: int) -> dict[str, Any]:
        extra = super().results(job, history, epochs_run)
        mesh = job.placement
        extra["runs_on"] = f"{mesh['replicas']} group(s) x {len(mesh['groups'][0]['devices'])} stage(s)"
        return extra


def train(cfg: Config) -> dict[str, Any]:
    return fit_run(HybridRun(cfg))


def plan(cfg: Config) -> dict[str, Any]:
    return plan_module.plan(cfg, HybridRun(cfg))
