"""Running worker processes: one measurement each, interleaved round by round, killed with all they started."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import psutil

from paradl_tf import cluster as cl
from paradl_tf.benchmark.budgets import Budget, record_wall
from paradl_tf.benchmark.figures import process_figures
from paradl_tf.benchmark.modes import Mode
from paradl_tf.benchmark.specs import Spec
from paradl_tf.benchmark.worker import MARK


def run_worker(worker: dict, log_path: Path, timeout_s: float, cpus: frozenset[int] | None = None,
               env: dict[str, str] | None = None) -> dict:
    """Run one bench_worker process; its result dict (ok False with the reason on any failure). Never leaves it running.
    cpus: pin it, and every process it starts, to these CPUs; env: variables set for it besides the bench's own."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    run_dir = tempfile.mkdtemp(prefix="paradl_bench_")
    spec = {**worker, "run_dir": run_dir, "spawned_at": time.time()}
    argv = [sys.executable, "-m", "paradl_tf.benchmark.worker", "--spec=" + json.dumps(spec)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": _package_root(), **(env or {})}
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                                start_new_session=True, preexec_fn=_preexec(cpus))
        _RUNNING.add(proc)
        try:
            stdout, _ = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill(proc)
            return {"ok": False, "error": f"timed out after {timeout_s:.0f} s and was killed; log: {log_path}"}
        finally:
            _kill(proc)
            _RUNNING.discard(proc)
            remove_tree(run_dir)
    wall = time.perf_counter() - start
    for line in reversed(stdout.splitlines()):
        if line.startswith(MARK):
            return {**json.loads(line[len(MARK):]), "process_wall_seconds": wall}
    return {"ok": False, "error": f"the worker exited with status {proc.returncode} without a result; log: {log_path}",
            "process_wall_seconds": wall}


_RUNNING: set[subprocess.Popen] = set()  # worker processes now running (several only in tiny mode and side by side)


def _preexec(cpus: frozenset[int] | None):
    """The worker's preexec_fn: it dies with this process and, given cpus, runs on them alone; the affinity is
    inherited by every process it starts (a local cluster's tasks too)."""
    die_with_parent = cl.preexec_die_with_parent()
    if not cpus:
        return die_with_parent

    def preexec():
        if die_with_parent:
            die_with_parent()
        os.sched_setaffinity(0, cpus)

    return preexec


def _kill(proc: subprocess.Popen) -> None:
    """Kill the worker and everything it started (its session, then any descendant that left it)."""
    processes = [proc.pid, *(c.pid for c in cl.descendants(proc.pid))]
    with contextlib.suppress(ProcessLookupError, PermissionError):  # the session, even after the worker exited
        os.killpg(proc.pid, signal.SIGKILL)
    cl.kill_tree([p for pid in processes if (p := _process(pid))], grace_s=0)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _process(pid: int) -> psutil.Process | None:
    with contextlib.suppress(psutil.Error):
        return psutil.Process(pid)
    return None


def remove_tree(path: str) -> None:
    """Remove a folder and all it holds; nothing if it is gone."""
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def _package_root() -> str:
    """The directory holding the paradl_tf package, first on the workers' PYTHONPATH: they import this copy."""
    root = str(Path(__file__).resolve().parents[2])
    return os.pathsep.join([root, os.environ["PYTHONPATH"]]) if os.environ.get("PYTHONPATH") else root


def run_interleaved(specs: list[Spec], out: Path, mode: Mode, budget: Budget, log: Callable[[str], None]) -> None:
    """Round r runs repetition r of every spec, in order (A B C A B C ...); past the budget the rest are skipped."""
    rounds = max((s.reps for s in specs), default=0)
    for r in range(rounds):
        batch = [s for s in specs if s.reps > r]
        if mode.jobs > 1:
            concurrently([functools.partial(run_one, s, r, out, mode, budget, log) for s in batch], mode.jobs)
        else:
            for spec in batch:
                run_one(spec, r, out, mode, budget, log)


def concurrently(calls: list[Callable[[], Any]], at_once: int) -> list[Any]:
    """The calls' results, in order, `at_once` of them running at a time (each in a thread: they start and wait on
    worker processes). Ctrl-C or SIGTERM in this thread kills every worker now running, which the threads wait on."""
    with ThreadPoolExecutor(at_once) as pool:
        futures = [pool.submit(call) for call in calls]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for proc in list(_RUNNING):
                _kill(proc)
            pool.shutdown(cancel_futures=True)
            raise


def run_one(spec: Spec, r: int, out: Path, mode: Mode, budget: Budget, log: Callable[[str], None]) -> None:
    """Repetition r of `spec`, unless it would end past the budget (then a skipped result)."""
    name = "_".join(str(k) for k in spec.key if k is not None)
    if not budget.fits(spec.key[2]):
        spec.results.append({"ok": False, "skipped": True, "error": f"it would end past the {mode.name} mode's "
                             f"{budget.part} budget of {budget.seconds:.0f} s"})
        log(f"  skipped {name} #{r + 1}: time budget")
        return
    t = time.perf_counter()
    result = run_worker(spec.worker, out / "logs" / f"{_safe(name)}_{r}.log", mode.timeout_s)
    wall = time.perf_counter() - t
    record_wall(spec.key[2], wall)
    spec.results.append(result)
    status = "ok" if result.get("ok") else f"FAILED: {result.get('error')}"
    log(f"  [{wall:5.1f} s] {name} #{r + 1}: {_brief(result) if result.get('ok') else status}")


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _brief(result: dict) -> str:
    if "matmul" in result:
        return "peak " + ", ".join(f"{d} {max(m['flops_per_sec']) / 1e9:.1f}" for d, m in result["matmul"].items()) \
            + " GFLOP/s"
    per_proc = process_figures(result)
    return f"{per_proc['examples_per_sec']:.0f} examples/s, {per_proc['step_seconds'] * 1e3:.2f} ms/step"


class sigterm_interrupts:
    """SIGTERM raises KeyboardInterrupt while the benchmark runs, so the running worker is killed on the way out."""

    def __enter__(self):
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._raise)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return False

    @staticmethod
    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
