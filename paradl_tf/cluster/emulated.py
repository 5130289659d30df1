"""A local cluster on emulated hosts (cluster.hosts): each host runs exactly what a real host runs.

    paradl-tf train --config=configs/sync_multiworker.yaml --set 'cluster.hosts={}'          # 2 hosts: n1, n2
    paradl-tf train --config=configs/async_ps.yaml --set 'cluster.hosts={bandwidth_mbit: 100}'

One host per task (or per group of tasks, cluster.hosts.groups), named n1, n2, ... (chief, workers, ps), made
by paradl_tf.cluster.hosts: its own network namespace on a private bridge, address, hostname and working
directory (<output_dir>/hosts/<name>), optionally a link bandwidth and a CPU share. Each host gets its own
config.yaml (the run's, with cluster.resolver: tf_config and its own output_dir) and runs the multi-host recipe
of docs/deployment.md in its working directory with its TF_CONFIG: `paradl-tf train --config=config.yaml` (every
MultiWorkerMirrored worker; the parameter-server chief) or `paradl-tf serve` (parameter-server workers and ps).
Task addresses are host names (`n2:8888`), resolved as on a real network. Only checkpoint.dir is shared.

The launching process (this one, in the machine's own namespaces) starts and watches the tasks, follows the
chief's log, and on every path, Ctrl-C and SIGTERM included, stops them and removes the hosts. results.json
(the chief's, copied to output_dir) names each host: address, link, CPU share, tasks.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from paradl_tf.cluster.hosts import Network
from paradl_tf.cluster.launcher import _forward_signals, finish_results, resume_hint
from paradl_tf.cluster.local import LocalCluster, LogFollower, Task, last_line, write_json
from paradl_tf.cluster.processes import describe_exit
from paradl_tf.cluster.spec import Spec, tf_config
from paradl_tf.config import Config, dump_config
from paradl_tf.errors import ClusterError, ConfigError

CLI = [sys.executable, "-m", "paradl_tf.cli"]  # `paradl-tf`, whatever the PATH of the host


# ================================================================ the layout (pure: plan uses it too)
def task_names(cfg: Config) -> list[str]:
    """The cluster's tasks, in host order: chief, workers, ps (MultiWorkerMirrored: workers only)."""
    c = cfg.cluster
    chief_ps = cfg.strategy.kind == "parameter_server"
    return ((["chief:0"] if chief_ps else []) + [f"worker:{i}" for i in range(c.workers)]
            + ([f"ps:{i}" for i in range(c.ps)] if chief_ps else []))


def layout(cfg: Config) -> dict[str, list[str]]:
    """Host name -> its tasks: one host per task, or cluster.hosts.groups; one-line ConfigErrors name the key."""
    h, tasks = cfg.cluster.hosts, task_names(cfg)
    groups = h.groups or [[t] for t in tasks]
    given = [t for g in groups for t in g]
    if sorted(given) != sorted(tasks):
        missing, extra = sorted(set(tasks) - set(given)), sorted(set(given) - set(tasks))
        twice = sorted({t for t in given if given.count(t) > 1})
        raise ConfigError(
            "cluster.hosts.groups must name every task of the cluster once "
            f"({', '.join(tasks)}). Received: missing={missing}, unknown={extra}, twice={twice}")
    hosts = {f"n{i + 1}": list(g) for i, g in enumerate(groups)}
    for key, names in (("per_host", list(h.per_host)), ("absent", h.absent)):
        unknown = [n for n in names if n not in hosts]
        if unknown:
            raise ConfigError(f"cluster.hosts.{key} names no host of the run ({', '.join(hosts)}). Received: {unknown}")
    subnet = ipaddress.ip_network(_subnet(h.subnet))
    if subnet.num_addresses - 2 < len(hosts):
        raise ConfigError(f"cluster.hosts.subnet {subnet} has too few addresses for {len(hosts)} hosts")
    return hosts


def host_spec(cfg: Config, hosts: dict[str, list[str]]) -> Spec:
    """Each task at its host's name: cluster.port, the next port for a second task on the same host."""
    address = {t: f"{name}:{cfg.cluster.port + k}" for name, tasks in hosts.items() for k, t in enumerate(tasks)}
    spec: Spec = {}
    for task in task_names(cfg):
        spec.setdefault(task.split(":")[0], []).append(address[task])
    return spec


