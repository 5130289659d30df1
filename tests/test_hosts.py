"""Emulated hosts: the pieces (paradl_tf.cluster.hosts), the multi-host recipes of docs/deployment.md run as written
on them, a cluster on them (cluster.hosts), and failure drills. Root and `ip netns` are needed: where they are
missing these tests skip, saying why.

After each test nothing is left: no namespace, cgroup or /etc/netns entry of the run, no process in its directories.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import psutil
import pytest

from paradl_tf import cluster as cl
from paradl_tf.cluster import emulated, hosts
from paradl_tf.config import load_config
from paradl_tf.errors import ConfigError
from test_docs_examples import blocks_of  # tests/ is on sys.path under pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOSTS = hosts.hosts_available()
needs_hosts = pytest.mark.skipif(HOSTS is not None, reason=f"no emulated hosts here: {HOSTS}")
MWM, PS = "configs/sync_multiworker.yaml", "configs/async_ps.yaml"
SMALL = ["train.verbose=2", "model.hidden=[32]"]


# ---------------------------------------------------------------- layout and config, no root
def test_one_host_per_task_and_the_tasks_at_their_names():
    cfg = load_config(PS, ["cluster.hosts={per_host: {n2: {bandwidth_mbit: 5, cpu_share: 0.5}}, bandwidth_mbit: 100}"])
    assert emulated.layout(cfg) == {"n1": ["chief:0"], "n2": ["worker:0"], "n3": ["worker:1"], "n4": ["ps:0"]}
    assert emulated.host_spec(cfg, emulated.layout(cfg)) == {
        "chief": ["n1:8888"], "worker": ["n2:8888", "n3:8888"], "ps": ["n4:8888"]}
    planned = emulated.planned_hosts(cfg)
    assert planned["n2"] == {"address": "10.231.0.2", "bandwidth_mbit": 5.0, "cpu_share": 0.5, "tasks": ["worker:0"]}
    assert planned["n3"]["bandwidth_mbit"] == 100.0 and planned["n3"]["cpu_share"] is None


def test_groups_share_a_host_on_the_next_ports():
    cfg = load_config(PS, ["cluster.hosts={groups: [[chief:0, ps:0], [worker:0, worker:1]]}"])
    assert emulated.host_spec(cfg, emulated.layout(cfg)) == {
        "chief": ["n1:8888"], "worker": ["n2:8888", "n2:8889"], "ps": ["n1:8889"]}


@pytest.mark.parametrize("config,hosts_cfg,message", [
    (PS, "{groups: [[chief:0], [worker:0]]}",
     r"cluster\.hosts\.groups must name every task of the cluster once \(chief:0, worker:0, worker:1, ps:0\)\. "
     r"Received: missing=\['ps:0', 'worker:1'\], unknown=\[\], twice=\[\]$"),
    (MWM, "{per_host: {n3: {cpu_share: 0.5}}}", r"cluster\.hosts\.per_host names no host of the run \(n1, n2\)\. "
                                                r"Received: \['n3'\]$"),
    (MWM, "{subnet: 10.231.0.0/31}", r"cluster\.hosts\.subnet 10\.231\.0\.0/31 has too few addresses for 2 hosts$"),
])
def test_layout_errors_name_the_key(config, hosts_cfg, message):
    with pytest.raises(ConfigError, match=message):
        emulated.layout(load_config(config, [f"cluster.hosts={hosts_cfg}"]))


@pytest.mark.parametrize("config,overrides,message", [
    (PS, ["cluster.mode=in_process"], r"cluster\.hosts: emulated hosts run a local process cluster of "
                                      r"multi_worker_mirrored or parameter_server .*Received: strategy\.kind="
                                      r"parameter_server, cluster\.resolver=local, cluster\.mode=in_process"),
    (MWM, ["cluster.resolver=tf_config"], r"Received: strategy\.kind=multi_worker_mirrored, cluster\.resolver=tf_config"),
])
def test_hosts_only_for_a_local_cluster(config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config, ["cluster.hosts={}", *overrides])


def test_the_config_check_compares_only_what_changes_the_computation():
    """Per-host keys (output_dir, the cluster section, where checkpoint.dir is, what is printed) may differ
    between hosts; the model, data, batch, whether backups are made may not."""
    from paradl_tf.runs.multi_worker import computation_config

    base = load_config(MWM, ["checkpoint.dir=/a/backup"])
    same = ["output_dir=/elsewhere", "cluster.resolver=tf_config", "cluster.port=9000", "checkpoint.dir=/b/backup",
            "train.verbose=0", "checkpoint.keep=2", "devices.threads.intra_op=2"]
    assert computation_config(load_config(MWM, ["checkpoint.dir=/a/backup", *same])) == computation_config(base)
    backup = "checkpoint.dir=/a/backup"
    for different in ([backup, "model.hidden=[64]"], [backup, "train.global_batch_size=32"], []):
        assert computation_config(load_config(MWM, different)) != computation_config(base), different


# ---------------------------------------------------------------- the pieces
def _mine(pids) -> list[str]:
    """What hosts.leftovers() holds that runs of these pids made."""
    return [n for n in hosts.leftovers() if any(f"{hosts.PREFIX}-{pid}-" in n for pid in pids)]


def _processes_under(path: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter():
        try:
            if p.cwd().startswith(str(path)):
                found.append(p)
        except psutil.Error:
            pass
    return found


def _python(host, code: str, **kwargs) -> subprocess.CompletedProcess:
    return host.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, **kwargs)


@needs_hosts
@pytest.mark.timeout(60)
def test_hosts_reach_each_other_by_name_and_nothing_else(tmp_path):
    # Host b's server answers every connection for 3 s and then lists who connected.
    server = ("import socket; s = socket.socket(); s.bind(('0.0.0.0', 9000)); s.listen(); s.settimeout(3)\n"
              "peers = []\ntry:\n    while True:\n        c, peer = s.accept(); c.send(b'hi'); peers.append(peer[0])\n"
              "except OSError: print(' '.join(peers))")
    with hosts.Network(name="t", subnet="10.231.200.0/24", workdir=tmp_path) as net:
        a, b = net.add_host("a"), net.add_host("b", bandwidth_mbit=20, cpu_share=0.5)
        listening = b.popen([sys.executable, "-c", server], stdout=subprocess.PIPE, text=True)
        got = _python(a, "import socket, time\nfor _ in range(50):\n    try:\n"
                         "        print(socket.create_connection(('b', 9000)).recv(2).decode()); break\n"
                         "    except OSError: time.sleep(0.1)")
        assert got.stdout.strip() == "hi", got.stderr
        # The machine's own namespace has no way in: no interface of the run there, and a connection to b's
        # address from it never reaches b (it leaves by the machine's default route, if any).
        subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('10.231.200.2', 9000), 2)"],
                       capture_output=True)
        assert listening.communicate(timeout=20)[0].split() == [a.address]
        assert "v-b" not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
        # Nor out: a host reaches the bridge's subnet only.
        out = _python(a, "import socket; socket.create_connection(('1.1.1.1', 53), timeout=2)")
        assert "Network is unreachable" in out.stderr
        qdisc = subprocess.run(["tc", "-n", b.namespace, "qdisc", "show", "dev", "eth0"], capture_output=True, text=True)
        assert "tbf" in qdisc.stdout and "rate 20Mbit" in qdisc.stdout
        assert (b.cgroup / ("cpu.cfs_quota_us" if b.cgroup.parent.name == "cpu" else "cpu.max")).read_text().startswith("50000")
        sleeper = b.popen(["sleep", "300"])
        for _ in range(50):  # `ip netns exec` enters the namespace, then execs sleep in the same process
            if sleeper.pid in b.pids():
                break
            time.sleep(0.1)
        assert sleeper.pid in b.pids()
        made = net.resources()
    assert sleeper.wait(10) != 0 and _mine([os.getpid()]) == [], made


@needs_hosts
@pytest.mark.parametrize("policy", ["refuse", "skip"])
def test_a_refused_piece_fails_or_is_noted_in_one_line(tmp_path, monkeypatch, policy):
    monkeypatch.setattr(hosts, "CGROUP_V1_CPU", tmp_path / "no-cpu")
    monkeypatch.setattr(hosts, "CGROUP_ROOT", tmp_path / "no-cgroup")
    said = []
    with hosts.Network(name="t", subnet="10.231.201.0/24", missing=policy, say=said.append) as net:
        if policy == "refuse":
            with pytest.raises(hosts.HostError, match=r"^host a: no CPU share \(cgroup cpu quota\): no cgroup cpu "
                                                      r"controller is mounted .*cluster\.hosts\.kernel_refuses: skip"):
                net.add_host("a", cpu_share=0.5)
        else:
            host = net.add_host("a", cpu_share=0.5)
            assert host.cgroup is None and len(host.notes) == 1 and said == [f"[hosts] {host.notes[0]}; going on "
                                                                            "without it"]
    assert _mine([os.getpid()]) == []


@needs_hosts
@pytest.mark.timeout(60)
def test_ctrl_c_removes_every_host_and_process(tmp_path):
    """A process that holds a Network and is interrupted (SIGINT) leaves nothing behind."""
    code = ("import faulthandler, logging, signal, subprocess, sys, time\nfrom paradl_tf.cluster.hosts import Network\n"
            # A shell's Ctrl-C: the SIGINT the child inherits from the pytest worker was twice seen not to interrupt
            # it (its stack: still in time.sleep 30 s later), so ignored or blocked there; say so and reset it.
            "inherited = (signal.getsignal(signal.SIGINT), sorted(signal.pthread_sigmask(signal.SIG_BLOCK, [])))\n"
            "print('inherited', repr(inherited), file=sys.stderr, flush=True)\n"
            "signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])\n"
            "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
            "logging.basicConfig(level=logging.DEBUG, format='%(asctime)s %(message)s')\n"  # stop()'s steps, timed
            "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"  # where it is stuck, if it outlives SIGINT
            f"with Network(name='t', subnet='10.231.202.0/24', workdir={str(tmp_path)!r}) as net:\n"
            "    for name in ('a', 'b'):\n"  # not holding the child's stderr open, which the test reads to its end
            "        net.add_host(name, cpu_share=0.5).popen(['sleep', '300'], stdout=subprocess.DEVNULL, "
            "stderr=subprocess.DEVNULL)\n"
            "    print('up', flush=True)\n    time.sleep(300)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "up"
        assert len(_mine([proc.pid])) >= 3 and len(_processes_under(tmp_path)) == 2
        proc.send_signal(signal.SIGINT)
        try:
            assert proc.wait(30) != 0
            inherited = proc.stderr.readline().strip()
            if inherited != "inherited (<built-in function default_int_handler>, [])":
                warnings.warn(f"the pytest worker gave its child a SIGINT that would not interrupt it: {inherited}")
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # its threads' stacks to its stderr
            time.sleep(1)
            proc.kill()
            pytest.fail(f"still running 30 s after SIGINT; its stderr:\n{proc.communicate(timeout=10)[1]}")
    finally:
        proc.kill()
        proc.wait()
        hosts.sweep_stale()  # what a killed holder left (its pid is gone); nothing after a clean exit
    assert _mine([proc.pid]) == [] and _processes_under(tmp_path) == []


# ---------------------------------------------------------------- the recipes of docs/deployment.md, as written
def _recipe(test_name: str) -> str:
    """The block of docs/deployment.md whose run-by marker names this test."""
    found = [b for b in blocks_of(ROOT / "docs" / "deployment.md") if b.run_by and b.run_by[1] == test_name]
    assert len(found) == 1, f"docs/deployment.md has {len(found)} blocks run by {test_name}"
    return found[0].code


@pytest.fixture(scope="module")
def four_hosts(tmp_path_factory):
    """host0..host3 at 10.0.0.1..4: the names and addresses the recipes use. Each host's working directory has
    the repository's configs/, as a checkout there would."""
    if HOSTS is not None:
        pytest.skip(f"no emulated hosts here: {HOSTS}")
    with hosts.Network(name="recipes", subnet="10.0.0.0/24", workdir=tmp_path_factory.mktemp("hosts")) as net:
        for i in range(4):
            (net.add_host(f"host{i}").workdir / "configs").symlink_to(ROOT / "configs")
        yield net


