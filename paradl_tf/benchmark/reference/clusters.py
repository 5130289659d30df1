"""The references on local clusters of processes on 127.0.0.1: parameter servers, MultiWorkerMirrored."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from types import ModuleType
from typing import Any, Callable

import tensorflow as tf

from paradl_tf.benchmark.reference.fit import _fit


def parameter_server(cfg: dict, keras: ModuleType) -> dict[str, Any]:
    """ParameterServerStrategy: worker and ps servers as local processes, this process the chief (tf_keras fit
    with a DatasetCreator, as TensorFlow's parameter-server tutorial does)."""
    return _on_parameter_servers(cfg, lambda strategy: _fit(cfg, keras, strategy, time.perf_counter()))


def _on_parameter_servers(cfg: dict, fit: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """Start cluster.workers worker and cluster.ps ps servers as local processes, run fit(strategy) with this
    process as the chief, and kill the servers on every path."""
    start = time.perf_counter()
    cluster = cfg.get("cluster", {})
    jobs = {"chief": 1, "worker": cluster.get("workers", 2), "ps": cluster.get("ps", 1)}
    ports = iter(_free_ports(sum(jobs.values())))
    spec = {job: [f"127.0.0.1:{next(ports)}" for _ in range(n)] for job, n in jobs.items()}
    servers = [
        subprocess.Popen([sys.executable, "-c", _SERVER, json.dumps(spec), job, str(i)],
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        for job in ("ps", "worker") for i in range(jobs[job])
    ]
    try:
        _wait_for_ports([a for job in ("ps", "worker") for a in spec[job]], servers, timeout_s=120)
        cluster_start = time.perf_counter() - start
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(spec), task_type="chief", task_id=0, rpc_layer="grpc")
        strategy = tf.distribute.experimental.ParameterServerStrategy(resolver)
        return {**fit(strategy), "cluster_start_seconds": cluster_start}
    finally:
        for server in servers:
            server.kill()
            server.wait()


def multi_worker_mirrored(cfg: dict, keras: ModuleType) -> dict[str, Any]:
    """MultiWorkerMirroredStrategy: N worker processes (mwm_worker) on 127.0.0.1, each with its TF_CONFIG, all run
    the same fit; worker 0 (the chief) prints its figures. tf_keras: Keras 3's fit fails under this strategy."""
    return _multi_worker_mirrored(cfg, keras, "reference")


def _multi_worker_mirrored(cfg: dict, keras: ModuleType, variant: str) -> dict[str, Any]:
    """Start the N workers, each running `variant` (a key of _WORKER_INPUTS); the chief's figures."""
    n = cfg.get("cluster", {}).get("workers", 2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(n)]}
    workers, spawned_at = [], time.time()
    try:
        for i in range(n):
            env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                   "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
            argv = [sys.executable, "-m", "paradl_tf.benchmark.reference.mwm_worker", json.dumps(cfg),
                    keras.__name__, variant]
            # The chief's stdout is its result; the others' goes to fd 2, the log (this stdout is the bench's).
            workers.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE if i == 0 else 2, text=True))
        deadline = time.monotonic() + _WORKERS_TIMEOUT_S
        while True:
            codes = [w.poll() for w in workers]
            # The chief's figures are in once it exits 0; the others are stopped below. A non-chief worker can take
            # minutes to tear its input down after fit (seen on TensorFlow 2.21: in MultiDeviceIterator's
            # destructor, waiting on its buffer thread), which no figure here measures.
            if codes[0] == 0:
                break
            failed = [i for i, code in enumerate(codes) if code not in (None, 0)]
            if failed:  # the others would wait in their collectives forever
                raise RuntimeError(f"worker {failed[0]} exited with status {codes[failed[0]]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not finish within {_WORKERS_TIMEOUT_S} s")
            time.sleep(0.1)
        out = json.loads(workers[0].stdout.read().strip().splitlines()[-1])
    finally:
        for w in workers:
            w.kill()
            w.wait()
            if w.stdout:
                w.stdout.close()
    # Starting the workers (interpreter, TensorFlow) before the chief's clock, as the toolkit's cluster start.
    cluster_start = out.pop("clock_started_at") - spawned_at
    return {**out, "cluster_start_seconds": cluster_start}


_WORKERS_TIMEOUT_S = 600


# A worker or ps task: a TensorFlow server that serves until it is killed, or until its parent dies (Linux).
_SERVER = """
import ctypes, json, sys
try:
    ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
except (OSError, AttributeError):
    pass
import tensorflow as tf
spec, job, index = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
tf.distribute.Server(tf.train.ClusterSpec(spec), job_name=job, task_index=index, protocol="grpc", start=True).join()
"""


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _wait_for_ports(addresses: list[str], servers: list, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    for address in addresses:
        host, port = address.rsplit(":", 1)
        while True:
            if any(p.poll() is not None for p in servers):
                raise RuntimeError("a server process of the hand-written parameter-server cluster exited")
            try:
                socket.create_connection((host, int(port)), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the server at {address} did not start within {timeout_s:.0f} s") from None
                time.sleep(0.2)
