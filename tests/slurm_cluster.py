"""A real Slurm on emulated hosts, for tests: munged, slurmctld and one slurmd per host (test infrastructure).

    with Network(name="slurm", subnet="10.231.1.0/24") as net:
        slurm = SlurmCluster(net, ["n01", "n02"])
        try:
            slurm.start()
            job = slurm.sbatch(script_path, cwd)      # submitted from the login host, as a user would
            assert slurm.wait(job, timeout_s=300)["JobState"] == "COMPLETED"
        finally:
            slurm.stop()

The controller (slurmctld) and munged (its own key; its socket, a file, serves every host) run on a host of
their own, `login`, which is also where sbatch, srun and scontrol run. Each node's slurmd runs inside that
node's network namespace, so a job's tasks see the node's address and resolve the other nodes by name, as on
a real cluster. Everything Slurm writes (slurm.conf, state, spool, logs) lives in a temporary directory
(`root`); the commands find it through SLURM_CONF. The plugins are the ones a machine without cgroup
delegation or systemd can run: proctrack/linuxproc, task/none, select/cons_tres.

Stopping slurmd does not stop a job step: teardown cancels every job, stops the daemons, then kills whatever
is left in each node's namespace (slurmstepd and the job's processes) before the Network removes the hosts.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Mapping, Sequence

DAEMONS = ("munged", "slurmctld", "slurmd")
COMMANDS = ("sbatch", "srun", "scontrol", "scancel", "sinfo")
APT_PACKAGES = "slurm-wlm munge"
SLURMCTLD_PORT, SLURMD_PORT = 6817, 6818  # explicit: each daemon listens in a namespace of its own
CPUS_PER_NODE = 4  # slots per node (SlurmdParameters=config_overrides: more than the machine has)
ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE"}


def missing() -> str | None:
    """None when Slurm and munge are installed; otherwise what is missing (a test's skip reason)."""
    lacking = [name for name in (*DAEMONS, *COMMANDS) if _which(name) is None]
    if lacking:
        return f"Slurm tests need {', '.join(lacking)} (apt-get install {APT_PACKAGES}; .ci/run installs them)"
    return None


def _which(name: str) -> str | None:
    return shutil.which(name) or next((str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()),
                                      None)


class SlurmCluster:
    """munged and slurmctld on a `login` host, and a slurmd per node (one emulated host each, named as the node)."""

    def __init__(self, net, nodes: Sequence[str], env: Mapping[str, str] | None = None):
        self.net, self.node_names = net, list(nodes)
        self.root = Path(tempfile.mkdtemp(prefix="paradl-slurm-"))
        self.root.chmod(0o755)  # munged requires its socket's directory to be searchable by all
        self.conf = self.root / "slurm.conf"
        self.env = {**(env or os.environ), "SLURM_CONF": str(self.conf)}
        self.daemons: list[subprocess.Popen] = []
        self.login = None
        self.nodes = {}

    # -- lifecycle: start(), then stop() on every path (a fixture's finally)
    def start(self, timeout_s: float = 60) -> None:
        self.login = self.net.add_host("login")
        self.nodes = {name: self.net.add_host(name) for name in self.node_names}
        self._start_munge()
        self._write_config()
        self._daemon(self.login, [_which("slurmctld"), "-D", "-i"], "slurmctld")
        for name, host in self.nodes.items():
            (self.root / "spool" / name).mkdir(parents=True)
            self._daemon(host, [_which("slurmd"), "-D", "-N", name], f"slurmd.{name}")
        self._wait_until_idle(timeout_s)

    def stop(self) -> None:
        """Cancel every job, stop the daemons, kill what the jobs left on the nodes, remove `root`. Raises nothing."""
        if self.login is not None and self.daemons:
            with contextlib.suppress(Exception):
                self.command("scancel", "--user=root", timeout=20)
        for proc in reversed(self.daemons):
            with contextlib.suppress(Exception):
                proc.terminate()
                proc.wait(timeout=10)
            with contextlib.suppress(Exception):
                proc.kill()
                proc.wait(timeout=5)
        self.daemons.clear()
        for host in self.nodes.values():  # slurmstepd and job steps outlive slurmd
            with contextlib.suppress(Exception):
                host.kill(signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- what a user does
    def command(self, *argv: str, timeout: float = 60, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
        """A Slurm command (sbatch, srun, scontrol, ...) run on the login host."""
        return self.login.run([_which(argv[0]), *argv[1:]], env=self.env, cwd=cwd or self.root,
                              capture_output=True, text=True, timeout=timeout)

    def sbatch(self, script: Path, cwd: Path, *options: str) -> str:
        """Submit `script` from `cwd` (the job's working directory, on storage every node sees); its job id."""
        done = self.command("sbatch", "--parsable", f"--output={cwd}/slurm-%j.out", *options, str(script), cwd=cwd)
        assert done.returncode == 0, f"sbatch failed: {done.stderr.strip()}"
        return done.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job`'s fields (JobState, ExitCode, NodeList, ...)."""
        done = self.command("scontrol", "show", "job", "--oneliner", job_id)
        return dict(field.split("=", 1) for field in done.stdout.split() if "=" in field)

    def wait(self, job_id: str, timeout_s: float) -> dict[str, str]:
        """The job's fields once it has ended; cancelled, with its output in the message, after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job.get("JobState") in ENDED:
                return job
            time.sleep(1)
        self.command("scancel", job_id)
        raise AssertionError(f"job {job_id} still {self.job(job_id).get('JobState')} after {timeout_s:g} s; "
                             f"its output:\n{self.output(job_id)[-4000:]}")

    def output(self, job_id: str) -> str:
        path = Path(self.job(job_id).get("StdOut", ""))
        return path.read_text(errors="replace") if path.is_file() else ""

    def processes(self, node: str) -> dict[int, str]:
        """pid -> command line of every process on `node` but its slurmd: slurmstepd and the jobs' tasks."""
        slurmd = _which("slurmd")
        return {pid: cmd for pid in self.nodes[node].pids() if (cmd := _cmdline(pid)) and cmd.split()[0] != slurmd}

    def leftovers(self, wait_s: float = 15) -> dict[str, list[str]]:
        """Node -> the command lines of its processes but slurmd, once they have had `wait_s` to go (slurmstepd
        ends a moment after its step); {} when every node is clear."""
        deadline = time.monotonic() + wait_s
        while True:
            left = {name: list(procs.values()) for name in self.nodes if (procs := self.processes(name))}
            if not left or time.monotonic() > deadline:
                return left
            time.sleep(0.5)

    # -- internals
    def _start_munge(self) -> None:
        key = self.root / "munge.key"
        key.write_bytes(secrets.token_bytes(1024))
        key.chmod(0o400)
        self.socket = self.root / "munge.socket"
        argv = [_which("munged"), "--foreground", f"--socket={self.socket}", f"--key-file={key}",
                f"--pid-file={self.root / 'munged.pid'}", f"--seed-file={self.root / 'munged.seed'}",
                f"--log-file={self.root / 'munged.log'}"]
        self._daemon(self.login, argv, "munged")  # on a host: the Network ends it too, whatever happens here
        wait_for(self.socket.exists, 20, lambda: f"munged did not start: {self._log('munged')}")

    def _write_config(self) -> None:
        r = self.root
        nodes = [f"NodeName={name} NodeAddr={host.address} CPUs={CPUS_PER_NODE} State=UNKNOWN"
                 for name, host in self.nodes.items()]
        # slurmd starts a cgroup plugin whatever the proctrack and task plugins; `ip netns exec` mounts a sysfs of
        # its own, without the machine's cgroup tree, which this process's root still shows. Its autodetection
        # looks at /sys/fs/cgroup only: the version is named.
        version = "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1"
        (r / "cgroup.conf").write_text(f"CgroupPlugin=cgroup/{version}\n"
                                       f"CgroupMountpoint=/proc/{os.getpid()}/root/sys/fs/cgroup\n")
        (r / "plugstack.conf").write_text("")
        self.conf.write_text("\n".join([
            "ClusterName=paradl",
            f"SlurmctldHost={socket.gethostname()}({self.login.address})",  # slurmctld checks its own hostname
            f"SlurmctldPort={SLURMCTLD_PORT}", f"SlurmdPort={SLURMD_PORT}",
            "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge", f"AuthInfo=socket={self.socket}",
            f"StateSaveLocation={r / 'state'}", f"SlurmdSpoolDir={r / 'spool'}/%n",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}", f"SlurmdPidFile={r / 'slurmd.%n.pid'}",
            f"SlurmctldLogFile={r / 'slurmctld.log'}", f"SlurmdLogFile={r / 'slurmd.%n.log'}",
            f"PlugStackConfig={r / 'plugstack.conf'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "SlurmdParameters=config_overrides", "MpiDefault=none", "ReturnToService=2",
            "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "MinJobAge=3600",  # ended jobs stay visible to scontrol (no accounting database here)
            "KillWait=5",
            *nodes,
            "PartitionName=main Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def _daemon(self, host, argv: list[str], name: str) -> None:
        with open(self.root / f"{name}.out", "wb") as log:
            self.daemons.append(host.popen(argv, env=self.env, cwd=self.root, stdout=log, stderr=subprocess.STDOUT))

    def _wait_until_idle(self, timeout_s: float) -> None:
        states = {}

        def idle():
            done = self.command("sinfo", "--noheader", "--Node", "--format=%N %t", timeout=20)
            states.update(line.split() for line in done.stdout.splitlines() if line.strip())
            return done.returncode == 0 and all(states.get(n) == "idle" for n in self.nodes)

        def why():
            down = [n for n in self.nodes if states.get(n) != "idle"] or list(self.nodes)
            return (f"Slurm nodes not idle after {timeout_s:g} s: {states or 'slurmctld does not answer'}; "
                    f"slurmctld: {self._log('slurmctld')}\nslurmd on {down[0]}: {self._log(f'slurmd.{down[0]}')}")

        wait_for(idle, timeout_s, why)

    def _log(self, name: str) -> str:
        path = self.root / f"{name}.out"
        return path.read_text(errors="replace")[-2000:] if path.exists() else "(no log)"


def wait_for(ready, timeout_s: float, why) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(why())
        time.sleep(0.5)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""