def _shell(host, command: str, **kwargs):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "TF_CPP_MIN_LOG_LEVEL": "2"}
    return host.popen(["bash", "-c", command], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                      text=True, **kwargs)


def _small(command: str, epochs: int = 2) -> str:
    """As tests/test_docs_examples.py runs a `paradl-tf train` of the docs: with few epochs."""
    return command.rstrip() + f" --set train.epochs={epochs}"


@pytest.mark.timeout(240)
def test_two_host_recipe(four_hosts, tmp_path):
    """docs/deployment.md's MultiWorkerMirrored recipe on host0 (10.0.0.1) and host1 (10.0.0.2): the TF_CONFIGs
    from its `paradl-tf tf-config` block, /shared a directory both hosts see."""
    tf_config_command = next(b.code for b in blocks_of(ROOT / "docs" / "deployment.md")
                             if b.code.startswith("paradl-tf tf-config"))
    host_a, host_b = four_hosts.hosts["host0"], four_hosts.hosts["host1"]
    printed = _shell(host_a, tf_config_command).communicate(timeout=60)[0]
    tf_configs = dict(re.findall(r"^(worker:\d)\s+TF_CONFIG='(.*)'$", printed, re.M))
    recipe = _recipe("test_two_host_recipe").replace("/shared", str(tmp_path))
    command = _small(next(re.finditer(r"^TF_CONFIG=.*?(?<!\\)$", recipe, re.M | re.S)).group(0))
    runs = [_shell(host, command.replace("<worker:0 above>", tf_configs[task]))
            for host, task in ((host_a, "worker:0"), (host_b, "worker:1"))]
    outputs = [run.communicate(timeout=200)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs
    results = json.loads((host_a.workdir / "runs" / "sync_multiworker" / "results.json").read_text())
    assert results["cluster"]["tasks"] == {"worker": ["10.0.0.1:8888", "10.0.0.2:8888"]}
    assert results["workers"] == 2 and results["val_accuracy"] > 0.8
    assert not (host_b.workdir / "runs" / "sync_multiworker" / "results.json").exists()  # the chief's alone


@pytest.mark.timeout(240)
def test_four_host_parameter_server_recipe(four_hosts, tmp_path):
    """docs/deployment.md's parameter-server recipe: ps on host3, workers on host1 and host2 (`serve`), the chief
    on host0 (`train`), each command as written (the workers': index 0 on host1, 1 on host2)."""
    recipe = _recipe("test_four_host_parameter_server_recipe").replace("/shared", str(tmp_path))
    preamble, *parts = re.split(r"^# (host\d.*)$", recipe, flags=re.M)
    commands = dict(zip(parts[::2], (p.strip() for p in parts[1::2])))
    ps, workers, chief = commands["host3:"], commands["host1 and host2 (index 0 and 1):"], commands["host0, the chief:"]
    worker_1 = workers.replace('\\"index\\": 0', '\\"index\\": 1')
    assert worker_1 != workers
    h = four_hosts.hosts
    servers = [_shell(h[name], preamble + command)
               for name, command in (("host3", ps), ("host1", workers), ("host2", worker_1))]
    try:
        run = _shell(h["host0"], preamble + _small(chief))
        output = run.communicate(timeout=200)[0]
        assert run.returncode == 0, output
    finally:
        for server in servers:
            server.kill()
            server.wait(10)
    results = json.loads((h["host0"].workdir / "runs" / "async_ps" / "results.json").read_text())
    assert results["cluster"]["tasks"] == {"chief": ["host0:8888"], "worker": ["host1:8888", "host2:8888"],
                                           "ps": ["host3:8888"]}
    assert results["val_accuracy"] > 0.7


# ---------------------------------------------------------------- a cluster on emulated hosts, and drills
def _docs_command(test_name: str) -> tuple[str, ...]:
    """The config and `--set` overrides of the one-command block of docs/deployment.md run by this test."""
    argv = shlex.split(_recipe(test_name), comments=True)
    assert argv[:2] == ["paradl-tf", "train"] and argv[2].startswith("--config="), argv
    sets = argv[3:]
    assert sets[::2] == ["--set"] * (len(sets) // 2) and len(sets) % 2 == 0, argv
    return (argv[2].removeprefix("--config="), *sets[1::2])


def _launch(tmp_path: Path, config: str, *overrides: str) -> subprocess.Popen:
    """`paradl-tf train` in tmp_path (a configs/ link there, as in a checkout: relative paths land in tmp_path),
    with the run's output in tmp_path/run."""
    if not (tmp_path / "configs").exists():
        (tmp_path / "configs").symlink_to(ROOT / "configs")
    argv = [str(BIN / "paradl-tf"), "train", f"--config={config}", f"--set=output_dir={tmp_path / 'run'}",
            *(f"--set={o}" for o in [*SMALL, *overrides])]
    proc = subprocess.Popen(argv, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    LAUNCHED.append(proc)
    return proc


LAUNCHED: list[subprocess.Popen] = []  # left_nothing ends those still running (a failed test): Ctrl-C, then kill


class Run:
    """A launched `paradl-tf train` on emulated hosts, its output read as it comes."""

    def __init__(self, tmp_path: Path, config: str, *overrides: str):
        self.tmp_path = tmp_path
        self.proc = _launch(tmp_path, config, *overrides)
        self.lines: list[str] = []

    def wait_for(self, pattern: str, timeout_s: float = 150) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line)
            if re.search(pattern, line):
                return
        raise AssertionError(f"no {pattern!r} in {self.lines}")

    def host(self, name: str) -> hosts.Host:
        info = json.loads((self.tmp_path / "run" / "cluster" / "hosts.json").read_text())
        return hosts.Host.from_dict(info["hosts"][name])

    def finish(self, timeout_s: float = 150) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout_s)
        return self.proc.returncode, "".join(self.lines) + out, err

    def results(self) -> dict:
        return json.loads((self.tmp_path / "run" / "results.json").read_text())


@pytest.fixture
def left_nothing(tmp_path):
    """After the test: no namespace or cgroup of its runs, no process in its directory."""
    yield
    for proc in LAUNCHED:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(90)  # stopping the tasks and removing the hosts, on a loaded machine
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    LAUNCHED.clear()
    deadline = time.monotonic() + 10
    while _processes_under(tmp_path) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_under(tmp_path) == []
    assert hosts.leftovers(dead_only=True) == []


@needs_hosts
@pytest.mark.timeout(400)
def test_multi_worker_drill_link_cut_then_processes_killed_then_resumes(tmp_path, left_nothing):
    """A host's link cut mid-run: the run stops (TensorFlow's coordination service: heartbeats) with one line
    naming the host and task; the same command resumes from checkpoint.dir; its host's processes killed: the same;
    the same command again finishes what is left."""
    args = (*_docs_command("test_multi_worker_drill_link_cut_then_processes_killed_then_resumes"), "train.epochs=4")
    first = Run(tmp_path, *args)
    first.wait_for(r"^Epoch 2/4")
    first.host("n2").link.down()
    cut = time.monotonic()
    code, out, err = first.finish()
    print(f"link cut: stopped after {time.monotonic() - cut:.1f} s")
    assert code == 2, out + err
    print(err)
    # The first to notice is either side: worker:0 (TensorFlow's coordination service: worker:1's heartbeats stopped)
    # or worker:1 itself (its collectives time out); the line names the host cut off either way.
    assert re.fullmatch(r"error: host n2: task worker:1 \(n2:8888\) (stopped answering|exited: exit status 2: worker:1: "
                        r"the cluster lost a worker).* rerun the same command to resume from the last backup in "
                        r"checkpoint\.dir=\S+.*\n", err)
    assert "Traceback" not in out + err

    second = Run(tmp_path, *args)
    second.wait_for(r"^Epoch \d/4")
    assert second.lines[-1].startswith(("Epoch 2/4", "Epoch 3/4")), second.lines  # resumed: epoch 1 is not trained again
    killed = second.host("n2").kill()
    code, out, err = second.finish()
    assert killed and code == 2, out + err
    assert re.fullmatch(r"error: host n2: task worker:1 \(n2:8888\) exited: killed by SIGKILL.*; every worker "
                        r"all-reduces every step, so the run was stopped: rerun the same command .*\n", err)

    code, out, err = Run(tmp_path, *args).finish()
    assert code == 0, out + err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["resumed_from_step"] > 0 and results["epochs_this_run"] < 4
    assert set(results["emulated_hosts"]["hosts"]) == {"n1", "n2"}
    # Each host ran its own config.yaml, its own output_dir in it: the workers' config check let that differ.
    configs = [load_config(tmp_path / "run" / "hosts" / name / "config.yaml") for name in ("n1", "n2")]
    assert configs[0].output_dir != configs[1].output_dir and configs[0].cluster.resolver == "tf_config"


@needs_hosts
@pytest.mark.timeout(300)
def test_parameter_servers_go_on_without_a_lost_worker_host_and_take_it_back(tmp_path, left_nothing):
    """Worker host n2's processes are killed: training goes on on n3's worker while n2's `serve` restarts, and takes
    it back (a killed process's steps are lost with it: the steps counted are the new one's). Then n3's link is
    cut for 5 s: the run waits for the step in flight there (gRPC does not notice a silent partition; TCP
    resends when the link returns) and finishes."""
    run = Run(tmp_path, *_docs_command("test_parameter_servers_go_on_without_a_lost_worker_host_and_take_it_back"),
              "train.epochs=150", "train.steps_per_epoch=10")
    run.wait_for(r"^Epoch 3/150")
    assert run.host("n2").kill()
    killed = time.monotonic()
    run.wait_for(r"\[cluster\] task worker:0 \(n2:8888, pid \d+\) exited: killed by SIGKILL; restarting it")
    run.wait_for(r"^Epoch \d+/150")  # went on without n2
    serving = tmp_path / "run" / "cluster" / "n2-worker-0.log"
    while serving.read_text().count("serving worker:0") < 2:  # n2 is back
        run.wait_for(r"^Epoch \d+/150")
    back = time.monotonic() - killed
    n3 = run.host("n3")
    n3.link.down()
    time.sleep(5)
    n3.link.up()
    code, out, err = run.finish(240)
    assert code == 0, out + err
    r = run.results()
    steps = r["worker_steps"]
    print(f"worker host n2 killed: serving again after {back:.1f} s; steps per worker: {steps}")
    assert steps["worker:0"]["restarts"] == 1 and steps["worker:0"]["executed_steps"] > 0, steps
    assert steps["worker:1"]["executed_steps"] > 0, steps
    # Every step ran, at least once (a step lost with the killed worker may run twice), and every epoch ended.
    assert r["optimizer_iterations"] >= r["requested_steps"] == 150 * 10 and len(r["history"]["loss"]) == 150


@needs_hosts
@pytest.mark.timeout(150)
def test_a_host_that_never_starts_is_named_after_the_start_timeout(tmp_path, left_nothing):
    """MultiWorkerMirrored: worker 0 waits for worker 1 until cluster.start_timeout_s, not TensorFlow's hour. (A
    parameter-server chief waits for its servers the same way on every cluster: tests/test_parameter_server.py.)"""
    command = _docs_command("test_a_host_that_never_starts_is_named_after_the_start_timeout")
    code, out, err = Run(tmp_path, *command, "cluster.start_timeout_s=8").finish()
    assert code == 2, out + err
    assert re.fullmatch(r"error: host n1: task worker:0 \(n1:8888\) exited: killed by SIGKILL: worker:0: task worker:1 "
                        r"\(n2:8888\) did not come up within cluster\.start_timeout_s=8 s: start every task with its "
                        r"TF_CONFIG, .* \(logs: \S+\)\n", err), err


@needs_hosts
@pytest.mark.timeout(150)
def test_ctrl_c_to_the_launcher_leaves_nothing(tmp_path, left_nothing):
    """Both workers on one host (cluster.hosts.groups: the second task on the next port), under a CPU quota; Ctrl-C
    to the launcher stops both and removes the host."""
    run = Run(tmp_path, MWM, "cluster.hosts={groups: [[worker:0, worker:1]], cpu_share: 0.9}", "train.epochs=30")
    run.wait_for(r"^Epoch 1/30")
    assert len(_processes_under(tmp_path)) >= 2
    (host,) = json.loads((tmp_path / "run" / "cluster" / "hosts.json").read_text())["hosts"].values()
    assert host["name"] == "n1" and host["cpu_share"] == 0.9, host
    assert {p.name for p in (tmp_path / "run" / "cluster").glob("n1-*.log")} == {"n1-worker-0.log", "n1-worker-1.log"}
    os.killpg(run.proc.pid, signal.SIGINT)
    code, out, err = run.finish(60)
    assert code == 130 and "interrupted" in err, out + err
