"""Synchronous data parallel across processes and machines: MultiWorkerMirroredStrategy through model.fit (tf_keras).

    paradl-tf train --config=configs/sync_multiworker.yaml                     # 2 worker processes on 127.0.0.1
    paradl-tf train --config=configs/sync_multiworker.yaml --set cluster.workers=3
    TF_CONFIG='{"cluster": {"worker": [...]}, "task": {"type": "worker", "index": I}}' \
        paradl-tf train --config=configs/sync_multiworker.yaml --set cluster.resolver=tf_config   # on every host

Every worker runs the same training program; there is no coordinator. Worker 0 is the chief: it writes
results.json and the exported model; the others back up and export to temporary directories, as TensorFlow
requires. A local run (cluster.resolver: local) goes like this:
  1. the calling process writes the resolved config and runs the driver in private user, network and PID
     namespaces (paradl_tf.cluster.launch, the launcher of both cluster strategies);
  2. the driver starts one worker process per task, each with its TF_CONFIG, and watches them: a worker
     that dies (SIGKILL, OOM) is fatal, because every step all-reduces over all workers; every process is
     stopped at once and the error names the worker;
  3. with checkpoint.dir set, rerunning the same command resumes from the last BackupAndRestore backup, and
     the data pipeline skips the steps already trained, so the result equals an uninterrupted run.

Before training, the workers compare a hash of their resolved configs through a collective: different models
or batches are a one-line ConfigError, not a hang or a silent wrong result.

Keras 3's fit fails under this strategy (keras-team/keras#20585), so this path runs on tf_keras.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from paradl_tf import cluster as cl
from paradl_tf.builders.checkpoints import checkpoint_keeper
from paradl_tf.builders.data import build_dataset, for_pipelines, load_source
from paradl_tf.builders.devices import setup_devices, setup_threads
from paradl_tf.builders.keras_version import import_keras, resolve_keras
from paradl_tf.builders.models import build_model
from paradl_tf.builders.precision import check_model_precision, precision_policy, resolve_precision
from paradl_tf.builders.strategies import check_global_batch
from paradl_tf.config import Config, load_config
from paradl_tf.errors import ConfigError, ParadlError
from paradl_tf.runs.fit import Job, Run, fit_run
from paradl_tf.runs.plan import cluster_plan, describe_variable, plan_header, trainable_bytes

KIND = "multi_worker_mirrored"
JOBS = cl.REQUIRED_JOBS[KIND]


# ================================================================ entry points
def train(cfg: Config) -> dict[str, Any]:
    """Train as one task of the cluster `cfg.cluster` names (tf_config, slurm, kubernetes, jobset, ...); returns
    this worker's results (the chief's carry results.json; the others' are not written). A local cluster is
    launched by paradl_tf.train, whose driver (paradl_tf.runs.multi_worker_driver) starts these workers."""
    resolver = cl.cluster_resolver(cfg.cluster, JOBS, use_gpus=cfg.devices.type == "GPU")
    try:
        return run_worker(cfg, resolver, cl.cluster_info(cfg.cluster.resolver, "remote", cl.resolver_spec(resolver)))
    except LOST_PEER as exc:  # one line, not TensorFlow's traced graph: which task stopped, and how to go on
        raise cl.ClusterError(f"{resolver.task_type}:{resolver.task_id}: the cluster lost a worker "
                              f"({one_line_error(exc)}); every worker all-reduces every step, so this one stops too: "
                              f"{cl.resume_hint(cfg)}") from None


# How a worker's collectives fail when a peer is lost: TensorFlow's coordination service aborts them once the peer's
# heartbeats stop (UnavailableError), or strategy.collective_timeout_s expires (DeadlineExceededError).
LOST_PEER = (tf.errors.UnavailableError, tf.errors.AbortedError, tf.errors.CancelledError,
             tf.errors.DeadlineExceededError)



def worker_main(config_path: str, status_path: str) -> None:
    """One local worker (`python -m paradl_tf.runs.multi_worker CONFIG STATUS`): train, then exit at once."""
    if "PARADL_TF_PARENT_PID" in os.environ:
        cl.die_with_parent(int(os.environ["PARADL_TF_PARENT_PID"]))
    code, status = 0, {"ok": True}
    try:
        cfg = load_config(config_path)
        tf_config = cl.parse_tf_config(os.environ.get("TF_CONFIG"), JOBS)
        cl.set_process_title(f"paradl-tf {tf_config.task}")
        resolver = cl.cluster_resolver(cfg.cluster.model_copy(update={"resolver": "tf_config"}), JOBS)
        run_worker(cfg, resolver, cl.cluster_info("local", "process", tf_config.cluster), Path(status_path))
    except ParadlError as exc:
        code, status = 2, {"error": str(exc), "type": type(exc).__name__}
        print(f"error: {exc}", file=sys.stderr)
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit without TensorFlow's teardown
        traceback.print_exc()
        code, status = 1, {"error": one_line_error(exc)}
    cl.write_json(Path(status_path), status)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # TensorFlow's teardown of a collective cluster can block on the other workers


def one_line_error(exc: BaseException) -> str:
    """The line of an exception that says what went wrong. A TensorFlow error raised in a traced function
    starts with "in user code:" and a traceback; the cause is its last "<Type>Error: ..." line, continued on
    the next line when it ends with a colon (e.g. the unhealthy task's name), or, for "Graph execution
    error:", the message after the failed node's traceback."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    causes = [i for i, ln in enumerate(lines) if re.match(r"\w+(Error|Exception): ", ln)]
    if causes:
        i = causes[-1]
        name, _, text = lines[i].partition(": ")
    else:
        i, name, text = 0, type(exc).__name__, lines[0] if lines else ""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", text)
    if text == "Graph execution error:":
        last_frame = max((j for j, ln in enumerate(lines) if ln.startswith("File ")), default=i)
        rest = [ln for ln in lines[last_frame + 1:] if not ln.startswith("[[")]
        text = rest[0] if rest else text
    elif text.endswith(":") and i + 1 < len(lines):
        text = f"{text} {lines[i + 1]}"
    return f"{name}: {text}"


# ================================================================ one worker
def run_worker(cfg: Config, resolver, cluster_info: dict, status_path: Path | None = None) -> dict[str, Any]:
    """Train as one worker of the cluster; the chief writes results.json (and the exported model)."""
    return fit_run(MultiWorkerRun(cfg, resolver, cluster_info, status_path))


class MultiWorkerRun(Run):
    """Where a MultiWorkerMirrored worker differs from a one-process run: its devices are configured without
    starting the runtime, the workers first check they run the same config, every worker trains and backs up
    (the others to temporary directories), the chief alone shows progress and keeps checkpoints.

    Until that check has passed, a watchdog process fails the worker after cluster.start_timeout_s, naming the
    tasks that are not up: TensorFlow's coordination service would wait for a missing worker for its cluster
    register timeout (kDefaultClusterRegisterTimeout, an hour, in coordination_service_agent.cc), and its setting
    is not public API."""

    def __init__(self, cfg: Config, resolver, cluster_info: dict, status_path: Path | None = None):
        super().__init__(cfg, resolver, cluster_info)
        self.status_path = status_path
        self._start_deadline = None

    def setup_devices(self) -> None:
        _configure_devices(self.cfg.devices)

    def strategy(self):
        me = f"{self.resolver.task_type}:{self.resolver.task_id}"
        others = {f"{job}:{i}": address for job, addresses in self.cluster_info["tasks"].items()
                  for i, address in enumerate(addresses) if f"{job}:{i}" != me}
        self._start_deadline = cl.start_deadline(others, self.cfg.cluster.start_timeout_s, me, self.status_path)
        return super().strategy()

    def check(self, strategy) -> None:
        check_same_config(strategy, self.cfg, max(len(self.cluster_info["tasks"].get("worker", [])), 1))
        if self._start_deadline is not None:  # every worker took part in the check's collective: all are up
            self._start_deadline()

    def is_chief(self, strategy) -> bool:
        return strategy.extended.should_checkpoint

    def callbacks(self, job: Job) -> list:
        c = self.cfg.checkpoint
        if not c.keep:
            return []
        return [checkpoint_keeper(job.keras, Path(self.cfg.output_dir) / "checkpoints", c.keep,
                                  c.backup_and_restore.save_freq, job.is_chief)]

    def backup(self, job: Job):
        # Non-chief workers back up to temporary directories (tf_keras does it); save_freq may be in steps.
        return job.keras.callbacks.BackupAndRestore(
            backup_dir=self.cfg.checkpoint.dir, save_freq=self.cfg.checkpoint.backup_and_restore.save_freq)

    def verbose(self, job: Job) -> int:
        return self.cfg.train.verbose if job.is_chief else 0

    def results(self, job: Job, history: dict, epochs_run: int) -> dict[str, Any]:
        workers = len(self.cluster_info["tasks"].get("worker", []))
        return {"runs_on": f"{job.replicas} replica(s) on {workers} worker process(es)",
                **_mwm_results(self.cfg, job.model, job.strategy, job.datasets, self.cluster_info,
                               job.resumed_from_step, epochs_run)}


def plan(cfg: Config) -> dict[str, Any]:
    """The plan of a multi_worker_mirrored config without starting a cluster: the tasks, and every variable
    mirrored on every replica of every worker (each worker: its logical CPUs, or every logical GPU it sees)."""
    keras_name = resolve_keras(cfg.keras, KIND)
    keras = import_keras(keras_name)
    local = setup_devices(cfg.devices)  # what each worker would see, assuming this host's devices
    c = cfg.cluster
    tasks = (cl.parse_tf_config(os.environ.get("TF_CONFIG"), JOBS).cluster if c.resolver == "tf_config"
             else cl.planned_spec(c, {"worker": c.workers}))
    replica_devices = [f"/job:worker/replica:0/task:{t}/device:{cfg.devices.type}:{i}"
                       for t in range(len(tasks["worker"])) for i in range(len(local))]
    per_replica = check_global_batch(cfg.train.global_batch_size, len(replica_devices))
    source = load_source(cfg.data, cfg.train.seed)
    datasets = build_dataset(cfg, source)
    # What each worker will read: one input pipeline per worker, feeding its local replicas.
    datasets = for_pipelines(cfg, datasets, source, len(tasks["worker"]), per_replica, len(local))
    precision = resolve_precision(cfg.train.precision, cfg.devices.type)
    with precision_policy(keras, precision):
        model = build_model(cfg.model, datasets.input_shape, datasets.num_classes, keras)
    variables = [describe_variable(v, replica_devices) for v in model.variables]
    header = plan_header(cfg, tf.distribute.MultiWorkerMirroredStrategy.__name__, keras_name, variables,
                         check_model_precision(model, precision), trainable_bytes(model))
    return {
        **header,
        "replicas": len(replica_devices),
        "devices": replica_devices,
        "per_replica_batch_size": per_replica,
        "cluster": cluster_plan(cfg, "process" if c.resolver == "local" else "remote", tasks),
        "input": datasets.input,
        "all_reduce": {"communication": cfg.strategy.communication, "local_replicas": len(local),
                       "bytes_per_step": header["gradient_bytes"]},
    }


def _configure_devices(devices_cfg) -> None:
    """Each CPU or GPU split into devices.count logical devices, each a replica. Nothing may list logical devices
    first: that starts the runtime, and MultiWorkerMirroredStrategy must configure collective ops before it starts
    ("Collective ops must be configured at program startup", tensorflow/tensorflow#34568; list_physical_devices
    does not start it)."""
    setup_threads(devices_cfg.threads)  # the thread settings do not start the runtime either
    if devices_cfg.count == 1 and devices_cfg.memory_limit_mb is None:
        return
    wanted = [tf.config.LogicalDeviceConfiguration(memory_limit=devices_cfg.memory_limit_mb)] * devices_cfg.count
    for device in tf.config.list_physical_devices(devices_cfg.type):
        tf.config.set_logical_device_configuration(device, wanted)


# Keys that may differ between hosts: where a host writes, how it finds the cluster, what it prints. None of them
# changes a step; every other key does (or may), and must be the same on every worker.
PER_HOST_KEYS = ("output_dir", "cluster", "checkpoint.dir", "checkpoint.keep", "checkpoint.export", "train.verbose",
                 "train.tensorboard", "devices.threads")


def computation_config(cfg: Config) -> str:
    """The resolved config without PER_HOST_KEYS (checkpoint.dir: only whether it is set), as canonical JSON."""
    data = cfg.model_dump(mode="json")
    data["checkpoint"]["backs_up"] = bool(cfg.checkpoint.dir)
    for key in PER_HOST_KEYS:
        *parents, last = key.split(".")
        section = data
        for parent in parents:
            section = section[parent]
        section.pop(last, None)
    return json.dumps(data, sort_keys=True)


def check_same_config(strategy, cfg: Config, workers: int) -> None:
    """Every worker must run the same computation: compare a hash of the resolved config, less the keys that may
    differ per host (PER_HOST_KEYS), over all replicas (one collective)."""
    digest = int(hashlib.sha256(computation_config(cfg).encode()).hexdigest()[:7], 16)  # fits an int32

    def my_hash():
        return tf.constant([digest], tf.int32)

    @tf.function(autograph=False)  # run eagerly, CollectiveAllReduceStrategy warns of its eager overhead
    def all_hashes():
        return strategy.gather(strategy.run(my_hash), axis=0)

    values = all_hashes()
    hashes = np.asarray(values).tolist()
    per_worker = max(len(hashes) // workers, 1)
    if len(set(hashes)) > 1:
        mine = hashes.index(digest) // per_worker
        others = sorted({i // per_worker for i, h in enumerate(hashes) if h != digest})
        raise ConfigError(
            "the workers run different configs (a different model, batch, data or other key): every worker must "
            "run the same resolved config (output_dir, cluster and other per-host keys aside), or the all-reduce "
            "mixes incompatible steps. Received: config hash "
            f"{digest:07x} on worker {mine}, another on worker(s) {', '.join(map(str, others))}"
        )


def _mwm_results(cfg: Config, model, strategy, datasets, cluster_info: dict, done_steps: int,
                 epochs_run: int) -> dict[str, Any]:
    workers = cluster_info["tasks"].get("worker", [])
    requested = cfg.train.epochs * datasets.steps_per_epoch
    iterations = int(model.optimizer.iterations.numpy())
    local = list(strategy.extended.worker_devices)
    return {
        "devices": [re.sub(r"/task:\d+", f"/task:{i}", d) for i in range(len(workers)) for d in local],
        "workers": len(workers),
        "cluster": cluster_info,
        "communication": cfg.strategy.communication,
        "requested_steps": requested,
        "resumed_from_step": done_steps,
        "steps_this_run": iterations - done_steps,
        "optimizer_iterations": iterations,
        "epochs_this_run": epochs_run,
        "exported_model": str(Path(cfg.output_dir) / "model.keras") if cfg.checkpoint.export else None,
    }


if __name__ == "__main__":  # one worker process of a local cluster, started by multi_worker_driver
    worker_main(sys.argv[1], sys.argv[2])
