"""Asynchronous data parallel (ParameterServerStrategy) on real local clusters, and its faults.

Every cluster runs in subprocesses (the pytest process keeps its 4 logical CPUs untouched): the CLI's
process mode, or an in-process cluster inside a separate Python process. Each test has a timeout and
checks that no process it started is left.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

from paradl_tf import cluster as cl
from paradl_tf.config import load_config
from paradl_tf.errors import ConfigError
from paradl_tf.runs.parameter_server import ps_placement

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/async_ps.yaml"
ISOLATION = cl.isolation_available()
needs_isolation = pytest.mark.skipif(ISOLATION is not None, reason=f"no private network namespace: {ISOLATION}")


# ---------------------------------------------------------------- config
@pytest.mark.parametrize("name", ["sgd", "adam", "adagrad", "rmsprop"])
def test_legacy_optimizers_the_chief_uses_compute_the_same_update(name):
    """20 steps of the same gradients through tf_keras's new and legacy optimizer: equal to float32 rounding for
    the ones the parameter-server chief swaps in (LEGACY_SAME_UPDATE); RMSprop's legacy kernel differs more."""
    import numpy as np
    import tensorflow as tf
    import tf_keras

    from paradl_tf.builders.models import build_optimizer
    from paradl_tf.runs.parameter_server import LEGACY_SAME_UPDATE

    train_cfg = load_config(CONFIG, [f"train.optimizer={name}"]).train
    grads = [np.random.default_rng(i).normal(size=(5, 3)).astype("float32") for i in range(20)]
    after = []
    for legacy in (False, True):
        variable = tf.Variable(np.ones((5, 3), "float32"))
        optimizer = build_optimizer(train_cfg, tf_keras, legacy)
        for g in grads:
            optimizer.apply_gradients([(tf.constant(g), variable)])
        after.append(variable.numpy())
    moved = np.abs(after[0] - 1).max()
    same = np.allclose(after[0], after[1], rtol=0, atol=1e-6)
    assert moved > 1e-3 and same == (name in LEGACY_SAME_UPDATE), (name, np.abs(after[0] - after[1]).max())


@pytest.mark.parametrize("overrides,message", [
    (["train.steps_per_epoch=null"], r"train\.steps_per_epoch is required with strategy\.kind: parameter_server"),
    (["keras=keras3"], r"keras: keras3 cannot run this: Keras 3 does not support ParameterServerStrategy.*"
                       r"keras-team/keras#18624\); use keras: auto or tf_keras\. Received: keras='keras3'"),
    (["cluster.ps=0"], r"cluster\.ps must be at least 1 with strategy\.kind: parameter_server"),
    (["strategy.variable_partitioner={kind: fixed}"], r"strategy\.variable_partitioner\.shards: required key is missing"),
    (["strategy.variable_partitioner={kind: even}"],
     r"strategy\.variable_partitioner\.kind: unknown .* kind 'even'; choose one of: none, min_size, max_size, fixed"),
    (["cluster.mode=threads"], r"cluster\.mode: input should be 'process' or 'in_process'"),
    (["train.precision=mixed_bfloat16", "strategy.variable_partitioner={kind: fixed, shards: 2}"],
     r"train\.precision: mixed_bfloat16 cannot be combined with strategy\.variable_partitioner \(fixed\): Keras's "
     r"mixed precision cannot wrap sharded variables; use float32 or no partitioner\. "
     r"Received: train\.precision='mixed_bfloat16'$"),
    (["cluster.resolver=mpi"], r"cluster\.resolver: input should be 'local', 'tf_config', 'slurm', 'kubernetes', "
                               r"'jobset' or 'indexed_job'"),
])
def test_parameter_server_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(ROOT / CONFIG, overrides)
    assert "\n" not in str(info.value)


def test_auto_precision_stays_float32_with_sharded_variables_and_says_why(monkeypatch):
    from paradl_tf.builders import precision as pr
    from paradl_tf.runs.parameter_server import _precision

    monkeypatch.setattr(pr, "_cpu_flags", lambda: {"avx512_bf16"})
    cfg = load_config(ROOT / CONFIG, ["train.precision=auto"])
    assert _precision(cfg).policy == "mixed_bfloat16"
    sharded = _precision(load_config(ROOT / CONFIG, ["train.precision=auto",
                                                     "strategy.variable_partitioner={kind: fixed, shards: 2}"]))
    assert sharded.policy == "float32" and "strategy.variable_partitioner shards the variables" in sharded.why


