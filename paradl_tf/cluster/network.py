"""Where a cluster's servers can be reached: private network namespaces, and waiting until tasks accept connections.

Security: tf.distribute.Server serves unauthenticated gRPC that runs any graph it is sent, and it listens on
all interfaces whatever address the spec names (ServerDef has no host field). The local launcher therefore
runs the whole cluster, chief included, inside private user, network and PID namespaces (`unshare`): only
loopback exists there, and every process in them dies with the namespace. Where that is impossible it warns.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import select
import signal
import shutil
import socket
import struct
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Callable, Mapping, Sequence


from paradl_tf.errors import ClusterError, ParadlWarning
from paradl_tf.tf_logs import terminal_stderr



UNSHARE_ARGS = ("--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc", "--kill-child")


class ClusterSecurityWarning(ParadlWarning):
    """TensorFlow servers of this run can be reached from other machines."""


EXPOSED = (
    "SECURITY: {where} serves unauthenticated gRPC that runs any TensorFlow graph sent to it, on every network "
    "interface of this machine (not only 127.0.0.1). Anyone who can reach this host can run code as this user. "
    "{why}"
)


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


def start_deadline(tasks: Mapping[str, str], timeout_s: float, me: str, status_path: Path | None = None
                   ) -> Callable[[], None]:
    """Start a watchdog process; returns the function that stops it. Unless stopped within timeout_s, it names the
    tasks that do not accept connections in one line (stderr as `error: ...`, and status.json if given) and kills
    this process. A process, not a thread: where TensorFlow waits for a missing task, it blocks holding the GIL,
    and SIGTERM does not end it."""
    read_end, write_end = os.pipe()
    args = json.dumps({"tasks": dict(tasks), "timeout_s": timeout_s, "me": me, "parent": os.getpid(),
                       "status": str(status_path) if status_path else None, "fd": read_end})
    watchdog = subprocess.Popen([sys.executable, "-c", f"from paradl_tf.cluster.network import _deadline; "
                                 f"_deadline({args!r})"], pass_fds=(read_end,), stdin=subprocess.DEVNULL,
                                stderr=terminal_stderr())  # its line must outlive this process, which it kills
    os.close(read_end)

    def stop() -> None:
        os.close(write_end)  # the watchdog reads EOF and exits; so it does if this process dies
        watchdog.wait()

    return stop


def _deadline(args: str) -> None:
    a = json.loads(args)
    if select.select([a["fd"]], [], [], a["timeout_s"])[0]:
        return  # stopped in time, or the process it watches is gone
    tasks = a["tasks"]
    down = [name for name, address in tasks.items() if not _accepts(address)]
    what = ", ".join(f"{name} ({tasks[name]})" for name in down)
    line = (f"task{'s' if len(down) > 1 else ''} {what} did not come up" if down
            else "every task accepts connections, but the cluster did not form")
    message = (f"{a['me']}: {line} within cluster.start_timeout_s={a['timeout_s']:g} s: start every task with its "
               "TF_CONFIG, and check that each address resolves and is reachable from every host")
    if a["status"]:
        Path(a["status"]).write_text(json.dumps({"error": message, "type": "ClusterError"}) + "\n")
    print(f"error: {message}", file=sys.stderr, flush=True)
    os.kill(a["parent"], signal.SIGKILL)


def _accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1.0).close()
        return True
    except OSError:
        return False


def wait_until_gone(address: str, gone_s: float, poll_s: float = 1.0) -> None:
    """Return once `address`, seen accepting connections, has refused them for `gone_s` seconds. Only a refusal
    counts (the host answers, nothing listens): a link that is down or a host that does not answer is not an
    ended chief, so a worker cut off for a while is still there when its link comes back."""
    seen, refused_since = False, None
    host, _, port = address.rpartition(":")
    while True:
        time.sleep(poll_s)
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            seen, refused_since = True, None
        except ConnectionRefusedError:
            refused_since = refused_since or time.monotonic()
            if seen and time.monotonic() - refused_since >= gone_s:
                return
        except OSError:  # unreachable, timed out, not resolved: no news
            continue


# ================================================================ network isolation
def in_private_network() -> bool:
    """True when this process's network namespace has no interface but loopback."""
    return {name for _, name in socket.if_nameindex()} <= {"lo"}


def cluster_info(resolver: str, mode: str, tasks: Mapping[str, list[str]]) -> dict:
    """What a run's results.json says about its cluster: how it was found, how it runs, whether only this
    machine can reach it, and its tasks."""
    return {"resolver": resolver, "mode": mode, "private_network": in_private_network(), "tasks": dict(tasks)}


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


