"""Process lifetimes: children that die with their parent, exits described in words, trees killed on every path."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from pathlib import Path
from typing import Mapping, Sequence

import psutil




STOP_GRACE_S = 5.0  # SIGTERM, then this long, then SIGKILL


_PR_SET_PDEATHSIG = 1


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity, which TensorFlow sizes its pools by), not the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


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
    """How this process shows in `ps` and `pgrep -f` on the host, e.g. 'paradl-tf serve ps:0'.

    Its short name (/proc/PID/comm, which setproctitle sets from the title) gets no spaces: Slurm's
    proctrack/linuxproc reads /proc/PID/stat with sscanf("%ld %s %c %ld"), skips a process whose name has a
    space, and so never signals it when the step ends (SchedMD/slurm, proctrack/linuxproc/kill_tree.c)."""
    import setproctitle

    setproctitle.setproctitle(title)
    setproctitle.setthreadtitle(title.replace(" ", "-")[:15])  # the main thread's name is the process's


def host_pids(namespace_pids: Mapping[str, int], processes: Sequence[psutil.Process]) -> dict[str, int]:
    """Task name -> pid on the host, for tasks known by their pid inside the run's PID namespace: the last
    field of /proc/PID/status's NSpid line is a process's pid in its innermost namespace."""
    by_namespace_pid = {}
    for p in processes:
        with contextlib.suppress(OSError, ValueError):
            nspid = next(ln for ln in Path(f"/proc/{p.pid}/status").read_text().splitlines() if ln.startswith("NSpid:"))
            by_namespace_pid[int(nspid.split()[-1])] = p.pid
    return {name: by_namespace_pid[pid] for name, pid in namespace_pids.items() if pid in by_namespace_pid}