def test_keras_auto_resolves_tf_keras_and_keras3_exits_2(cli):
    from paradl_tf.builders.keras_version import resolve_keras

    assert resolve_keras("auto", "parameter_server") == "tf_keras"
    done = cli("train", f"--config={CONFIG}", "--set", "keras=keras3", timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and "keras-team/keras#18624" in done.stderr


# ---------------------------------------------------------------- placement, as a pure function
def test_ps_placement_round_robin_and_shards():
    variables = [
        {"name": "a", "shape": [10, 4], "itemsize": 4},  # split in 3: rows 4, 3, 3
        {"name": "b", "shape": [4], "itemsize": 4},
        {"name": "count", "shape": [], "itemsize": 8},  # scalars are never split
        {"name": "c", "shape": [2, 8], "itemsize": 4},  # 3 asked, at most 2 rows
    ]
    placed = ps_placement(variables, num_ps=2, shards_for=lambda v: 3 if v["name"] != "b" else 1)
    devices = [[s["device"].split("/")[3] for s in p["shards"]] for p in placed]
    assert devices == [["task:0", "task:1", "task:0"], ["task:1"], ["task:0"], ["task:1", "task:0"]]
    a = placed[0]["shards"]
    assert [s["shape"] for s in a] == [[4, 4], [3, 4], [3, 4]] and [s["offset"] for s in a] == [0, 4, 7]
    assert [s["bytes"] for s in a] == [64, 48, 48] and placed[2]["shards"][0]["bytes"] == 8
    unsplit = ps_placement(variables, num_ps=3)
    assert [p["shards"][0]["device"].split("/")[3] for p in unsplit] == ["task:0", "task:1", "task:2", "task:0"]


# ---------------------------------------------------------------- a CLI run, watched from outside
def command_line(p: psutil.Process) -> str:
    """The process's command line; empty for one that exited meanwhile (a short-lived helper such as `ip`)."""
    try:
        return " ".join(p.cmdline())
    except psutil.Error:
        return ""


class ClusterRun:
    """`paradl-tf train` in a subprocess: its output line by line, and every process under it, recorded."""

    def __init__(self, *overrides: str, output_dir: Path):
        self.output_dir = output_dir
        cmd = [sys.executable, "-m", "paradl_tf.cli", "train", f"--config={CONFIG}",
               "--set", f"output_dir={output_dir}", *[a for o in overrides for a in ("--set", o)]]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self.errors: list[str] = []  # stderr
        self.seen: dict[int, psutil.Process] = {}
        self._new_line = threading.Condition()
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.errors), daemon=True).start()
        threading.Thread(target=self._watch, daemon=True).start()

    def _read(self, stream, lines: list[str]):
        for line in stream:
            with self._new_line:
                lines.append(line.rstrip("\n"))
                self._new_line.notify_all()

    def _watch(self):
        while self.proc.poll() is None:
            for p in cl.descendants(self.proc.pid):
                self.seen.setdefault(p.pid, p)
            time.sleep(0.2)

    def wait_for_line(self, pattern: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        with self._new_line:
            while True:
                hit = next((ln for ln in self.lines if re.search(pattern, ln)), None)
                if hit or self.proc.poll() is not None or time.monotonic() > deadline:
                    assert hit, f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines[-40:] + self.errors[-40:])
                    return hit
                self._new_line.wait(0.5)

    def task(self, job: str, index: int) -> psutil.Process:
        marker = f"paradl-tf serve {job}:{index}"  # the task's process title
        for p in cl.descendants(self.proc.pid):
            if marker in command_line(p):
                return p
        raise AssertionError(f"no process for {job}:{index}")

    def finish(self, timeout: float = 240) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def error_line(self) -> str:
        return next(ln for ln in reversed(self.errors) if ln.startswith("error: "))

    def results(self) -> dict:
        return json.loads((self.output_dir / "results.json").read_text())

    def assert_nothing_left(self, timeout: float = 10):
        assert self.seen, "never saw a process under the launcher"
        deadline = time.monotonic() + timeout
        while (alive := [p for p in self.seen.values() if cl.is_alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alive == [], [p.cmdline() for p in alive]


def _wait_for_file(path: Path, run: ClusterRun, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert run.proc.poll() is None and time.monotonic() < deadline, "\n".join(run.lines[-40:])
        time.sleep(0.2)
    return json.loads(path.read_text())


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _host_addresses() -> list[str]:
    return ["127.0.0.1"] + [a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                            if a.family == socket.AF_INET and not a.address.startswith("127.")]


# ---------------------------------------------------------------- end to end
@pytest.mark.timeout(300)
def test_cli_trains_digits_on_an_isolated_local_cluster(tmp_path):
    """The acceptance run: configs/async_ps.yaml as it is (2 workers, 1 ps, 127.0.0.1), in mixed_bfloat16. While it
    runs, none of its task ports can be reached from outside its namespace; when it ends, none of its processes is
    left."""
    run = ClusterRun("train.precision=mixed_bfloat16", output_dir=tmp_path)
    try:
        cluster = _wait_for_file(tmp_path / "cluster" / "cluster.json", run)
        ports = [cl.task_port(a) for addrs in cluster["tasks"].values() for a in addrs]
        if ISOLATION is None:
            assert cluster["private_network"] is True
            exposed = [(h, p) for h in _host_addresses() for p in ports if _reachable(h, p)]
            assert exposed == [], f"task ports reachable from outside the namespace: {exposed}"
        assert run.finish() == 0, "\n".join(run.lines[-40:])
    finally:
        run.kill()
    run.assert_nothing_left()
    r = run.results()
    for key in ("strategy", "keras", "replicas", "devices", "global_batch_size", "epochs", "history",
                "val_accuracy", "examples_per_sec", "wall_seconds", "cluster", "worker_steps"):
        assert key in r, key
    assert r["strategy"] == "parameter_server" and r["keras"] == "tf_keras"
    assert r["val_accuracy"] >= 0.90, r["history"]["val_accuracy"]
    assert sorted(r["cluster"]["tasks"]) == ["chief", "ps", "worker"]
    assert len(r["cluster"]["tasks"]["worker"]) == 2 and len(r["cluster"]["tasks"]["ps"]) == 1
    assert r["requested_steps"] == 8 * 20 and r["optimizer_iterations"] >= r["requested_steps"]
    executed = [w["executed_steps"] for w in r["worker_steps"].values()]
    assert sum(executed) == r["optimizer_iterations"] and all(n > 0 for n in executed), r["worker_steps"]
    assert "progress" in r and "chief" in r["evaluation"]
    assert r["optimizer_class"] == "tf_keras.src.optimizers.legacy.adam.Adam"  # LEGACY_SAME_UPDATE
    # The workers compute in bfloat16; the variables on the ps and the logits stay float32.
    assert r["precision"]["activation_dtype"] == "bfloat16" and r["precision"]["output_dtype"] == "float32"
    assert {v["dtype"] for v in r["variable_placement"]} == {"float32"}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity (one usable CPU) is Linux-only")
@pytest.mark.timeout(240)
def test_a_local_cluster_on_one_cpu_trains(tmp_path):
    """On one usable CPU (`taskset -c 0`, a 1-CPU container) TensorFlow gives each task one inter-op thread, and a
    worker with one deadlocks at its first step: it hung until killed before serve gave workers workers + 1."""
    one_cpu = {min(os.sched_getaffinity(0))}
    done = subprocess.run(
        [sys.executable, "-m", "paradl_tf.cli", "train", f"--config={CONFIG}", "--set", f"output_dir={tmp_path}",
         "--set", "train.epochs=1", "--set", "cluster.timeout_s=150"],  # a hang ends as a failed run, not a stuck test
        preexec_fn=lambda: os.sched_setaffinity(0, one_cpu), cwd=ROOT, capture_output=True, text=True, timeout=220)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["optimizer_iterations"] >= 20, r["worker_steps"]


def test_worker_server_config_gives_workers_enough_inter_op_threads(monkeypatch):
    from paradl_tf.cluster import servers

    spec = {"chief": ["a:1"], "worker": ["b:1", "c:1"], "ps": ["d:1"]}
    monkeypatch.setattr(servers, "usable_cpus", lambda: 1)
    assert servers.worker_server_config(spec, environ={}).inter_op_parallelism_threads == 3
    assert servers.worker_server_config(spec, environ={"TF_NUM_INTEROP_THREADS": "2"}) is None  # the user's choice
    monkeypatch.setattr(servers, "usable_cpus", lambda: 3)
    assert servers.worker_server_config(spec, environ={}) is None  # TensorFlow's default is enough


@pytest.mark.skipif(cl.hosts_available() is None, reason="tests/test_hosts.py's parameter-server drill kills a worker "
                                                      "host's processes and checks the same, on emulated hosts")
@pytest.mark.timeout(360)
def test_worker_killed_mid_fit_is_restarted_and_every_step_runs(tmp_path):
    epochs = 60  # long enough for the restarted worker (a new Python + TensorFlow) to rejoin before the end
    run = ClusterRun(f"train.epochs={epochs}", output_dir=tmp_path)
    try:
        run.wait_for_line(r"^Epoch 2/")
        victim = run.task("worker", 1)
        victim.send_signal(signal.SIGKILL)  # by pid
        killed = time.monotonic()
        run.wait_for_line(r"task worker:1 .* exited: killed by SIGKILL; restarting it")
        assert run.finish() == 0, "\n".join(run.lines[-40:])
        after_kill = time.monotonic() - killed
    finally:
        run.kill()
    run.assert_nothing_left()
    r = run.results()
    assert r["requested_steps"] == epochs * 20
    assert r["optimizer_iterations"] >= r["requested_steps"]  # at least once: a lost step may run twice
    assert len(r["history"]["loss"]) == epochs and r["val_accuracy"] >= 0.90
    rejoined = r["worker_steps"]["worker:1"]
    assert rejoined["restarts"] == 1 and rejoined["executed_steps"] > 0, r["worker_steps"]
    print(f"worker kill: {after_kill:.1f} s from kill to the end; steps {r['worker_steps']}, "
          f"iterations {r['optimizer_iterations']} for {r['requested_steps']} requested")


@pytest.mark.timeout(420)
def test_ps_killed_fails_fast_and_a_rerun_resumes_from_the_checkpoint(tmp_path):
    backup = tmp_path / "backup"
    settings = ("train.epochs=12", f"checkpoint.dir={backup}")
    run = ClusterRun(*settings, output_dir=tmp_path)
    try:
        run.wait_for_line(r"^Epoch 4/")
        # The drill as a user runs it: the ps's pid on the host, from cluster.json.
        cluster = json.loads((tmp_path / "cluster" / "cluster.json").read_text())
        assert "ps-0.log" in cluster["task_logs"]["ps:0"]
        assert psutil.Process(cluster["host_pids"]["ps:0"]).cmdline()[0] == "paradl-tf serve ps:0"
        os.kill(cluster["host_pids"]["ps:0"], signal.SIGKILL)
        killed = time.monotonic()
        assert run.finish() == 2
        failed_after = time.monotonic() - killed
    finally:
        run.kill()
    run.assert_nothing_left()
    assert re.match(r"error: task ps:0 \(127\.0\.0\.1:\d+, pid \d+\) exited: killed by SIGKILL; ParameterServerStrategy "
                    r"cannot go on without it .*: rerun the same command to resume from the last epoch backup in "
                    r"checkpoint\.dir=.* \(logs: .*/cluster\)$", run.error_line()), run.error_line()
    assert run.errors == [run.error_line()]  # one line: the RPC errors and the task event stay in driver.log
    assert "[cluster] task ps:0 " in (tmp_path / "cluster" / "driver.log").read_text()
    assert failed_after < 45, failed_after  # bounded: the watchdog fails the run after 30 s at most
    assert not (tmp_path / "results.json").exists()

    rerun = ClusterRun(*settings, output_dir=tmp_path)
    try:
        assert rerun.finish() == 0, "\n".join(rerun.lines[-40:])
    finally:
        rerun.kill()
    rerun.assert_nothing_left()
    r = rerun.results()
    assert r["resumed_from_epoch"] >= 3, r["resumed_from_epoch"]  # the backups of epochs 1-3 were written
    assert r["steps_this_run"] == (12 - r["resumed_from_epoch"]) * 20
    assert r["optimizer_iterations"] >= r["requested_steps"] == 12 * 20
    assert r["val_accuracy"] >= 0.90
    print(f"ps kill: failed {failed_after:.1f} s after the kill; rerun resumed from epoch {r['resumed_from_epoch']}")


@pytest.mark.timeout(240)
def test_ctrl_c_stops_every_process(tmp_path):
    run = ClusterRun("train.epochs=200", output_dir=tmp_path)
    try:
        run.wait_for_line(r"^Epoch 2/")
        for p in cl.descendants(run.proc.pid):
            run.seen.setdefault(p.pid, p)
        assert sum(command_line(p).startswith("paradl-tf serve ") for p in run.seen.values()) == 3
        run.proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        assert run.finish(timeout=60) == 130
        stopped_after = time.monotonic() - start
    finally:
        run.kill()
    run.assert_nothing_left()
    assert run.error_line() == "error: interrupted; every process this run started was stopped"
    assert stopped_after < 30


@pytest.mark.timeout(120)
def test_a_task_that_never_comes_up_is_named(tmp_path):
    run = ClusterRun("cluster.start_timeout_s=0.5", output_dir=tmp_path)
    try:
        assert run.finish(timeout=100) == 2
    finally:
        run.kill()
    run.assert_nothing_left()
    assert re.fullmatch(r"error: task ps:0 \(127\.0\.0\.1:\d+\) did not accept connections within "
                        r"cluster\.start_timeout_s=0\.5 s; also not up: worker:0, worker:1 \(logs: .*/cluster\)",
                        run.error_line())
    assert not any("Traceback" in ln for ln in run.lines + run.errors)


# ---------------------------------------------------------------- in-process mode, in its own Python process
IN_PROCESS = textwrap.dedent("""
    import json, sys
    from paradl_tf import load_config, plan, train
    cfg = load_config("configs/async_ps.yaml", sys.argv[1:])
    planned = plan(cfg)  # computed without a cluster
    results = train(cfg)  # a real in-process cluster: servers in this process
    print("RESULT " + json.dumps({"planned": planned["variables"], "actual": results["variable_placement"],
                                  "results": results}))
""")


@needs_isolation
@pytest.mark.timeout(300)
def test_in_process_cluster_places_variables_as_planned(tmp_path):
    """3 ps and a min-size partitioner: some variables split in 3, others whole, round-robin across the ps.
    `plan` (no cluster) must name the very devices the real strategy used."""
    script = tmp_path / "in_process.py"
    script.write_text(IN_PROCESS)
    overrides = ["cluster.mode=in_process", "cluster.ps=3", "strategy.variable_partitioner={kind: min_size, "
                 "min_shard_bytes: 4096}", "train.epochs=6", f"output_dir={tmp_path}"]
    done = subprocess.run(cl.isolated([sys.executable, str(script), *overrides]), cwd=ROOT, capture_output=True,
                          text=True, timeout=280)
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line, done.stdout[-3000:] + done.stderr[-3000:]
    out = json.loads(line.removeprefix("RESULT "))
    planned = [d for v in out["planned"] for d in v["devices"]]
    actual = [d for v in out["actual"] for d in v["devices"]]
    assert planned == actual
    assert len(set(planned)) == 3 and len(actual) > len(out["planned"])  # some variables were split
    r = out["results"]
    assert r["cluster"]["mode"] == "in_process" and r["cluster"]["private_network"] is True
    assert r["val_accuracy"] >= 0.85 and r["optimizer_iterations"] >= 6 * 20
    assert {v["dtype"] for v in out["actual"]} == {"float32"}, out["actual"]
