"""Emulated hosts on one machine: a host is a network namespace, a link a veth pair to a bridge, Mininet-style.

    with Network(name="rehearsal", subnet="10.231.0.0/24") as net:
        n1 = net.add_host("n1", bandwidth_mbit=100, cpu_share=0.5)   # 10.231.0.1, resolves n2 by name
        n2 = net.add_host("n2")
        proc = n1.popen(["paradl-tf", "serve"], env={**os.environ, "TF_CONFIG": ...}, cwd=n1.workdir)

Each host has its own network namespace (`ip netns`), an address on the bridge, a hostname every host resolves
(`ip netns exec` bind-mounts /etc/netns/<namespace>/hosts over /etc/hosts), a working directory, and
optionally a link bandwidth (`tc ... tbf`, both directions) and a CPU share (a cgroup's CPU quota).

Security: tf.distribute.Server listens unauthenticated on every interface. The bridge therefore lives in a
namespace of its own (the switch), never in the machine's own: the hosts reach each other and nothing else,
and nothing else reaches them. Leaving the `with` block, on every path (Ctrl-C included), kills every process
in the hosts' namespaces and removes the namespaces (and with them the veth pairs and the bridge), the
cgroups and the /etc/netns entries. Needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN on the machine).

TensorFlow-free, like the rest of the launching side.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import psutil

from paradl_tf.errors import ClusterError

PREFIX = "paradl"  # every namespace and cgroup of a run: paradl-<pid>-<n>-<host>
NETNS_DIR, ETC_NETNS = Path("/run/netns"), Path("/etc/netns")
CGROUP_V1_CPU, CGROUP_ROOT = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
CFS_PERIOD_US = 100_000
HOST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,11}$")  # also the switch-side veth's name: interface names are <= 15
_OWN_NAME = re.compile(rf"^{PREFIX}-(\d+)-\d+-[a-z0-9-]+$")  # the pid of the run that made it
_runs = itertools.count()
_log = logging.getLogger(__name__)


class HostError(ClusterError):
    """The kernel refused a piece of an emulated host (a namespace, a link, a bandwidth, a CPU share)."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return _run([_tool("ip"), *args], check)


