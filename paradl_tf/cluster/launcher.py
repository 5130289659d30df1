"""The launching side: run a driver, which starts a local cluster, in private namespaces, and end it on every path.

The protocol between the launcher and the driver: the launcher writes the resolved config.yaml into the run's
output_dir and starts `python -m DRIVER CONFIG STATUS`; the driver starts the tasks, does the work, writes
cluster.json (tasks, pids, logs) and, however it ends, status.json; the launcher reads status.json and
results.json. The driver's stderr goes to cluster/driver.log."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import psutil

from paradl_tf.cluster.local import write_json
from paradl_tf.cluster.network import isolated, use_private_network
from paradl_tf.cluster.processes import (
    describe_exit, descendants, host_pids, kill_tree, preexec_die_with_parent, set_process_title,
)
from paradl_tf.config import Config, dump_config, load_config
from paradl_tf.errors import ClusterError, ConfigError, ParadlError



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


# ================================================================ the launcher protocol
def launch(cfg: Config, driver: str) -> dict[str, Any]:
    """The local process cluster, from the calling process: run the driver isolated, return its results.

    `driver`: the module that, run with `python -m DRIVER CONFIG STATUS`, calls driver_main with its drive
    function (paradl_tf.runs.parameter_server, paradl_tf.runs.multi_worker_driver).

    No process it starts outlives it (see cluster.run_isolated). Errors in the driver come back as the same
    one-line ConfigError or ClusterError."""
    out = Path(cfg.output_dir)
    run_dir = out / "cluster"
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path, status_path, results_path = out / "config.yaml", run_dir / "status.json", out / "results.json"
    config_path.write_text(dump_config(cfg))
    for stale in (status_path, results_path, run_dir / "cluster.json", *run_dir.glob("*.log"),
                  *run_dir.glob("*.status.json")):  # a previous run's
        stale.unlink(missing_ok=True)
    start, launched_at = time.perf_counter(), time.time()
    argv = [sys.executable, "-m", driver, str(config_path), str(status_path)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
           "PYTHONUNBUFFERED": "1",  # per-epoch progress as it happens, also through a pipe
           **cfg.devices.threads.environment()}  # every task process sizes its thread pools from these
    with open(run_dir / "driver.log", "w") as driver_log:  # the terminal gets the one error line, not the RPC errors
        code = run_isolated(argv, env=env, private_network=cfg.cluster.private_network,
                            timeout_s=cfg.cluster.timeout_s, stderr=driver_log,
                            on_poll=_host_pid_recorder(run_dir / "cluster.json"))
    status = json.loads(status_path.read_text()) if status_path.exists() else {}
    if status.get("error"):
        if status.get("type") == "ConfigError":
            raise ConfigError(status["error"])
        raise ClusterError(f"{status['error']} (logs: {run_dir})")
    if code != 0 or not results_path.exists():
        raise ClusterError(f"the local cluster's driver failed ({describe_exit(code)}) without saying why; "
                           f"task logs are in {run_dir}")
    return finish_results(results_path, start, launched_at)


def finish_results(results_path: Path, start: float, launched_at: float, **extra) -> dict[str, Any]:
    """The chief's results.json, with what only the launcher knows: the whole run's time (the chief timed itself;
    the run also started the processes and TensorFlow in each), the time from launch to the first step, `extra`."""
    results = json.loads(results_path.read_text())
    results["chief_seconds"], results["wall_seconds"] = results["wall_seconds"], time.perf_counter() - start
    if results.get("first_step_unix"):
        results["seconds_to_first_step"] = results["first_step_unix"] - launched_at
    results.update(extra)
    write_json(results_path, results)
    return results


def resume_hint(cfg: Config, backup: str = "backup") -> str:
    """What to do after a cluster lost a task it cannot do without."""
    if cfg.checkpoint.dir:
        return f"rerun the same command to resume from the last {backup} in checkpoint.dir={cfg.checkpoint.dir}"
    return f"set checkpoint.dir so that a rerun resumes from the last {backup}"


def _host_pid_recorder(path: Path) -> Callable[[list[psutil.Process]], None]:
    """run_isolated's on_poll: add each task's pid on the host to cluster.json (the driver, in its PID namespace,
    knows only its own numbering), so that a fault drill can `kill` a task from outside. Once every task is
    found it stops looking: cluster.json records the tasks as they started."""
    done = False

    def record(processes: list[psutil.Process]) -> None:
        nonlocal done
        if done:
            return
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):  # not written yet, or being written
            return
        found = host_pids(info["pids"], processes)
        if found and found != info.get("host_pids"):
            write_json(path, {**info, "host_pids": found})
        done = len(found) == len(info["pids"])

    return record


def driver_main(argv: Sequence[str], drive_fn: Callable[[Config, Path], Any]) -> None:
    """The driver (`python -m DRIVER CONFIG STATUS`, inside the namespace): `drive_fn(cfg, status_path)` starts
    the tasks and does the work; whatever happens, status.json says how it ended and the process exits."""
    config_path, status_path = argv[1], Path(argv[2])
    raise_on_interrupt()
    set_process_title("paradl-tf driver")
    code, status, error = 0, {"ok": True}, None
    try:
        drive_fn(load_config(config_path), status_path)
    except ParadlError as exc:
        code, status, error = 2, {"error": str(exc), "type": type(exc).__name__}, exc
    except KeyboardInterrupt as exc:
        code, error = 130, exc
        status = {"error": f"interrupted ({exc or 'SIGINT'}); every task of the local cluster was stopped"}
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit without TensorFlow's teardown
        traceback.print_exc()
        code, error = 1, exc
        status = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
    write_json(status_path, status)
    sys.stdout.flush()
    sys.stderr.flush()
    # Exit without TensorFlow's teardown: it would try to remove every function from the stopped tasks and log
    # an error for each. (`error` keeps a failed run's TensorFlow objects alive until here for the same reason.)
    os._exit(code)
