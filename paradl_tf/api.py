"""`train(cfg)` and `plan(cfg)`: the one place that maps a strategy kind to how it runs.

This module imports no TensorFlow: a run that launches a local cluster only waits for its processes, and the
CLI validates a config before anything starts TensorFlow. A new strategy kind is a config section, a strategy
builder (paradl_tf.builders.strategies) and a row here; a cluster kind also brings its `Run` hooks
(paradl_tf.runs.fit.Run) and, for local clusters, a driver module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from paradl_tf import cluster as cl
from paradl_tf.config import Config
from paradl_tf.runs.communication import check_compute, parse_bandwidth, predict


@dataclass(frozen=True)
class Runner:
    module: str
    """Where `train(cfg)` and `plan(cfg)` of this kind live."""
    driver: str | None = None
    """The module a local cluster's driver process runs (`python -m DRIVER CONFIG STATUS`), if the kind has one."""


RUNNERS: dict[str, Runner] = {
    "default": Runner("paradl_tf.runs.local", driver="paradl_tf.runs.local"),
    "one_device": Runner("paradl_tf.runs.local", driver="paradl_tf.runs.local"),
    "mirrored": Runner("paradl_tf.runs.local", driver="paradl_tf.runs.local"),
    "model_parallel": Runner("paradl_tf.runs.local", driver="paradl_tf.runs.local"),
    "hybrid": Runner("paradl_tf.runs.local", driver="paradl_tf.runs.local"),
    "parameter_server": Runner("paradl_tf.runs.parameter_server", driver="paradl_tf.runs.parameter_server"),
    "multi_worker_mirrored": Runner("paradl_tf.runs.multi_worker", driver="paradl_tf.runs.multi_worker_driver"),
}


def train(cfg: Config) -> dict[str, Any]:
    """Train with model.fit as `cfg` says; writes config.yaml and results.json to cfg.output_dir and returns the
    results (under a cluster: the chief's, or this worker's)."""
    runner = RUNNERS[cfg.strategy.kind]
    if cfg.cluster.hosts is not None:  # the local cluster on emulated hosts (the config check allows no other)
        from paradl_tf.cluster.emulated import launch_on_hosts

        return launch_on_hosts(cfg)
    if cfg.launches_local_cluster:
        return cl.launch(cfg, driver=runner.driver)
    return importlib.import_module(runner.module).train(cfg)


def plan(cfg: Config, link: str | None = None, compute: str = "device") -> dict[str, Any]:
    """What `cfg` will run, without training and without starting a cluster (but see compute='cluster'). With
    `link` (a bandwidth such as '25Gbit'), also the communication each step needs over links of that bandwidth,
    next to the compute time of a step measured here (`communication` in the plan; paradl_tf.runs.communication
    has the models): with compute='device', one step of the model on one device (seconds); with
    compute='cluster' (cluster strategies), the config's own cluster trained briefly on loopback, so that the
    runtime's per-step cost counts too."""
    bits_per_s = parse_bandwidth(link) if link else None  # a bad --link fails before TensorFlow starts
    check_compute(cfg.strategy.kind, compute, link)
    p = importlib.import_module(RUNNERS[cfg.strategy.kind].module).plan(cfg)
    if bits_per_s:
        from paradl_tf.runs.plan import measure_cluster_step_seconds, measure_step_seconds

        if compute == "cluster":
            seconds, source = measure_cluster_step_seconds(cfg, p["cluster"]["tasks"], train)
        else:
            seconds, source = measure_step_seconds(cfg, p["keras"], p["per_replica_batch_size"])
        p["communication"] = predict(p, bits_per_s, seconds, source)
    return p
