"""TensorFlow servers: in-process clusters (notebooks, tests) and one task per host (`paradl-tf serve`)."""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Mapping, Sequence


from paradl_tf.errors import ClusterError, ConfigError
from paradl_tf.cluster.data_service import SERVICE_JOBS, start_service_server
from paradl_tf.cluster.network import in_private_network, wait_until_gone, warn_exposed
from paradl_tf.cluster.processes import die_with_parent, set_process_title, usable_cpus
from paradl_tf.cluster.spec import Spec, parse_tf_config, task_port
from paradl_tf.tf_logs import start_tensorflow



def start_in_process_servers(spec: Spec, jobs: Sequence[str] = ("worker", "ps"), private_network: str = "auto") -> list:
    """tf.distribute.Server for every task of `jobs`, in this process (notebooks, tests). They live until it exits.

    Each worker's server gets worker_server_config (inter-op threads: a cluster with a chief deadlocks on few
    cores without them). This process cannot move itself into a private network namespace, so outside one it
    warns (private_network: required fails).
    """
    import tensorflow as tf

    if not in_private_network():
        why = "Run it in a private network namespace (e.g. `unshare -rn`) or on a machine no one else can reach."
        if private_network == "required":
            raise ClusterError("cluster.private_network: required, but an in-process cluster runs in this process, "
                               "which is not in a private network namespace; start it under `unshare -rn`")
        warn_exposed("an in-process cluster", why)
    worker_config = worker_server_config(spec)
    cluster = tf.train.ClusterSpec(spec)
    servers = []
    for job in jobs:
        for i in range(len(spec.get(job, []))):
            config = worker_config if job == "worker" else None
            servers.append(tf.distribute.Server(cluster, job_name=job, task_index=i, config=config,
                                                protocol="grpc", start=True))
    return servers


def worker_server_config(spec: Spec, environ: Mapping[str, str] = os.environ):
    """The ConfigProto of a worker's server: at least workers + 1 inter-op threads where TensorFlow would give it
    fewer (one per usable CPU), unless TF_NUM_INTEROP_THREADS (devices.threads.inter_op) sets them. With fewer, a
    worker of a parameter-server cluster deadlocks at the first step (TensorFlow's parameter-server tutorial sets
    the same for its in-process cluster); on one CPU, e.g. `taskset -c 0` or a 1-CPU container, every such
    cluster would. None where nothing needs setting."""
    import tensorflow as tf

    workers = len(spec.get("worker", []))
    if environ.get("TF_NUM_INTEROP_THREADS") or usable_cpus() >= workers + 1:
        return None
    config = tf.compat.v1.ConfigProto()
    config.inter_op_parallelism_threads = workers + 1
    return config


# ================================================================ one task: `paradl-tf serve`
def serve(job: str | None = None, task: int | None = None, environ: Mapping[str, str] = os.environ,
          chief_gone_s: float | None = None, tf_logs: bool = False) -> None:
    """Run one task of the cluster in TF_CONFIG until this process is stopped: a worker or a ps (a
    tf.distribute.Server), or a tf.data service's dispatcher or data_worker (see cluster.data_service).

    With `chief_gone_s` (cluster.chief_gone_s), a worker or ps of a cluster with a chief returns earlier, once
    that chief, seen accepting connections, has refused them for so long: training has ended (or failed), and nothing
    else would end a server that an sbatch step or a user started by hand. TensorFlow starts once TF_CONFIG has
    been checked, with its C++ start-up lines only if `tf_logs` (paradl_tf.tf_logs)."""
    cfg = parse_tf_config(environ.get("TF_CONFIG"))
    job = job if job is not None else cfg.task_type
    index = task if task is not None else (cfg.task_index if job == cfg.task_type else None)
    if job is None or index is None:
        raise ConfigError("serve needs the task to run: --job and --task, or TF_CONFIG's 'task'")
    if cfg.task_type is not None and (job, index) != (cfg.task_type, cfg.task_index):
        raise ConfigError(f"--job={job} --task={index} disagrees with TF_CONFIG's task {cfg.task}; give one of them")
    if job not in cfg.cluster or not 0 <= index < len(cfg.cluster[job]):
        size = len(cfg.cluster.get(job, []))
        raise ConfigError(f"TF_CONFIG cluster has no task {job}:{index} (job {job!r} has {size} task(s)). "
                          f"Received: --job={job} --task={index}")
    if job == "chief":
        raise ConfigError("the chief is the coordinator: run `paradl-tf train --config=...` there, not serve")
    if "PARADL_TF_PARENT_PID" in environ:
        die_with_parent(int(environ["PARADL_TF_PARENT_PID"]))
    address = cfg.cluster[job][index]
    if not in_private_network():
        warn_exposed(f"task {job}:{index} (port {task_port(address)})", "Serve only on a private network.")
    set_process_title(f"paradl-tf serve {job}:{index}")
    start_tensorflow(show_logs=tf_logs)
    server = _start_server(cfg.cluster, job, index, address)
    what = "the tf.data service's " if job in SERVICE_JOBS else ""
    print(f"serving {what}{job}:{index} at {address} (pid {os.getpid()})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    chief = cfg.cluster["chief"][0] if "chief" in cfg.cluster and job in ("worker", "ps") else None
    try:  # server.join() would block signals; sleeping keeps SIGTERM and Ctrl-C working
        if chief is None or chief_gone_s is None:
            while True:
                time.sleep(3600)
        wait_until_gone(chief, chief_gone_s)
        print(f"the chief ({chief}) has refused connections for {chief_gone_s:g} s (cluster.chief_gone_s): "
              f"training has ended; {job}:{index} stops", flush=True)
    except KeyboardInterrupt:
        pass
    del server


def _start_server(cluster: Spec, job: str, index: int, address: str):
    import tensorflow as tf

    try:
        if job in SERVICE_JOBS:
            return start_service_server(cluster, job, index, address)
        config = worker_server_config(cluster) if job == "worker" else None
        return tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=job, task_index=index, config=config,
                                    protocol="grpc", start=True)
    except tf.errors.OpError as exc:
        port = task_port(address)
        if not _port_free(port):
            raise ClusterError(f"task {job}:{index} cannot listen on port {port}: the port is already in use. "
                               f"Received: address={address}") from None
        raise ClusterError(f"task {job}:{index} could not start its server ({exc.message}). "
                           f"Received: address={address}") from None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


