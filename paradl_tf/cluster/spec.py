"""Cluster specs and TF_CONFIG: job -> task addresses, parsed and checked with one-line errors."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any, Mapping, Sequence


from paradl_tf.errors import ConfigError



Spec = dict[str, list[str]]  # job name -> ["host:port", ...], TensorFlow's ClusterSpec as a dict

# Jobs each strategy needs in its cluster; other strategies (multi-worker) add theirs.
REQUIRED_JOBS: dict[str, tuple[str, ...]] = {
    "parameter_server": ("chief", "worker", "ps"),
    "multi_worker_mirrored": ("worker",),  # worker 0 is the chief (a 'chief' job, if given, is the chief)
}


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
        raise ConfigError(f"TF_CONFIG is not valid JSON ({exc}). Received: TF_CONFIG={clip_text(text)!r}") from None
    if not isinstance(data, dict) or not isinstance(data.get("cluster"), dict) or not data["cluster"]:
        raise ConfigError(
            "TF_CONFIG must be a JSON object with a non-empty 'cluster' mapping of job name to task addresses. "
            f"Received: TF_CONFIG={clip_text(text)!r}"
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


def clip_text(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def task_port(address: str) -> int:
    return int(address.rpartition(":")[2])
