"""A local cluster of task processes: one per task with its TF_CONFIG and log, watched and restarted as allowed."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import psutil

from paradl_tf.tf_logs import TF_LOG_LINE
from paradl_tf.cluster.network import wait_until_reachable
from paradl_tf.cluster.processes import STOP_GRACE_S, describe_exit, kill_tree
from paradl_tf.cluster.spec import Spec, clip_text, tf_config



@dataclass
class Task:
    """One task of a local cluster: its address, command, environment and log; its process once started."""

    job: str
    index: int
    address: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    cwd: Path | None = None  # an emulated host's working directory; default: this process's
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
    Tasks of `expendable` jobs (tf.data service data workers) are not restarted; losing one is news while
    another of its job runs. Tasks of `serving` jobs serve until stopped: `done()` does not wait for them.
    """

    def __init__(self, tasks: Sequence[Task], max_restarts: int = 3, restartable: Sequence[str] = ("worker",),
                 on_fatal: Callable[[str], None] | None = None, poll_s: float = 0.2, exit_0_is_done: bool = False,
                 expendable: Sequence[str] = (), serving: Sequence[str] = (), say_fatal: bool = True):
        self.tasks = list(tasks)
        self.say_fatal = say_fatal  # False where the caller turns the loss into its own one-line error
        self.expendable = set(expendable)
        self.serving = set(serving)
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
    def start(self, jobs: Sequence[str] | None = None) -> "LocalCluster":
        """Start the tasks not started yet (of `jobs` only, if given: e.g. a service before its clients)."""
        for task in self.tasks:
            if task.process is None and (jobs is None or task.job in jobs):
                self._spawn(task)
        return self

    def wait_until_reachable(self, timeout_s: float, jobs: Sequence[str] | None = None) -> None:
        by_name = {t.name: t for t in self.tasks if jobs is None or t.job in jobs}

        def why_down(name: str) -> str | None:
            proc = by_name[name].process
            if proc is None or proc.poll() is None:
                return None
            return f"its process exited during start-up ({describe_exit(proc.returncode)}){last_line(by_name[name])}"

        wait_until_reachable({t.name: t.address for t in by_name.values()}, timeout_s, why_down)

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

    def write_info(self, run_dir: Path, info: dict) -> None:
        """cluster.json: `info` (cluster_info) with each task's pid in the run's PID namespace and its log; the
        launcher adds the pids on the host."""
        write_json(run_dir / "cluster.json", {**info, "pids": self.pids(), "task_logs": self.logs(),
                                              "logs": str(run_dir)})

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
                task.argv, env={**task.env, "PARADL_TF_PARENT_PID": str(os.getpid())}, cwd=task.cwd,
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
        return all(t.process is not None and t.process.poll() == 0 for t in self.tasks if t.job not in self.serving)

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
        if task.job in self.expendable and same_job_alive:
            self.events.append(f"{message}; going on with {len(same_job_alive)} {task.job}(s)")
            print(f"[cluster] {self.events[-1]}", flush=True)
            return
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
            if self.say_fatal:
                print(f"[cluster] {message}", file=sys.stderr, flush=True)
            if self.on_fatal:
                self.on_fatal(message)


def last_line(task: Task) -> str:
    with contextlib.suppress(OSError):
        lines = [ln for ln in task.log_path.read_text(errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error: ")]
        if errors:
            return f": {errors[-1].removeprefix('error: ')}"
        if lines and not lines[-1].startswith("==="):
            return f"; last log line: {clip_text(lines[-1], 200)} (log: {task.log_path})"
    return f" (log: {task.log_path})"




class LogFollower:
    """Copies the new complete lines of a task's log to this process's stdout, TensorFlow's C++ log lines (and
    those `hide` matches) left out: the chief's Keras progress shows in the terminal as it happens, the whole log
    stays in the file."""

    def __init__(self, path: Path, hide: re.Pattern | None = None):
        self.path, self._offset, self._partial, self.hide = path, 0, "", hide

    def poll(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            with open(self.path, "rb") as log:
                log.seek(self._offset)
                chunk = log.read()
            self._offset += len(chunk)
            *lines, self._partial = (self._partial + chunk.decode(errors="replace")).split("\n")
            shown = [ln for ln in lines if ln.strip() and not TF_LOG_LINE.match(ln)
                     and not (self.hide and self.hide.match(ln))]
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

def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically: a reader (the launcher, a user) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)