def _run(argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and done.returncode:
        detail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise HostError(f"`{' '.join(argv)}` failed: {detail}")
    return done


@functools.lru_cache(maxsize=None)
def _tool(name: str) -> str:
    exe = shutil.which(name) or next((str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None)
    if exe is None:
        raise HostError(f"emulated hosts need the `{name}` command (iproute2), which is not installed")
    return exe


@functools.lru_cache(maxsize=1)
def hosts_available() -> str | None:
    """None when this machine can make emulated hosts (root, `ip netns`, a bridge, veth pairs); otherwise why not."""
    if not os.uname().sysname == "Linux":
        return f"network namespaces are Linux-only (this is {os.uname().sysname})"
    if os.geteuid() != 0:
        return "emulated hosts need root (ip netns, bridges and veth pairs need CAP_NET_ADMIN on this machine)"
    try:
        with Network(name="probe", subnet="10.231.255.0/29") as net:
            net.add_host("a")
    except (HostError, OSError) as exc:
        return str(exc)
    return None


# ================================================================ a link
@dataclass
class Link:
    """A veth pair: `inner` (eth0) in the host's namespace, `outer` on the switch's bridge; optionally shaped."""

    switch: str  # the switch's namespace
    host_namespace: str
    outer: str
    inner: str = "eth0"
    bandwidth_mbit: float | None = None

    def create(self, bridge: str) -> None:
        _ip("-n", self.switch, "link", "add", self.outer, "type", "veth", "peer", "name", self.inner,
            "netns", self.host_namespace)
        _ip("-n", self.switch, "link", "set", self.outer, "master", bridge, "up")

    def shape(self) -> None:
        """tbf on both ends (a qdisc shapes what leaves an interface): each direction at bandwidth_mbit."""
        if self.bandwidth_mbit is None:
            return
        rate = f"{self.bandwidth_mbit:g}mbit"
        # ~1 ms of traffic (a timer tick at HZ=1000: what tbf needs to reach its rate), at least 16 KB. A larger
        # bucket lets every pause (an epoch's validation) buy a burst at the veth's own speed.
        burst = f"{max(int(self.bandwidth_mbit * 1000 / 8 / 1000), 16)}kb"
        for namespace, dev in ((self.host_namespace, self.inner), (self.switch, self.outer)):
            _run([_tool("tc"), "-n", namespace, "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate,
                  "burst", burst, "latency", "50ms"])

    def down(self) -> None:
        """Cut the link (the cable pulled): the host stays up, unreachable."""
        _ip("-n", self.switch, "link", "set", self.outer, "down")

    def up(self) -> None:
        _ip("-n", self.switch, "link", "set", self.outer, "up")

    def describe(self) -> dict:
        return {"veth": f"{self.inner}<->{self.outer}", "bandwidth_mbit": self.bandwidth_mbit, "switch": self.switch}


# ================================================================ a host
@dataclass
class Host:
    """An emulated host: a network namespace with an address, a hostname, a working directory and a CPU share.

    A Host is a plain record: the Network that made it removes it. `Host.from_dict(host.describe())` gives a
    process that did not make it (a driver) the same `popen`."""

    name: str
    address: str
    namespace: str
    workdir: Path
    cgroup: Path | None = None
    cpu_share: float | None = None
    link: Link | None = None
    notes: list[str] = field(default_factory=list)  # the pieces the kernel refused, one line each

    def argv(self, argv: Sequence[str]) -> list[str]:
        """`argv` as run on this host: in its namespace, and its cgroup (joined before exec, so children too)."""
        command = [_tool("ip"), "netns", "exec", self.namespace, *argv]
        if self.cgroup is None:
            return command
        # Joined outside the namespace: `ip netns exec` mounts a sysfs of its own, without the cgroup tree.
        return ["sh", "-c", f'echo $$ > {self.cgroup}/cgroup.procs && exec "$@"', "sh", *command]

    def popen(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
              **kwargs) -> subprocess.Popen:
        """Start `argv` on this host (cwd: its working directory unless given); Popen's other arguments pass on."""
        return subprocess.Popen(self.argv(argv), env=None if env is None else dict(env),
                                cwd=str(cwd or self.workdir), **kwargs)

    def run(self, argv: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
            **kwargs) -> subprocess.CompletedProcess:
        """Run `argv` on this host to its end (subprocess.run's arguments pass on)."""
        return subprocess.run(self.argv(argv), env=None if env is None else dict(env),
                              cwd=str(cwd or self.workdir), **kwargs)

    def pids(self) -> list[int]:
        """Every process in this host's network namespace."""
        done = _ip("netns", "pids", self.namespace, check=False)
        return [int(p) for p in done.stdout.split() if p.isdigit()]

    def kill(self, sig: int = signal.SIGKILL) -> list[int]:
        """Send `sig` to every process on this host (a host lost: power cut); returns their pids."""
        pids = self.pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        return pids

    def describe(self) -> dict:
        """What plan and results.json say about this host, and what Host.from_dict needs."""
        return {"name": self.name, "address": self.address, "namespace": self.namespace,
                "workdir": str(self.workdir), "cgroup": str(self.cgroup) if self.cgroup else None,
                "cpu_share": self.cpu_share, "link": self.link.describe() if self.link else None,
                "notes": list(self.notes)}

    @classmethod
    def from_dict(cls, data: Mapping) -> "Host":
        link = data.get("link")
        if link:
            inner, outer = link["veth"].split("<->")
            link = Link(link["switch"], data["namespace"], outer, inner, link.get("bandwidth_mbit"))
        return cls(data["name"], data["address"], data["namespace"], Path(data["workdir"]),
                   Path(data["cgroup"]) if data.get("cgroup") else None, data.get("cpu_share"), link,
                   notes=list(data.get("notes", ())))


# ================================================================ the network
class Network:
    """A switch (a bridge in a private namespace) and the hosts on it; a context manager that removes them all.

    `missing`: what to do when the kernel refuses an optional piece (a link's bandwidth, a host's CPU share):
    'refuse' raises a HostError naming the piece and why; 'skip' goes on without it, prints that line and
    keeps it in the host's notes. Namespaces, veth pairs and the bridge are never optional."""

    def __init__(self, name: str = "net", subnet: str = "10.231.0.0/24", workdir: str | Path | None = None,
                 missing: str = "refuse", say=print):
        self.id = f"{PREFIX}-{os.getpid()}-{next(_runs)}"
        self.name = name
        self.subnet = ipaddress.ip_network(subnet)
        self.switch = f"{self.id}-sw"
        self.bridge = "br0"  # inside the switch's namespace: no clash with another run's
        self.missing, self.say = missing, say
        self.hosts: dict[str, Host] = {}
        self.links: dict[str, Link] = {}
        self._addresses = self.subnet.hosts()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix=f"{self.id}-"))
        self._made: list[str] = []  # namespaces, in creation order

    # -- lifecycle
    def __enter__(self) -> "Network":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "Network":
        sweep_stale()
        self._add_namespace(self.switch)
        _ip("-n", self.switch, "link", "add", self.bridge, "type", "bridge")
        _ip("-n", self.switch, "link", "set", self.bridge, "up")
        return self

    def add_host(self, name: str, bandwidth_mbit: float | None = None, cpu_share: float | None = None) -> Host:
        """A new host on the switch, at the subnet's next address, resolvable by `name` from every host."""
        if not HOST_NAME.match(name) or name in self.hosts:
            raise HostError(f"an emulated host's name must be new and 1-12 lowercase letters, digits or -, starting "
                            f"with a letter. Received: {name!r}")
        address = str(next(self._addresses, "")) or self._full()
        namespace = f"{self.id}-{name}"
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        self._add_namespace(namespace)
        link = Link(self.switch, namespace, outer=f"v-{name}", bandwidth_mbit=bandwidth_mbit)
        link.create(self.bridge)
        _ip("-n", namespace, "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", link.inner)
        _ip("-n", namespace, "link", "set", link.inner, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        host = Host(name, address, namespace, workdir, cpu_share=cpu_share, link=link)
        self.hosts[name], self.links[name] = host, link
        self._optional(host, "bandwidth (tc tbf)", link.shape)
        if cpu_share is not None:
            self._optional(host, "CPU share (cgroup cpu quota)", lambda: self._limit_cpu(host, cpu_share))
        self._write_hosts_files()
        return host

    def stop(self) -> None:
        """Kill every process on every host, then remove namespaces (veths and bridge go with them), cgroups and
        /etc/netns entries. Safe to call twice; goes on past what fails, and raises nothing."""
        hosts, began = list(self.hosts.values()), time.monotonic()

        def done(step: str) -> None:  # at debug level: where a slow teardown spends its time
            _log.debug("%s: %s done at %.2f s", self.id, step, time.monotonic() - began)

        for host in hosts:
            with contextlib.suppress(Exception):
                host.kill(signal.SIGTERM)
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and any(_pids(ns) for ns in self._made):
            time.sleep(0.05)
        done("SIGTERM and the wait for the hosts' processes")
        for namespace in self._made:
            for pid in _pids(namespace):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        done("SIGKILL")
        for host in hosts:
            if host.cgroup is not None:
                _remove_cgroup(host.cgroup)
        done("cgroups")
        for namespace in reversed(self._made):
            _ip("netns", "del", namespace, check=False)
            shutil.rmtree(ETC_NETNS / namespace, ignore_errors=True)
            done(f"ip netns del {namespace}")
        self._made.clear()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- reporting
    def describe(self) -> dict:
        return {"name": self.name, "subnet": str(self.subnet), "switch": self.switch,
                "hosts": {name: host.describe() for name, host in self.hosts.items()}}

    def resources(self) -> list[str]:
        """What this network holds on the machine now (namespaces, cgroups, /etc/netns entries): for tests."""
        return [*self._made, *(str(h.cgroup) for h in self.hosts.values() if h.cgroup and h.cgroup.exists())]

    # -- internals
    def _add_namespace(self, namespace: str) -> None:
        _ip("netns", "add", namespace)
        self._made.append(namespace)

    def _optional(self, host: Host, piece: str, make) -> None:
        try:
            make()
        except (HostError, OSError) as exc:
            line = f"host {host.name}: no {piece}: {exc}"
            if self.missing == "refuse":
                raise HostError(f"{line} (cluster.hosts.kernel_refuses: skip goes on without it)") from None
            host.notes.append(line)
            self.say(f"[hosts] {line}; going on without it")

    def _limit_cpu(self, host: Host, share: float) -> None:
        """A cgroup whose CPU quota is `share` of one core (cgroup v1 cpu.cfs_quota_us, or v2 cpu.max)."""
        quota = max(int(share * CFS_PERIOD_US), 1000)
        if CGROUP_V1_CPU.is_dir():
            group = CGROUP_V1_CPU / host.namespace
            group.mkdir()
            host.cgroup = group
            (group / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
            (group / "cpu.cfs_quota_us").write_text(str(quota))
        elif (CGROUP_ROOT / "cgroup.controllers").exists():
            group = CGROUP_ROOT / host.namespace
            group.mkdir()
            host.cgroup = group
            (group / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
        else:
            raise HostError("no cgroup cpu controller is mounted at /sys/fs/cgroup/cpu or /sys/fs/cgroup")

    def _write_hosts_files(self) -> None:
        lines = "127.0.0.1\tlocalhost\n" + "".join(f"{h.address}\t{h.name}\n" for h in self.hosts.values())
        for host in self.hosts.values():
            path = ETC_NETNS / host.namespace / "hosts"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(lines)

    def _full(self) -> str:
        raise HostError(f"the subnet {self.subnet} has no address left for another host")


def _pids(namespace: str) -> list[int]:
    done = _ip("netns", "pids", namespace, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _remove_cgroup(group: Path) -> None:
    """rmdir a cgroup once its processes are gone (they may take a moment to leave it)."""
    for _ in range(50):
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def sweep_stale() -> list[str]:
    """Remove what a run killed without warning (SIGKILL) left: the namespaces, cgroups and /etc/netns entries
    of this module's naming whose process (the pid in the name) is gone. Returns what it removed."""
    stale = sorted({name.rsplit("/", 1)[-1] for name in leftovers(dead_only=True)})
    for namespace in stale:
        for pid in _pids(namespace):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for base in (CGROUP_V1_CPU, CGROUP_ROOT):
            if (base / namespace).is_dir():
                _remove_cgroup(base / namespace)
        if (NETNS_DIR / namespace).exists():
            _ip("netns", "del", namespace, check=False)
        shutil.rmtree(ETC_NETNS / namespace, ignore_errors=True)
    return stale


def leftovers(dead_only: bool = False) -> list[str]:
    """Namespaces, cgroups and /etc/netns entries of this module's naming that exist now; dead_only: those whose
    run (the pid in the name) has ended, which nothing will remove but sweep_stale (tests check there are none)."""
    found = [p.name for p in NETNS_DIR.glob(f"{PREFIX}-*")] if NETNS_DIR.is_dir() else []
    found += [str(p) for base in (CGROUP_V1_CPU, CGROUP_ROOT) if base.is_dir() for p in base.glob(f"{PREFIX}-*")]
    found += [str(p) for p in ETC_NETNS.glob(f"{PREFIX}-*")] if ETC_NETNS.is_dir() else []
    if dead_only:
        found = [name for name in found if _owner_gone(name)]
    return found


def _owner_gone(path: str) -> bool:
    """The run that made this (the pid in its name) has ended: no such process, or one started after it (the pid
    reused)."""
    m = _OWN_NAME.match(path.rsplit("/", 1)[-1])
    if not m:
        return False
    made = Path(path if path.startswith("/") else NETNS_DIR / path)
    try:
        return psutil.Process(int(m.group(1))).create_time() > made.stat().st_mtime + 1
    except psutil.NoSuchProcess:
        return True
    except (psutil.Error, OSError):
        return False
