"""The driver of a local MultiWorkerMirrored cluster: one worker process per task, watched; a lost one is fatal.

Runs as `python -m paradl_tf.runs.multi_worker_driver CONFIG STATUS` inside the private namespaces that
paradl_tf.cluster.launch made. It never imports TensorFlow: the workers train (paradl_tf.runs.multi_worker).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from paradl_tf import cluster as cl
from paradl_tf.config import Config
from paradl_tf.errors import ConfigError, ParadlError

JOBS = cl.REQUIRED_JOBS["multi_worker_mirrored"]
WORKER = "paradl_tf.runs.multi_worker"  # the module each worker process runs


def drive(cfg: Config, status_path: Path) -> None:
    """The driver, inside the namespace: start one process per worker, wait until all finish; a lost one is fatal."""
    if cl.in_private_network():
        cl.loopback_up()
    cl.check_address_service(cfg)
    spec = cl.local_cluster_spec({"worker": cfg.cluster.workers})
    run_dir = Path(cfg.output_dir) / "cluster"  # the launcher removed a previous run's logs and statuses
    config_path = Path(cfg.output_dir) / "config.yaml"

    def argv_for(job: str, index: int) -> list[str]:
        status = run_dir / f"{job}-{index}.status.json"
        return [sys.executable, "-m", WORKER, str(config_path), str(status)]

    service = _service_spec(cfg)  # a local tf.data service: its tasks start first, in the same namespace
    env = {**os.environ, cl.ADDRESS_ENV: cl.dispatcher_address(service)} if service else None
    tasks = cl.make_tasks(spec, JOBS, argv_for, run_dir, env) + (cl.service_tasks(service, run_dir, cl.make_tasks)
                                                                if service else [])
    local = cl.LocalCluster(tasks, max_restarts=0, restartable=(), exit_0_is_done=True,
                            expendable=("data_worker",), serving=cl.SERVICE_JOBS)
    try:
        if service:
            local.start(cl.SERVICE_JOBS)
            local.wait_until_reachable(cfg.cluster.start_timeout_s, cl.SERVICE_JOBS)
        local.start()
        local.watch()
        local.write_info(run_dir, cl.cluster_info("local", "process", {**spec, **(service or {})}))
        chief_log = cl.LogFollower(run_dir / "worker-0.log")
        while not local.done() and local.fatal is None:
            chief_log.poll()
            time.sleep(0.1)
        chief_log.poll()
        if local.fatal is not None:
            raise _fatal_error(local, cfg, run_dir)
    finally:
        local.stop()


def _service_spec(cfg: Config) -> cl.Spec | None:
    service = getattr(cfg.data, "service", None)
    return cl.service_spec(service.workers) if service is not None and service.kind == "local" else None


def _fatal_error(local: cl.LocalCluster, cfg: Config, run_dir: Path) -> ParadlError:
    """The root cause: a worker that died without a word (SIGKILL, OOM) comes first, since the others then fail
    in their collectives; otherwise the first failed worker's own one-line error."""
    time.sleep(0.5)  # let a worker that died at the same moment show up
    failed = [t for t in local.tasks if t.process is not None and t.process.poll() not in (None, 0)]
    silent = [t for t in failed if not (run_dir / f"{t.job}-{t.index}.status.json").exists()]
    silent.sort(key=lambda t: t.job not in cl.SERVICE_JOBS)  # the service's loss starves the workers: it first
    if silent and silent[0].job in cl.SERVICE_JOBS:
        t = silent[0]
        what = "the dispatcher" if t.job == "dispatcher" else "its last data worker"
        return cl.ClusterError(
            f"task {t.name} ({t.address}, pid {t.process.pid}) of the local tf.data service exited: "
            f"{cl.describe_exit(t.process.returncode)}; the service cannot go on without {what} (data.service), "
            "so every worker was stopped")
    if silent:
        t = silent[0]
        resume = cl.resume_hint(cfg)
        aborted = _collective_abort(t.log_path)
        if aborted:  # it crashed while TensorFlow aborted its collectives: the abort is the cause
            return cl.ClusterError(
                f"task {t.name} ({t.address}, pid {t.process.pid}) exited: {cl.describe_exit(t.process.returncode)} "
                f"after TensorFlow aborted its collectives: {aborted}; every worker was stopped: {resume} "
                f"(logs: {run_dir})")
        return cl.ClusterError(
            f"task {t.name} ({t.address}, pid {t.process.pid}) exited: {cl.describe_exit(t.process.returncode)}; "
            "MultiWorkerMirroredStrategy cannot go on without it (every step all-reduces over all workers), so "
            f"every worker was stopped: {resume} (logs: {run_dir})"
        )
    first = next((t for t in failed if local.fatal.startswith(f"task {t.name} ")), failed[0] if failed else None)
    status = json.loads((run_dir / f"{first.job}-{first.index}.status.json").read_text()) if first else {}
    if status.get("type") == "ConfigError":
        return ConfigError(f"{first.name}: {status['error']}")
    return cl.ClusterError(f"{first.name if first else 'a worker'} failed: {status.get('error') or local.fatal} "
                           f"(logs: {run_dir})")


# How TensorFlow logs the abort of a worker's collectives: strategy.collective_timeout_s, or the
# coordination service's heartbeat naming a peer that stopped answering.
_COLLECTIVE_ABORT = re.compile(r"Collective has timed out during execution\.|"
                               r"The following tasks are unhealthy \(stopped sending heartbeats\):\s*\S+")


def _collective_abort(log_path: Path) -> str | None:
    """The first collective abort in a worker's log: a worker that then crashes (TensorFlow can segfault
    tearing down aborted collectives) did not fail by itself."""
    try:
        found = _COLLECTIVE_ABORT.search(log_path.read_text(errors="replace"))
    except OSError:
        return None
    return " ".join(found.group(0).split()) if found else None


if __name__ == "__main__":
    cl.driver_main(sys.argv, drive)
