"""Clusters of TensorFlow servers: specs, TF_CONFIG, TensorFlow's cluster resolvers, and a local launcher.

A cluster here is TensorFlow's own: a ClusterSpec (job -> task addresses) and, per process, TF_CONFIG
(`{"cluster": {...}, "task": {"type": ..., "index": ...}}`), read by TensorFlow's cluster resolvers. The
launcher invents no protocol: it starts one process per task with its TF_CONFIG and watches it.

One process per host, the same config everywhere (the multi-host recipe):

    TF_CONFIG='{"cluster": C, "task": {"type": "ps", "index": 0}}'      paradl-tf serve
    TF_CONFIG='{"cluster": C, "task": {"type": "worker", "index": 0}}'  paradl-tf serve
    TF_CONFIG='{"cluster": C, "task": {"type": "chief", "index": 0}}'   paradl-tf train --config=X \
                                                                        --set cluster.resolver=tf_config

Security: tf.distribute.Server serves unauthenticated gRPC that runs any graph it is sent, and it listens on
all interfaces whatever address the spec names (ServerDef has no host field). The local launcher therefore
runs the whole cluster, chief included, inside private user, network and PID namespaces (`unshare`): only
loopback exists there, and every process in them dies with the namespace. Where that is impossible it warns.

This module does not import TensorFlow at import time: the launching process never needs it.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import functools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import psutil

from paradl_tf.errors import ConfigError, ParadlError
from paradl_tf.tf_logs import TF_LOG_LINE

Spec = dict[str, list[str]]  # job name -> ["host:port", ...], TensorFlow's ClusterSpec as a dict

# Jobs each strategy needs in its cluster; other strategies (multi-worker) add theirs.
REQUIRED_JOBS: dict[str, tuple[str, ...]] = {
    "parameter_server": ("chief", "worker", "ps"),
    "multi_worker_mirrored": ("worker",),  # worker 0 is the chief (a 'chief' job, if given, is the chief)
}

UNSHARE_ARGS = ("--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc", "--kill-child")
STOP_GRACE_S = 5.0  # SIGTERM, then this long, then SIGKILL


class ClusterError(ParadlError, RuntimeError):
    """A cluster could not start, lost a task it cannot do without, or ran out of time."""


class ClusterSecurityWarning(UserWarning):
    """TensorFlow servers of this run can be reached from other machines."""


EXPOSED = (
    "SECURITY: {where} serves unauthenticated gRPC that runs any TensorFlow graph sent to it, on every network "
    "interface of this machine (not only 127.0.0.1). Anyone who can reach this host can run code as this user. "
    "{why}"
)


# ================================================================ specs and TF_CONFIG
def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """n distinct ports that are free on `host` now (all held open until every one is chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def local_cluster_spec(jobs: Mapping[str, int], host: str = "127.0.0.1") -> Spec:
    """A cluster of `jobs` (name -> task count) on free ports of `host`, e.g. {'chief': 1, 'worker': 2, 'ps': 1}."""
    counts = {job: n for job, n in jobs.items() if n > 0}
    ports = iter(free_ports(sum(counts.values()), host))
    return {job: [f"{host}:{next(ports)}" for _ in range(n)] for job, n in counts.items()}


def tf_config(cluster: Spec, task_type: str, task_index: int) -> str:
    """The TF_CONFIG of one task, as TensorFlow's TFConfigClusterResolver reads it."""
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": task_index}})


@dataclass(frozen=True)
class TFConfig:
    """A parsed, checked TF_CONFIG."""

    cluster: Spec
    task_type: str | None
    task_index: int | None

    @property
    def task(self) -> str | None:
        return f"{self.task_type}:{self.task_index}" if self.task_type is not None else None


def parse_tf_config(text: str | None, required_jobs: Sequence[str] = ()) -> TFConfig:
    """Parse and check TF_CONFIG; every problem is a one-line ConfigError naming what is wrong."""
    if not text or not text.strip():
        raise ConfigError(
            "TF_CONFIG is not set or empty; cluster.resolver: tf_config reads the cluster and this process's task "
            "from it, e.g. TF_CONFIG='{\"cluster\": {...}, \"task\": {\"type\": \"worker\", \"index\": 0}}'"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON ({exc}). Received: TF_CONFIG={_clip(text)!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cluster"), dict) or not data["cluster"]:
        raise ConfigError(
            "TF_CONFIG must be a JSON object with a non-empty 'cluster' mapping of job name to task addresses. "
            f"Received: TF_CONFIG={_clip(text)!r}"
        )
    cluster = _check_cluster(data["cluster"])
    check_jobs(cluster, required_jobs)
    task = data.get("task")
    if task is None:
        return TFConfig(cluster, None, None)
    if not isinstance(task, dict) or not isinstance(task.get("type"), str) or type(task.get("index", 0)) is not int:
        raise ConfigError(
            "TF_CONFIG 'task' must be {\"type\": <job name>, \"index\": <int>}. "
            f"Received: task={json.dumps(task)}"
        )
    task_type, index = task["type"], task.get("index", 0)
    if task_type not in cluster:
        raise ConfigError(
            f"TF_CONFIG task type {task_type!r} is not a job of its cluster ({', '.join(cluster)}). "
            f"Received: task={json.dumps(task)}"
        )
    if not 0 <= index < len(cluster[task_type]):
        raise ConfigError(
            f"TF_CONFIG task index {index} is out of range: job {task_type!r} has {len(cluster[task_type])} task(s), "
            f"indices 0 to {len(cluster[task_type]) - 1}. Received: task={json.dumps(task)}"
        )
    return TFConfig(cluster, task_type, index)


def check_jobs(cluster: Spec, required_jobs: Sequence[str], source: str = "TF_CONFIG") -> None:
    """Every job in `required_jobs` is in the cluster; a chief is exactly one task."""
    missing = [job for job in required_jobs if not cluster.get(job)]
    if missing:
        why = " (the chief is the coordinator that dispatches steps)" if "chief" in missing else ""
        raise ConfigError(
            f"{source} cluster has no {' or '.join(repr(m) for m in missing)} job{why}; this strategy needs "
            f"{', '.join(required_jobs)}. Received: jobs={', '.join(cluster) or 'none'}"
        )
    if "chief" in cluster and len(cluster["chief"]) != 1:
        raise ConfigError(f"{source} cluster must have exactly one chief. Received: chief={cluster['chief']}")


def _check_cluster(cluster: dict) -> Spec:
    out: Spec = {}
    for job, addresses in cluster.items():
        if not isinstance(addresses, list) or not addresses or not all(_is_address(a) for a in addresses):
            raise ConfigError(
                f"TF_CONFIG cluster job {job!r} must be a non-empty list of 'host:port' addresses. "
                f"Received: {job}={json.dumps(addresses)}"
            )
        out[job] = list(addresses)
    return out


def _is_address(text: Any) -> bool:
    host, sep, port = text.rpartition(":") if isinstance(text, str) else ("", "", "")
    return bool(host and sep and port.isdigit() and 0 < int(port) < 65536)


def _clip(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def task_port(address: str) -> int:
    return int(address.rpartition(":")[2])


# ================================================================ TensorFlow's cluster resolvers
def cluster_resolver(cluster_cfg, required_jobs: Sequence[str] = (), spec: Spec | None = None,
                     task: tuple[str, int] = ("chief", 0), use_gpus: bool = False):
    """TensorFlow's ClusterResolver for the `cluster` section: local (a spec this toolkit made), tf_config, slurm
    or kubernetes. The caller's task (`task`) is set where the resolver cannot know it."""
    kind = cluster_cfg.resolver
    if kind == "tf_config":  # one-line errors before TensorFlow starts (and before its own, less clear ones)
        parse_tf_config(os.environ.get("TF_CONFIG"), required_jobs)
    if kind in POD_RESOLVERS:
        # This pod's TF_CONFIG, set as a TFJob's operator would set it: TensorFlow and Keras then see the task
        # exactly as under tf_config (the path the local launcher runs), and TFConfigClusterResolver counts this
        # pod's GPUs, where a SimpleClusterResolver reports none and MultiWorkerMirroredStrategy trains on the CPU.
        os.environ["TF_CONFIG"] = pod_tf_config(cluster_cfg, required_jobs)
    import tensorflow as tf

    resolvers = tf.distribute.cluster_resolver
    if kind == "local":
        return resolvers.SimpleClusterResolver(tf.train.ClusterSpec(spec), task_type=task[0], task_id=task[1],
                                               rpc_layer="grpc")
    if kind in ("tf_config", *POD_RESOLVERS):
        return resolvers.TFConfigClusterResolver()
    if kind == "slurm":
        jobs = job_counts(cluster_cfg, required_jobs)
        try:
            if use_gpus:
                return resolvers.SlurmClusterResolver(jobs=jobs, port_base=cluster_cfg.port)
            # SlurmClusterResolver hands out one task per GPU slot and fails with none (tensorflow/tensorflow#56894):
            # give it a slot per task without touching CUDA_VISIBLE_DEVICES, then keep only its cluster and task.
            slurm = resolvers.SlurmClusterResolver(jobs=jobs, port_base=cluster_cfg.port, gpus_per_node=1024,
                                                   gpus_per_task=1, auto_set_gpu=False)
            spec = slurm.cluster_spec()
            return resolvers.SimpleClusterResolver(spec, task_type=slurm.task_type, task_id=slurm.task_id,
                                                   rpc_layer="grpc")
        except (RuntimeError, KeyError, ValueError) as exc:  # SLURM_* variables missing or inconsistent
            raise ConfigError(
                f"cluster.resolver: slurm cannot resolve the cluster from the SLURM_* variables: {exc}"
            ) from None
    if kind == "kubernetes":
        labels = cluster_cfg.kubernetes_labels
        if not labels:
            raise ConfigError(
                "cluster.resolver: kubernetes needs cluster.kubernetes_labels, job -> pod label selector, "
                "e.g. {worker: 'job-name=worker', ps: 'job-name=ps', chief: 'job-name=chief'}"
            )
        try:
            resolver = resolvers.KubernetesClusterResolver({j: [s] for j, s in labels.items()},
                                                           tf_server_port=cluster_cfg.port)
        except ImportError:
            raise ConfigError(
                "cluster.resolver: kubernetes needs the `kubernetes` package: pip install kubernetes"
            ) from None
        resolver.task_type, resolver.task_id = task
        return resolver
    raise ConfigError(
        f"cluster.resolver: unknown resolver {kind!r}; choose one of: local, tf_config, slurm, kubernetes, "
        "jobset, indexed_job"
    )


def job_counts(cluster_cfg, required_jobs: Sequence[str]) -> dict[str, int]:
    """Tasks per job from the `cluster` section, in the order chief, worker, ps: the jobs the strategy needs (a
    multi-worker cluster is workers only; worker 0 is its chief)."""
    jobs = {"chief": 1, "worker": cluster_cfg.workers, "ps": cluster_cfg.ps}
    return {job: n for job, n in jobs.items() if n and (job in required_jobs or job == "worker")}


# ================================================================ inside a JobSet or Indexed Job pod
# A pod of an exported JobSet or Indexed Job builds its TF_CONFIG from what it knows: its role and name from the
# labels the JobSet and Job controllers set (read through the downward API into the variables below), its index
# from JOB_COMPLETION_INDEX (the Job controller's, Indexed mode) and every task's stable hostname, which the
# headless Service publishes. No Kubernetes API access, so no RBAC.
POD_RESOLVERS = ("jobset", "indexed_job")
POD_LABELS = {  # environment variable -> the pod label it is read from (downward API)
    "jobset": {"JOBSET_NAME": "jobset.sigs.k8s.io/jobset-name",
               "REPLICATED_JOB_NAME": "jobset.sigs.k8s.io/replicatedjob-name",
               "JOB_INDEX": "jobset.sigs.k8s.io/job-index"},
    "indexed_job": {"JOB_NAME": "batch.kubernetes.io/job-name"},
}
COMPLETION_INDEX = "JOB_COMPLETION_INDEX"


def pod_hostnames(kind: str, name: str, counts: Mapping[str, int], port: int) -> Spec:
    """Every task's stable address. A JobSet pod is <jobset>-<replicated job>-<job index>-<pod index>.<subdomain>,
    the subdomain being the JobSet's name; the export makes one Job per role (job index 0) with a pod per task.
    An Indexed Job pod is <job>-<index>.<service>, the Service named as the Job."""
    if kind == "jobset":
        return {job: [f"{name}-{job}-0-{i}.{name}:{port}" for i in range(n)] for job, n in counts.items()}
    return {"worker": [f"{name}-{i}.{name}:{port}" for i in range(counts["worker"])]}


def pod_task(cluster_cfg, required_jobs: Sequence[str], environ: Mapping[str, str] = os.environ
             ) -> tuple[Spec, str, int]:
    """(cluster, task type, task index) of this pod, from its environment; a one-line ConfigError names the
    variable that is missing or disagrees with the config."""
    kind, counts = cluster_cfg.resolver, job_counts(cluster_cfg, required_jobs)
    if kind == "jobset":
        name = environ.get("JOBSET_NAME") or cluster_cfg.kubernetes_name
        job = _pod_variable(environ, "REPLICATED_JOB_NAME", kind)
        if job not in counts:
            raise ConfigError(f"cluster.resolver: jobset: this pod's replicated job {job!r} is not a job of the "
                              f"cluster ({', '.join(counts)}). Received: REPLICATED_JOB_NAME={job}")
        if environ.get("JOB_INDEX", "0") != "0":
            raise ConfigError("cluster.resolver: jobset expects one Job per role (replicas: 1), a pod per task. "
                              f"Received: JOB_INDEX={environ['JOB_INDEX']}")
    else:
        name, job = environ.get("JOB_NAME") or cluster_cfg.kubernetes_name, "worker"
    index = _pod_variable(environ, COMPLETION_INDEX, kind)
    key = "cluster.workers" if job == "worker" else f"cluster.{job}"
    if not index.isdigit() or int(index) >= counts[job]:
        raise ConfigError(f"cluster.resolver: {kind}: {COMPLETION_INDEX}={index} is not a task of job {job!r}, "
                          f"which has {counts[job]} ({key}={counts[job]}); the manifest and the config disagree")
    return pod_hostnames(kind, name, counts, cluster_cfg.port), job, int(index)


def pod_tf_config(cluster_cfg, required_jobs: Sequence[str], environ: Mapping[str, str] = os.environ) -> str:
    """This pod's TF_CONFIG (cluster.resolver: jobset or indexed_job)."""
    return tf_config(*pod_task(cluster_cfg, required_jobs, environ))


def _pod_variable(environ: Mapping[str, str], variable: str, kind: str) -> str:
    value = environ.get(variable)
    if not value:
        source = (f"the pod label {POD_LABELS[kind][variable]} through the downward API"
                  if variable in POD_LABELS[kind] else "the Job controller, in completionMode: Indexed")
        raise ConfigError(f"cluster.resolver: {kind} needs {variable} in the pod's environment (from {source}); "
                          f"run it in a pod of `paradl-tf export --format={kind.replace('_', '-')}`")
    return value


def resolver_tf_config(cluster_cfg, required_jobs: Sequence[str] = ()) -> str:
    """This process's TF_CONFIG as a resolver that knows the task (slurm: from SLURM_PROCID) works it out, so
    `paradl-tf serve --config=X` runs on a Slurm node as it does with TF_CONFIG elsewhere."""
    resolver = cluster_resolver(cluster_cfg, required_jobs)
    spec = resolver_spec(resolver)
    if resolver.task_type is None:
        raise ConfigError(f"cluster.resolver: {cluster_cfg.resolver} cannot tell which task this process is; "
                          "set TF_CONFIG and run `paradl-tf serve` without --config")
    return tf_config(spec, resolver.task_type, resolver.task_id)


def resolver_spec(resolver) -> Spec:
    """The cluster of a TensorFlow ClusterResolver as a plain dict, jobs in a stable order."""
    spec = resolver.cluster_spec().as_dict()
    return {job: list(spec[job].values()) if isinstance(spec[job], dict) else list(spec[job]) for job in sorted(spec)}


# ================================================================ reachability
def wait_until_reachable(tasks: Mapping[str, str], timeout_s: float,
                         alive: Callable[[str], str | None] | None = None) -> None:
    """Block until every task (name -> 'host:port') accepts TCP connections; a ClusterError names the one that did not.

    `alive(name)` may return why a task can no longer come up (its process exited), to fail at once."""
    deadline = time.monotonic() + timeout_s
    pending = dict(tasks)
    while pending:
        for name, address in list(pending.items()):
            host, _, port = address.rpartition(":")
            with contextlib.suppress(OSError), socket.create_connection((host, int(port)), timeout=0.5):
                del pending[name]
                continue
            if alive and (why := alive(name)):
                raise ClusterError(f"task {name} ({address}) did not come up: {why}")
        if pending and time.monotonic() > deadline:
            name, address = next(iter(pending.items()))
            raise ClusterError(
                f"task {name} ({address}) did not accept connections within cluster.start_timeout_s={timeout_s:g} s"
                f"{'; also not up: ' + ', '.join(list(pending)[1:]) if len(pending) > 1 else ''}"
            )
        if pending:
            time.sleep(0.1)


# ================================================================ network isolation
def in_private_network() -> bool:
    """True when this process's network namespace has no interface but loopback."""
    return {name for _, name in socket.if_nameindex()} <= {"lo"}


def loopback_up() -> None:
    """Bring `lo` up (a new network namespace starts with it down); needs CAP_NET_ADMIN in the namespace."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, siocgifflags, request))[1]
        if not flags & iff_up:
            fcntl.ioctl(s, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


@functools.lru_cache(maxsize=1)
def isolation_available() -> str | None:
    """None when `unshare` can make private user, network and PID namespaces here; otherwise why not."""
    if not sys.platform.startswith("linux"):
        return f"network namespaces are Linux-only (this is {sys.platform})"
    exe = shutil.which("unshare")
    if exe is None:
        return "the `unshare` command (util-linux) is not installed"
    try:
        done = subprocess.run([exe, *UNSHARE_ARGS, "true"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`unshare` failed: {exc}"
    if done.returncode:
        detail = (done.stderr.strip().splitlines() or ["exit status %d" % done.returncode])[-1]
        return f"`unshare {' '.join(UNSHARE_ARGS)}` failed ({detail}); unprivileged user namespaces may be disabled"
    return None


def use_private_network(policy: str) -> bool:
    """Decide per cluster.private_network (auto | required | off): True to run the cluster in a namespace."""
    if policy == "off":
        warn_exposed("the local cluster", "cluster.private_network is off; set it to auto to isolate the cluster.")
        return False
    why_not = isolation_available()
    if why_not is None:
        return True
    if policy == "required":
        raise ClusterError(
            f"cluster.private_network: required, but no private network namespace can be made: {why_not}"
        )
    warn_exposed("the local cluster", f"It cannot run in a private network namespace: {why_not}.")
    return False


def warn_exposed(where: str, why: str) -> None:
    message = EXPOSED.format(where=where, why=why)
    warnings.warn(message, ClusterSecurityWarning, stacklevel=3)


def isolated(argv: Sequence[str]) -> list[str]:
    """`argv` run as the first process (PID 1) of new user, network and PID namespaces."""
    return [shutil.which("unshare") or "unshare", *UNSHARE_ARGS, *argv]


# ================================================================ process lifetimes
_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int | None = None) -> None:
    """Ask Linux to SIGKILL this process when its parent dies; exit now if the parent is already gone."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)


def preexec_die_with_parent():
    """A preexec_fn for Popen: the child gets SIGKILL when the process that started it dies."""
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork: nothing is looked up in the child

    def preexec():
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    return preexec


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-returncode).name}"
        return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def kill_tree(processes: Sequence[psutil.Process], grace_s: float = STOP_GRACE_S) -> list[psutil.Process]:
    """SIGTERM, wait up to grace_s, SIGKILL what is left; returns the processes that were still running."""
    alive = [p for p in processes if is_alive(p)]
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, left = psutil.wait_procs(alive, timeout=grace_s)
    for p in left:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(left, timeout=grace_s)
    return alive


def is_alive(p: psutil.Process) -> bool:
    """True while the process runs (a zombie or a reused pid is not it)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def descendants(pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid).children(recursive=True)
    return []


def set_process_title(title: str) -> None:
    """How this process shows in `ps` and `pgrep -f` on the host, e.g. 'paradl-tf serve ps:0'."""
    import setproctitle

    setproctitle.setproctitle(title)


def host_pids(namespace_pids: Mapping[str, int], processes: Sequence[psutil.Process]) -> dict[str, int]:
    """Task name -> pid on the host, for tasks known by their pid inside the run's PID namespace: the last
    field of /proc/PID/status's NSpid line is a process's pid in its innermost namespace."""
    by_namespace_pid = {}
    for p in processes:
        with contextlib.suppress(OSError, ValueError):
            nspid = next(ln for ln in Path(f"/proc/{p.pid}/status").read_text().splitlines() if ln.startswith("NSpid:"))
            by_namespace_pid[int(nspid.split()[-1])] = p.pid
    return {name: by_namespace_pid[pid] for name, pid in namespace_pids.items() if pid in by_namespace_pid}


# ================================================================ task processes
@dataclass
class Task:
    """One task of a local cluster: its address, command, environment and log; its process once started."""

    job: str
    index: int
    address: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    starts: int = 0
    exits: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.job}:{self.index}"

    @property
    def restarts(self) -> int:
        return max(self.starts - 1, 0)


class LocalCluster:
    """The task processes of a cluster on this machine: started with their TF_CONFIG, watched, restarted, stopped.

    Workers that die are restarted (at most `max_restarts` times each; they rejoin on the same address).
    Any other task that dies, or a worker out of restarts with no other worker alive, is fatal: `on_fatal`
    is called with a one-line message. `stop()` ends every process it started (SIGTERM, then SIGKILL).
    With exit_0_is_done (multi-worker: no restarts), a task that exits with status 0 has finished, not died.
    """

    def __init__(self, tasks: Sequence[Task], max_restarts: int = 3, restartable: Sequence[str] = ("worker",),
                 on_fatal: Callable[[str], None] | None = None, poll_s: float = 0.2, exit_0_is_done: bool = False):
        self.tasks = list(tasks)
        self.exit_0_is_done = exit_0_is_done  # multi-worker: every task runs the training to its end and exits 0
        self.max_restarts = max_restarts
        self.restartable = set(restartable)
        self.on_fatal = on_fatal
        self.poll_s = poll_s
        self.fatal: str | None = None
        self.events: list[str] = []
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher: threading.Thread | None = None

    # -- lifecycle
    def start(self) -> "LocalCluster":
        for task in self.tasks:
            self._spawn(task)
        return self

    def wait_until_reachable(self, timeout_s: float) -> None:
        by_name = {t.name: t for t in self.tasks}

        def why_down(name: str) -> str | None:
            proc = by_name[name].process
            if proc is None or proc.poll() is None:
                return None
            return f"its process exited during start-up ({describe_exit(proc.returncode)}){_last_line(by_name[name])}"

        wait_until_reachable({t.name: t.address for t in self.tasks}, timeout_s, why_down)

    def watch(self) -> None:
        """Start the thread that restarts lost workers and reports fatal losses."""
        self._watcher = threading.Thread(target=self._watch, name="paradl-cluster-watch", daemon=True)
        self._watcher.start()

    def stop(self) -> None:
        """End every process this cluster started; safe to call twice."""
        self._stopping.set()
        with self._lock:
            procs = []
            for task in self.tasks:
                if task.process is not None:
                    with contextlib.suppress(psutil.Error):
                        parent = psutil.Process(task.process.pid)
                        procs += [parent, *parent.children(recursive=True)]
            kill_tree(procs)
            for task in self.tasks:
                if task.process is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        task.process.wait(timeout=STOP_GRACE_S)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- reporting
    def pids(self) -> dict[str, int]:
        return {t.name: t.process.pid for t in self.tasks if t.process is not None}

    def logs(self) -> dict[str, str]:
        return {t.name: str(t.log_path) for t in self.tasks}

    def summary(self) -> dict[str, Any]:
        return {
            t.name: {"address": t.address, "restarts": t.restarts, "exits": list(t.exits), "log": str(t.log_path)}
            for t in self.tasks
        }

    # -- internals
    def _spawn(self, task: Task) -> None:
        task.log_path.parent.mkdir(parents=True, exist_ok=True)
        task.starts += 1
        with open(task.log_path, "ab") as log:
            log.write(f"=== {task.name} start {task.starts} at {time.strftime('%H:%M:%S')} ===\n".encode())
            log.flush()
            task.process = subprocess.Popen(
                task.argv, env={**task.env, "PARADL_TF_PARENT_PID": str(os.getpid())},
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )

    def _watch(self) -> None:
        while not self._stopping.wait(self.poll_s):
            with self._lock:
                if self._stopping.is_set():
                    return
                for task in self.tasks:
                    if task.process is not None and task.process.poll() is not None and len(task.exits) < task.starts:
                        self._lost(task)

    def done(self) -> bool:
        """True once every task has exited with status 0 (exit_0_is_done)."""
        return all(t.process is not None and t.process.poll() == 0 for t in self.tasks)

    def _lost(self, task: Task) -> None:
        how = describe_exit(task.process.returncode)
        task.exits.append(how)
        if self.exit_0_is_done and task.process.returncode == 0:
            self.events.append(f"task {task.name} finished")
            return
        message = f"task {task.name} ({task.address}, pid {task.process.pid}) exited: {how}"
        if task.job in self.restartable and task.restarts < self.max_restarts:
            self.events.append(f"{message}; restarting it ({task.restarts + 1} of {self.max_restarts})")
            print(f"[cluster] {self.events[-1]}", flush=True)  # the run goes on: news, not an error
            self._spawn(task)
            return
        same_job_alive = [t for t in self.tasks if t.job == task.job and t.process and t.process.poll() is None]
        if task.job in self.restartable and same_job_alive:
            self.events.append(f"{message}; out of restarts (cluster.restart_workers={self.max_restarts}), "
                               f"going on with {len(same_job_alive)} {task.job}(s)")
            print(f"[cluster] {self.events[-1]}", flush=True)
            return
        self._set_fatal(message)

    def _set_fatal(self, message: str) -> None:
        if self.fatal is None:
            self.fatal = message
            self.events.append(message)
            print(f"[cluster] {message}", file=sys.stderr, flush=True)
            if self.on_fatal:
                self.on_fatal(message)


def _last_line(task: Task) -> str:
    with contextlib.suppress(OSError):
        lines = [ln for ln in task.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error: ")]
        if errors:
            return f": {errors[-1].removeprefix('error: ')}"
        if lines and not lines[-1].startswith("==="):
            return f"; last log line: {_clip(lines[-1], 200)} (log: {task.log_path})"
    return f" (log: {task.log_path})"


def planned_spec(cluster_cfg, counts: Mapping[str, int]) -> Spec:
    """The tasks' addresses as far as they are known before the cluster starts (`paradl-tf plan`): the stable
    hostnames of an exported JobSet or Indexed Job; 127.0.0.1 locally (a port is chosen at start)."""
    if cluster_cfg.resolver in POD_RESOLVERS:
        return pod_hostnames(cluster_cfg.resolver, cluster_cfg.kubernetes_name, counts, cluster_cfg.port)
    host = "127.0.0.1:<port>" if cluster_cfg.resolver == "local" else f"<{cluster_cfg.resolver} host>:<port>"
    return {job: [host] * n for job, n in counts.items()}


class LogFollower:
    """Copies the new complete lines of a task's log to this process's stdout, TensorFlow's C++ log lines left
    out: the chief's Keras progress shows in the terminal as it happens, the whole log stays in the file."""

    def __init__(self, path: Path):
        self.path, self._offset, self._partial = path, 0, ""

    def poll(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            with open(self.path, "rb") as log:
                log.seek(self._offset)
                chunk = log.read()
            self._offset += len(chunk)
            *lines, self._partial = (self._partial + chunk.decode(errors="replace")).split("\n")
            shown = [ln for ln in lines if ln.strip() and not TF_LOG_LINE.match(ln)]
            if shown:
                print("\n".join(shown), flush=True)


def make_tasks(spec: Spec, jobs: Sequence[str], argv_for: Callable[[str, int], list[str]], log_dir: Path,
               env: Mapping[str, str] | None = None) -> list[Task]:
    """One Task per address of `jobs` in `spec`, each with its own TF_CONFIG."""
    base = dict(os.environ if env is None else env)
    return [
        Task(job, i, address, argv_for(job, i), {**base, "TF_CONFIG": tf_config(spec, job, i)},
             log_dir / f"{job}-{i}.log")
        for job in jobs for i, address in enumerate(spec.get(job, []))
    ]


# ================================================================ in-process servers
def start_in_process_servers(spec: Spec, jobs: Sequence[str] = ("worker", "ps"), private_network: str = "auto") -> list:
    """tf.distribute.Server for every task of `jobs`, in this process (notebooks, tests). They live until it exits.

    With few cores such a cluster deadlocks unless each worker has at least workers + 1 inter-op threads
    (TensorFlow's parameter-server tutorial, "in-process cluster"): the builder sets it. This process cannot
    move itself into a private network namespace, so outside one it warns (private_network: required fails).
    """
    import tensorflow as tf

    if not in_private_network():
        why = "Run it in a private network namespace (e.g. `unshare -rn`) or on a machine no one else can reach."
        if private_network == "required":
            raise ClusterError("cluster.private_network: required, but an in-process cluster runs in this process, "
                               "which is not in a private network namespace; start it under `unshare -rn`")
        warn_exposed("an in-process cluster", why)
    workers = len(spec.get("worker", []))
    worker_config = tf.compat.v1.ConfigProto()
    if (os.cpu_count() or 1) < workers + 1:
        worker_config.inter_op_parallelism_threads = workers + 1
    cluster = tf.train.ClusterSpec(spec)
    servers = []
    for job in jobs:
        for i in range(len(spec.get(job, []))):
            config = worker_config if job == "worker" else None
            servers.append(tf.distribute.Server(cluster, job_name=job, task_index=i, config=config,
                                                protocol="grpc", start=True))
    return servers


# ================================================================ one task: `paradl-tf serve`
def serve(job: str | None = None, task: int | None = None, environ: Mapping[str, str] = os.environ) -> None:
    """Run one task of the cluster in TF_CONFIG (a worker or a ps) until this process is stopped."""
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
    server = _start_server(cfg.cluster, job, index, address)
    print(f"serving {job}:{index} at {address} (pid {os.getpid()})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        while True:  # server.join() would block signals; sleeping keeps SIGTERM and Ctrl-C working
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    del server


def _start_server(cluster: Spec, job: str, index: int, address: str):
    import tensorflow as tf

    try:
        return tf.distribute.Server(tf.train.ClusterSpec(cluster), job_name=job, task_index=index,
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


# ================================================================ the launching side
def run_isolated(argv: Sequence[str], *, env: Mapping[str, str] | None = None, private_network: str = "auto",
                 timeout_s: float | None = None, interrupt_grace_s: float = 20.0, stderr=None,
                 on_poll: Callable[[list[psutil.Process]], None] | None = None) -> int:
    """Run `argv` (a driver that starts and ends a local cluster) in private namespaces; returns its exit status.

    Whatever happens here (success, failure, Ctrl-C, SIGTERM, cluster.timeout_s), no process it started is
    left: the driver gets SIGTERM and `interrupt_grace_s` to stop its tasks, then the namespace is killed
    (every process in a PID namespace dies with its first one) and psutil sweeps what it saw. Ctrl-C is
    re-raised as KeyboardInterrupt; a timeout or SIGTERM is a ClusterError. `stderr`: where the driver's
    goes (a file: TensorFlow's RPC errors of a failing cluster are for the log, not the terminal); `on_poll`
    gets the processes seen so far, about twice a second.
    """
    isolate = use_private_network(private_network)
    cmd = isolated(argv) if isolate else list(argv)
    proc = subprocess.Popen(cmd, env=dict(os.environ if env is None else env), start_new_session=True,
                            preexec_fn=preexec_die_with_parent(), stderr=stderr)
    seen: dict[int, psutil.Process] = {}
    stop_reason: list[str] = []
    restore = _forward_signals(stop_reason)
    deadline = time.monotonic() + timeout_s if timeout_s else None
    try:
        while proc.poll() is None and not stop_reason:
            for p in descendants(proc.pid):
                seen.setdefault(p.pid, p)
            if on_poll:
                on_poll(list(seen.values()))
            if deadline and time.monotonic() > deadline:
                stop_reason.append("timeout")
                break
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=0.5)
    finally:
        restore()
        if proc.poll() is None:
            _stop_driver(proc, isolate, interrupt_grace_s)
        for p in descendants(proc.pid):
            seen.setdefault(p.pid, p)
        kill_tree(list(seen.values()), grace_s=1.0)
    if stop_reason:
        reason = stop_reason[0]
        if reason == "SIGINT":
            raise KeyboardInterrupt
        if reason == "timeout":
            raise ClusterError(f"the run took longer than cluster.timeout_s={timeout_s:g} s; every process of the "
                               "local cluster was stopped")
        raise ClusterError(f"stopped by {reason}; every process of the local cluster was stopped")
    return proc.returncode


def _forward_signals(stop_reason: list[str]) -> Callable[[], None]:
    """On SIGINT/SIGTERM, note it (the wait loop then stops the driver); returns a function restoring handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}

    def handler(signum, frame):
        stop_reason.append(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)

    def restore():
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def _stop_driver(proc: subprocess.Popen, isolate: bool, grace_s: float) -> None:
    """SIGTERM to the driver (inside the namespace: unshare's child), then SIGKILL the namespace."""
    targets = []
    with contextlib.suppress(psutil.Error):
        targets = psutil.Process(proc.pid).children() if isolate else [psutil.Process(proc.pid)]
    for p in targets:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # unshare and, without a namespace, the driver's group
        proc.wait()


def raise_on_interrupt() -> None:
    """In a driver: turn SIGTERM into KeyboardInterrupt, so `finally` blocks stop the tasks."""

    def handler(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