def link(cfg: Config, name: str) -> dict[str, float | None]:
    """A host's bandwidth_mbit and cpu_share: its per_host entry, else cluster.hosts' defaults."""
    h = cfg.cluster.hosts
    own = h.per_host.get(name)
    return {"bandwidth_mbit": own.bandwidth_mbit if own and own.bandwidth_mbit else h.bandwidth_mbit,
            "cpu_share": own.cpu_share if own and own.cpu_share else h.cpu_share}


def planned_hosts(cfg: Config) -> dict[str, dict]:
    """What `plan` says about the hosts before they exist: address, link, CPU share, tasks."""
    hosts = layout(cfg)
    addresses = ipaddress.ip_network(_subnet(cfg.cluster.hosts.subnet)).hosts()
    return {name: {"address": str(next(addresses)), **link(cfg, name), "tasks": tasks,
                   **({"absent": True} if name in cfg.cluster.hosts.absent else {})}
            for name, tasks in hosts.items()}


def _subnet(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text))
    except ValueError as exc:
        raise ConfigError(f"cluster.hosts.subnet is not an IPv4 network ({exc}). Received: {text!r}") from None


# ================================================================ the launching side
def launch_on_hosts(cfg: Config) -> dict[str, Any]:
    """Run the cluster on emulated hosts from this process; returns the chief's results (also in results.json)."""
    h, c = cfg.cluster.hosts, cfg.cluster
    out = Path(cfg.output_dir).resolve()
    run_dir = out / "cluster"
    hosts = layout(cfg)
    spec = host_spec(cfg, hosts)
    _clean(out, run_dir)
    (out / "config.yaml").write_text(dump_config(cfg))
    start, launched_at = time.perf_counter(), time.time()
    stop_reason: list[str] = []
    restore = _forward_signals(stop_reason)
    try:
        with Network(name=out.name, subnet=h.subnet, workdir=out / "hosts",
                     missing="skip" if h.kernel_refuses == "skip" else "refuse") as net:
            for name in hosts:
                net.add_host(name, **link(cfg, name))
            write_json(run_dir / "hosts.json", net.describe())  # to reach a host: Host.from_dict, ip netns exec
            tasks = [t for t in _tasks(cfg, net, hosts, spec, run_dir) if _host_of(t, hosts) not in h.absent]
            chief = next(t for t in tasks if (t.job, t.index) in (("chief", 0), ("worker", 0)))
            local = _cluster(cfg, tasks)
            try:
                local.start()
                _watch(cfg, local, chief, stop_reason, start)
                # The watcher may see the parameter-server chief's exit 0 before this loop does, and call it lost.
                if local.fatal is not None and not local.done():
                    raise ClusterError(_fatal_error(cfg, local, hosts, run_dir))
            finally:
                local.stop()
            described = {name: {**net.hosts[name].describe(), "tasks": hosts[name]} for name in hosts}
            summary, events = local.summary(), list(local.events)
    finally:
        restore()
    if stop_reason:
        if stop_reason[0] == "SIGINT":
            raise KeyboardInterrupt
        raise ClusterError(f"stopped by {stop_reason[0]}; every process of the emulated hosts was stopped and the "
                           "hosts removed")
    chief_results = Path(chief.cwd) / "results.json"
    if not chief_results.exists():
        raise ClusterError(f"the chief ({chief.name} on host {_host_of(chief, hosts)}) ended without results.json; "
                           f"its log: {chief.log_path}")
    results = json.loads(chief_results.read_text())
    for name, worker in results.get("worker_steps", {}).items():  # the chief saw the workers, the launcher their restarts
        worker["restarts"] = summary.get(name, {}).get("restarts", 0)
    results["cluster"]["events"] = events
    write_json(out / "results.json", results)
    return finish_results(out / "results.json", start, launched_at,
                          emulated_hosts={"subnet": h.subnet, "hosts": described}, output_dir=str(cfg.output_dir))


