"""The tf.data service's servers: a dispatcher and data workers, as tasks of a local cluster or one per host.

A service is described like a TensorFlow cluster, so `paradl-tf serve` runs its tasks from TF_CONFIG as it
runs workers and ps:

    TF_CONFIG='{"cluster": {"dispatcher": ["10.0.0.9:5050"], "data_worker": ["10.0.0.10:5051", "10.0.0.11:5051"]},
               "task": {"type": "data_worker", "index": 0}}'  paradl-tf serve

A data worker registers with the cluster's dispatcher and gives its own cluster address as the one the
training processes read from. The training config names only the dispatcher (data.service.address).

Like tf.distribute.Server, both servers serve unauthenticated gRPC on every interface: a local service runs
in the local cluster's private network (or warns, see cluster.network). Nothing here imports TensorFlow at
import time: the launching side uses the specs, the task processes start the servers.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import Callable

from paradl_tf.errors import ClusterError, ConfigError
from paradl_tf.cluster.spec import Spec, local_cluster_spec, task_port

SERVICE_JOBS = ("dispatcher", "data_worker")
ADDRESS_ENV = "PARADL_TF_DATA_SERVICE"
"""Where a local service's dispatcher is: set by whoever started the service, read by the training processes."""


def service_spec(data_workers: int, host: str = "127.0.0.1") -> Spec:
    """One dispatcher and `data_workers` data workers on free ports of `host`."""
    return local_cluster_spec({"dispatcher": 1, "data_worker": data_workers}, host)


def dispatcher_address(spec: Spec) -> str:
    return f"grpc://{spec['dispatcher'][0]}"


def serve_argv(job: str, index: int) -> list[str]:
    """A service task's process: `paradl-tf serve` with the task's TF_CONFIG."""
    return [sys.executable, "-m", "paradl_tf.cli", "serve", f"--job={job}", f"--task={index}"]


def service_tasks(spec: Spec, log_dir: Path, make_tasks: Callable) -> list:
    return make_tasks(spec, SERVICE_JOBS, serve_argv, log_dir)


def start_service_server(cluster: Spec, job: str, index: int, address: str):
    """The tf.data server of task job:index (a DispatchServer or a WorkerServer), started."""
    import tensorflow as tf

    service = tf.data.experimental.service
    port = task_port(address)
    if job == "dispatcher":
        return service.DispatchServer(service.DispatcherConfig(port=port))
    dispatcher = cluster.get("dispatcher", [])
    if len(dispatcher) != 1:
        raise ConfigError(f"TF_CONFIG cluster must name exactly one dispatcher for a data worker. "
                          f"Received: dispatcher={dispatcher}")
    # worker_address: what the dispatcher tells consumers, so the address other hosts reach it by.
    return service.WorkerServer(service.WorkerConfig(dispatcher_address=dispatcher[0], worker_address=address,
                                                     port=port))


# ================================================================ the training side
def resolve_address(service_cfg, environ=os.environ) -> str:
    """The dispatcher this run's input pipelines read through: data.service.address, or the local service's."""
    if service_cfg.kind == "address":
        return service_cfg.address
    address = environ.get(ADDRESS_ENV)
    if not address:
        raise ConfigError("data.service.kind: local, but no local tf.data service was started for this run "
                          "(this strategy kind starts none); use data.service.kind: address")
    return address


def check_dispatcher(address: str, key: str, timeout_s: float = 5.0) -> None:
    """Fail at once, naming `key`, where no server answers at the dispatcher's address: a tf.data client would
    retry an unreachable dispatcher for a long time before it fails."""
    host, port = _host_port(address, key)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return
    except OSError as exc:
        where = (" from inside the local cluster's private network (only its own loopback is there; "
                 "set cluster.private_network: off to reach this host's other servers)"
                 if _private() else "")
        raise ConfigError(f"{key}: no tf.data dispatcher answers at {address}{where} "
                          f"({exc.strerror or type(exc).__name__})") from None


def check_address_service(cfg) -> None:
    """In a driver, before any task starts: with data.service.kind: address, the dispatcher must answer from here
    (the tasks run where the driver runs), so a wrong address is one line, not one per worker."""
    service = getattr(cfg.data, "service", None)
    if service is not None and service.kind == "address":
        check_dispatcher(service.address, "data.service.address")


def _host_port(address: str, key: str) -> tuple[str, int]:
    rest = address.removeprefix("grpc://")
    host, sep, port = rest.rpartition(":")
    if not (host and sep and port.isdigit() and 0 < int(port) < 65536) or "://" in rest:
        raise ConfigError(f"{key}: expected grpc://host:port, the dispatcher's address. Received: {address!r}")
    return host, int(port)


def _private() -> bool:
    from paradl_tf.cluster.network import in_private_network

    return in_private_network()


class LocalService:
    """A dispatcher and data workers as child processes of this one (single-process strategies): started,
    reachable, its address in ADDRESS_ENV for the input pipelines; `stop()` ends them all (also on errors)."""

    def __init__(self, data_workers: int, log_dir: Path, start_timeout_s: float = 60.0,
                 private_network: str = "auto"):
        from paradl_tf.cluster.local import LocalCluster, make_tasks

        self.spec = service_spec(data_workers)
        self.cluster = LocalCluster(service_tasks(self.spec, log_dir, make_tasks), max_restarts=0,
                                    restartable=(), expendable=("data_worker",))
        self.start_timeout_s, self.private_network = start_timeout_s, private_network

    @property
    def address(self) -> str:
        return dispatcher_address(self.spec)

    def __enter__(self) -> "LocalService":
        from paradl_tf.cluster.network import in_private_network, warn_exposed

        if not in_private_network():
            if self.private_network == "required":
                raise ClusterError("cluster.private_network: required, but a local tf.data service of a "
                                   "one-process run runs beside it, outside any private network namespace")
            warn_exposed("the local tf.data service", "This run is not in a private network namespace; use a "
                         "cluster strategy (which runs in one) or run it where no one else can reach the machine.")
        try:
            self.cluster.start()
            self.cluster.wait_until_reachable(self.start_timeout_s)
            self.cluster.watch()
        except BaseException:
            self.cluster.stop()
            raise
        os.environ[ADDRESS_ENV] = self.address
        return self

    def __exit__(self, *exc) -> None:
        os.environ.pop(ADDRESS_ENV, None)
        self.cluster.stop()


def local_service(cfg, log_dir: Path):
    """A LocalService where the config asks for a local tf.data service, else nothing to start."""
    service = getattr(cfg.data, "service", None)
    if service is None or service.kind != "local" or os.environ.get(ADDRESS_ENV):
        return contextlib.nullcontext()
    return LocalService(service.workers, log_dir, cfg.cluster.start_timeout_s, cfg.cluster.private_network)