def _tasks(cfg: Config, net: Network, hosts: dict[str, list[str]], spec: Spec, run_dir: Path) -> list[Task]:
    """One Task per task: on its host, in its working directory, with its TF_CONFIG."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
           "PYTHONUNBUFFERED": "1", **cfg.devices.threads.environment()}
    tasks = []
    for name, names in hosts.items():
        host = net.hosts[name]
        (host.workdir / "config.yaml").write_text(dump_config(host_config(cfg, host.workdir)))
        for task in names:
            job, index = task.split(":")
            trains = job in ("chief", "worker") and (job == "chief" or cfg.strategy.kind != "parameter_server")
            # --tf_logs: a task's log keeps TensorFlow's own lines (the coordination service's "unhealthy" line
            # names the lost task: _fatal_error reads it); the follower keeps them out of the terminal.
            argv = [*CLI, "train", "--config=config.yaml", "--tf_logs"] if trains else [*CLI, "serve", "--tf_logs"]
            tasks.append(Task(job, int(index), spec[job][int(index)], host.argv(argv),
                              {**env, "TF_CONFIG": tf_config(spec, job, int(index))},
                              run_dir / f"{name}-{job}-{index}.log", cwd=host.workdir))
    return tasks


def host_config(cfg: Config, workdir: Path) -> Config:
    """A host's config.yaml: the run's, found through TF_CONFIG, writing to the host's own directory;
    checkpoint.dir (the shared storage) made absolute, as every host sees it at the same path."""
    ckpt = str(Path(cfg.checkpoint.dir).resolve()) if cfg.checkpoint.dir else None
    return cfg.model_copy(update={
        "output_dir": str(workdir),
        "cluster": cfg.cluster.model_copy(update={"resolver": "tf_config", "hosts": None}),
        "checkpoint": cfg.checkpoint.model_copy(update={"dir": ckpt}),
    })


def _cluster(cfg: Config, tasks: Sequence[Task]) -> LocalCluster:
    if cfg.strategy.kind == "parameter_server":  # workers and ps serve until stopped; a lost worker is restarted
        return LocalCluster(tasks, max_restarts=cfg.cluster.restart_workers, serving=("worker", "ps"), say_fatal=False)
    return LocalCluster(tasks, max_restarts=0, restartable=(), exit_0_is_done=True, say_fatal=False)


def _watch(cfg: Config, local: LocalCluster, chief: Task, stop_reason: list[str], start: float) -> None:
    """Follow the chief's log until the run is done, a task is lost for good, a signal, or cluster.timeout_s."""
    local.watch()
    follow = LogFollower(chief.log_path, hide=_CHIEF_SUMMARY)
    while not local.done() and local.fatal is None and not stop_reason:
        follow.poll()
        if cfg.cluster.timeout_s and time.perf_counter() - start > cfg.cluster.timeout_s:
            raise ClusterError(f"the run took longer than cluster.timeout_s={cfg.cluster.timeout_s:g} s; every "
                               "process of the emulated hosts was stopped and the hosts removed")
        time.sleep(0.1)
    follow.poll()


_CHIEF_SUMMARY = re.compile(r"(val_accuracy \S+, .* examples/s on |results: |error: )")  # the launcher says its own
_UNHEALTHY = re.compile(r"unhealthy \(stopped sending heartbeats\):\s*/job:(\w+)/replica:0/task:(\d+)")


def _fatal_error(cfg: Config, local: LocalCluster, hosts: dict[str, list[str]], run_dir: Path) -> str:
    """One line naming the host and task lost. A worker whose peers TensorFlow's coordination service declared
    unhealthy (its heartbeats stopped: a cut link) is the one lost, not the first to exit."""
    time.sleep(0.5)  # let a task that failed at the same moment show up
    failed = [t for t in local.tasks if t.process is not None and t.process.poll() not in (None, 0)]
    lost = failed[0] if failed else local.tasks[0]
    for t in failed:
        found = _UNHEALTHY.search(t.log_path.read_text(errors="replace")) if t.log_path.exists() else None
        if found:
            lost = next(u for u in local.tasks if (u.job, u.index) == (found.group(1), int(found.group(2))))
            break
    where = f"host {_host_of(lost, hosts)}: task {lost.name} ({lost.address})"
    if lost not in failed:
        how = "stopped answering (TensorFlow's coordination service: no heartbeats)"
    elif (said := last_line(lost)).startswith(": "):  # its own error line says why (start-up timeout, bad input)
        return f"{where} exited: {describe_exit(lost.process.returncode)}{said} (logs: {run_dir})"
    else:
        how = f"exited: {describe_exit(lost.process.returncode)}{said}"
    why = ("every worker all-reduces every step" if cfg.strategy.kind == "multi_worker_mirrored"
           else "ParameterServerStrategy cannot go on without the chief or a ps")
    return f"{where} {how}; {why}, so the run was stopped: {resume_hint(cfg)} (logs: {run_dir})"


def _host_of(task: Task, hosts: dict[str, list[str]]) -> str:
    return next(name for name, tasks in hosts.items() if task.name in tasks)


def _clean(out: Path, run_dir: Path) -> None:
    """A previous run's logs, results and host directories (checkpoint.dir is elsewhere and stays)."""
    (out / "results.json").unlink(missing_ok=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(out / "hosts", ignore_errors=True)
    run_dir.mkdir(parents=True, exist_ok=True)
