"""Cluster plumbing: TF_CONFIG parsing, local specs, network isolation, `serve`, and the launcher's teardown.

Fast tests need no TensorFlow. The ones that start processes have a timeout and check that nothing is left.
"""

import json
import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from paradl_tf import cluster as cl
from paradl_tf.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ISOLATION = cl.isolation_available()
needs_isolation = pytest.mark.skipif(ISOLATION is not None, reason=f"no private network namespace: {ISOLATION}")

SPEC = {"chief": ["10.0.0.1:2222"], "worker": ["10.0.0.2:2222", "10.0.0.3:2222"], "ps": ["10.0.0.4:2222"]}
REQUIRED = cl.REQUIRED_JOBS["parameter_server"]


# ---------------------------------------------------------------- TF_CONFIG
BAD_TF_CONFIG = [
    (None, r"^TF_CONFIG is not set or empty; cluster\.resolver: tf_config reads"),
    ("{bad json", r"^TF_CONFIG is not valid JSON \(Expecting property name.*\)\. Received: TF_CONFIG='\{bad json'$"),
    ('{"task": {"type": "worker", "index": 0}}', r"^TF_CONFIG must be a JSON object with a non-empty 'cluster' mapping"),
    ('{"cluster": {"worker": "10.0.0.2:2222"}}', r"^TF_CONFIG cluster job 'worker' must be a non-empty list of 'host:port'"),
    ('{"cluster": {"worker": ["no-port"]}}', r"^TF_CONFIG cluster job 'worker' must be a non-empty list"),
    (json.dumps({"cluster": {"worker": SPEC["worker"], "ps": SPEC["ps"]}, "task": {"type": "worker", "index": 0}}),
     r"^TF_CONFIG cluster has no 'chief' job \(the chief is the coordinator that dispatches steps\); this strategy "
     r"needs chief, worker, ps\. Received: jobs=worker, ps$"),
    (json.dumps({"cluster": SPEC, "task": {"type": "worker", "index": 2}}),
     r"^TF_CONFIG task index 2 is out of range: job 'worker' has 2 task\(s\), indices 0 to 1\. "
     r"Received: task=\{\"type\": \"worker\", \"index\": 2\}$"),
    (json.dumps({"cluster": SPEC, "task": {"type": "evaluator", "index": 0}}),
     r"^TF_CONFIG task type 'evaluator' is not a job of its cluster \(chief, worker, ps\)"),
    (json.dumps({"cluster": SPEC, "task": {"type": "worker", "index": "0"}}), r"^TF_CONFIG 'task' must be"),
    (json.dumps({"cluster": {**SPEC, "chief": ["a:1", "b:2"]}}), r"^TF_CONFIG cluster must have exactly one chief"),
]


@pytest.mark.parametrize("text,message", BAD_TF_CONFIG)
def test_bad_tf_config_is_a_one_line_error(text, message):
    with pytest.raises(ConfigError, match=message) as info:
        cl.parse_tf_config(text, REQUIRED)
    assert "\n" not in str(info.value)


def test_tf_config_round_trip_and_local_spec():
    spec = cl.local_cluster_spec({"chief": 1, "worker": 2, "ps": 1, "evaluator": 0})
    assert list(spec) == ["chief", "worker", "ps"] and [len(v) for v in spec.values()] == [1, 2, 1]
    addresses = [a for v in spec.values() for a in v]
    assert all(a.startswith("127.0.0.1:") for a in addresses) and len(set(addresses)) == 4
    parsed = cl.parse_tf_config(cl.tf_config(spec, "worker", 1), REQUIRED)
    assert parsed.cluster == spec and parsed.task == "worker:1"


@pytest.mark.timeout(120)
def test_cli_rejects_bad_tf_config_with_exit_2(cli, tmp_path):
    """train (as the chief) and serve (as a task) both check TF_CONFIG before TensorFlow starts."""
    no_chief = json.dumps({"cluster": {"worker": SPEC["worker"], "ps": SPEC["ps"]}, "task": {"type": "worker", "index": 0}})
    out_of_range = json.dumps({"cluster": SPEC, "task": {"type": "ps", "index": 5}})
    cases = [
        (["train", "--config=configs/async_ps.yaml", "--set", "cluster.resolver=tf_config"], "{not json", "not valid JSON"),
        (["train", "--config=configs/async_ps.yaml", "--set", "cluster.resolver=tf_config"], no_chief, "has no 'chief' job"),
        (["serve"], out_of_range, "task index 5 is out of range"),
        (["serve", "--job=chief", "--task=0"], json.dumps({"cluster": SPEC}), "the chief is the coordinator"),
    ]
    for args, tf_config, message in cases:
        done = cli(*args, env={"TF_CONFIG": tf_config}, timeout=60)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines()[-1].startswith("error: ") and message in done.stderr
        assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- network isolation
def test_private_network_policies(monkeypatch):
    with pytest.warns(cl.ClusterSecurityWarning, match=r"SECURITY: the local cluster serves unauthenticated gRPC"):
        assert cl.use_private_network("off") is False
    monkeypatch.setattr(cl.network, "isolation_available", lambda: "user namespaces are disabled")
    with pytest.raises(cl.ClusterError, match=r"private_network: required, but .*user namespaces are disabled"):
        cl.use_private_network("required")
    with pytest.warns(cl.ClusterSecurityWarning, match=r"cannot run in a private network namespace: user namespaces"):
        assert cl.use_private_network("auto") is False


@needs_isolation
@pytest.mark.timeout(120)
def test_serve_reports_a_port_in_use(tmp_path):
    """Inside a private namespace: hold a port, then ask `paradl-tf serve` to listen on it."""
    script = tmp_path / "busy.py"
    script.write_text(textwrap.dedent("""
        import json, os, socket, subprocess, sys
        from paradl_tf.cluster import in_private_network, loopback_up
        assert in_private_network()
        loopback_up()
        s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen(); port = s.getsockname()[1]
        spec = {"chief": ["127.0.0.1:1"], "worker": [f"127.0.0.1:{port}"], "ps": ["127.0.0.1:2"]}
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": spec, "task": {"type": "worker", "index": 0}})}
        done = subprocess.run([sys.executable, "-m", "paradl_tf.cli", "serve"], env=env, capture_output=True, text=True)
        print(json.dumps({"rc": done.returncode, "stderr": done.stderr, "port": port}))
    """))
    done = subprocess.run(cl.isolated([sys.executable, str(script)]), cwd=ROOT, capture_output=True, text=True,
                          timeout=110)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rc"] == 2
    assert result["stderr"].strip().splitlines()[-1] == (
        f"error: task worker:0 cannot listen on port {result['port']}: the port is already in use. "
        f"Received: address=127.0.0.1:{result['port']}"
    )


@needs_isolation
@pytest.mark.timeout(120)
def test_serve_is_quiet_and_stops_once_its_chief_has_gone(tmp_path):
    """`serve` as on a host with a network (a veth in the namespace): the security warning as one line, none of
    TensorFlow's C++ start-up lines, and it stops by itself once the chief it served (a stand-in that accepts
    connections) has refused them for cluster.chief_gone_s."""
    script = tmp_path / "chief_gone.py"
    script.write_text(textwrap.dedent("""
        import json, os, socket, subprocess, sys, time
        from paradl_tf.cluster import in_private_network, loopback_up
        loopback_up()
        subprocess.run(["ip", "link", "add", "h0", "type", "veth", "peer", "name", "h1"], check=True)
        assert not in_private_network()  # as on a real host: serve warns
        chief = socket.socket(); chief.bind(("127.0.0.1", 0)); chief.listen()
        free = socket.socket(); free.bind(("127.0.0.1", 0)); worker = f"127.0.0.1:{free.getsockname()[1]}"; free.close()
        spec = {"chief": [f"127.0.0.1:{chief.getsockname()[1]}"], "worker": [worker], "ps": ["127.0.0.1:1"]}
        env = {**os.environ, "TF_CONFIG": json.dumps({"cluster": spec, "task": {"type": "worker", "index": 0}})}
        serve = subprocess.Popen([sys.executable, "-m", "paradl_tf.cli", "serve", "--config=configs/async_ps.yaml",
                                  "--set", "cluster.chief_gone_s=1"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert serve.stdout.readline().startswith("serving worker:0")
        time.sleep(2)  # serve has seen the chief
        chief.close()
        gone = time.monotonic()
        out, err = serve.communicate(timeout=60)
        print(json.dumps({"rc": serve.returncode, "stdout": out, "stderr": err, "after_s": time.monotonic() - gone,
                          "chief": spec["chief"][0], "worker": spec["worker"][0]}))
    """))
    done = subprocess.run(cl.isolated([sys.executable, str(script)]), cwd=ROOT, capture_output=True, text=True,
                          timeout=110)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    port = result["worker"].rpartition(":")[2]
    assert result["rc"] == 0
    assert result["stderr"].splitlines() == [
        f"warning: SECURITY: task worker:0 (port {port}) serves unauthenticated gRPC that runs any TensorFlow graph "
        "sent to it, on every network interface of this machine (not only 127.0.0.1). Anyone who can reach this "
        "host can run code as this user. Serve only on a private network."]
    assert result["stdout"].splitlines() == [
        f"the chief ({result['chief']}) has refused connections for 1 s (cluster.chief_gone_s): training has ended; "
        "worker:0 stops"]
    assert result["after_s"] < 30


# ---------------------------------------------------------------- the launcher's teardown (a stand-in driver)
DRIVER = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)  # {token} child"])
    print("driver up", flush=True)
    time.sleep(600)
""")


def _stand_in_driver(tmp_path, token):
    path = tmp_path / "driver.py"
    path.write_text(DRIVER.format(token=token))
    return [sys.executable, str(path), token]


def _find(token):
    return [p for p in psutil.process_iter(["cmdline"]) if token in " ".join(p.info["cmdline"] or [])]


def _wait_for(token, n, timeout=30):
    deadline = time.monotonic() + timeout
    while len(found := _find(token)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return found


@pytest.mark.timeout(60)
def test_timeout_stops_the_driver_and_its_children(tmp_path):
    token = f"paradl-timeout-{os.getpid()}"
    start = time.monotonic()
    with pytest.raises(cl.ClusterError, match=r"took longer than cluster\.timeout_s=3 s; every process"):
        cl.run_isolated(_stand_in_driver(tmp_path, token), timeout_s=3, interrupt_grace_s=2)
    assert time.monotonic() - start < 20
    assert _find(token) == []


@pytest.mark.timeout(60)
def test_killing_the_launcher_takes_the_cluster_down(tmp_path):
    """The launcher itself SIGKILLed (no cleanup code runs): the namespace, or the parent-death signal, ends all."""
    token = f"paradl-orphan-{os.getpid()}"
    launcher = subprocess.Popen([
        sys.executable, "-c",
        f"from paradl_tf.cluster import run_isolated; run_isolated({_stand_in_driver(tmp_path, token)!r})",
    ], cwd=ROOT)
    try:
        assert len(_wait_for(token, 2)) >= 2  # the driver and its child
        launcher.kill()
        launcher.wait()
        deadline = time.monotonic() + 15
        while _find(token) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _find(token) == []
    finally:
        for p in _find(token):
            p.kill()


# ---------------------------------------------------------------- TensorFlow's resolvers (no cluster is contacted)
def test_slurm_and_kubernetes_resolvers(monkeypatch):
    from paradl_tf.config import load_config

    cfg = load_config(os.path.join(ROOT, "configs/async_ps.yaml"), ["cluster.resolver=slurm", "cluster.port=7000"])
    for name, value in {"SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "4", "SLURM_STEP_NODELIST": "node[1-2]",
                        "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}.items():
        monkeypatch.setenv(name, value)
    resolver = cl.cluster_resolver(cfg.cluster, REQUIRED)  # CPU nodes: tensorflow/tensorflow#56894 worked around
    spec = cl.resolver_spec(resolver)
    assert {job: len(tasks) for job, tasks in spec.items()} == {"chief": 1, "ps": 1, "worker": 2}
    assert sorted(a for tasks in spec.values() for a in tasks) == ["node1:7000", "node1:7001", "node2:7000", "node2:7001"]
    assert (resolver.task_type, resolver.task_id) == ("chief", 0)
    monkeypatch.setenv("SLURM_PROCID", "3")  # a later rank runs `paradl-tf serve --config=...`: its TF_CONFIG
    rank3 = cl.parse_tf_config(cl.resolver_tf_config(cfg.cluster, REQUIRED), REQUIRED)
    assert rank3.cluster == spec and rank3.task_type in ("worker", "ps")

    k8s = load_config(os.path.join(ROOT, "configs/async_ps.yaml"), ["cluster.resolver=kubernetes"])
    with pytest.raises(ConfigError, match=r"cluster\.resolver: kubernetes needs cluster\.kubernetes_labels"):
        cl.cluster_resolver(k8s.cluster, REQUIRED)


def test_slurm_ranks_keep_their_nodes_past_nine_nodes(monkeypatch):
    """SlurmClusterResolver sorts node names as strings (n1, n10, n2, ...): rank 1, on n2, was given n10's address."""
    from paradl_tf.config import load_config

    cfg = load_config(os.path.join(ROOT, "configs/sync_multiworker.yaml"),
                      ["cluster.resolver=slurm", "cluster.workers=10"])
    for name, value in {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "10", "SLURM_STEP_NODELIST": "n[1-10]",
                        "SLURM_STEP_TASKS_PER_NODE": "1(x10)"}.items():
        monkeypatch.setenv(name, value)
    resolver = cl.cluster_resolver(cfg.cluster, ["worker"])
    workers = cl.resolver_spec(resolver)["worker"]
    assert workers == [f"n{i}:{cfg.cluster.port}" for i in range(1, 11)]
    assert (resolver.task_type, resolver.task_id) == ("worker", 1) and workers[1].startswith("n2:")


def test_log_follower_shows_new_complete_lines_without_tensorflow_log_lines(tmp_path, capsys):
    log = tmp_path / "worker-0.log"
    follower = cl.LogFollower(log)
    follower.poll()  # no log yet: nothing, no error
    log.write_text("=== worker:0 start 1 at 12:00:00 ===\n"
                   "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                   "I0000 00:00:1795608884.841616    1973 cudart_stub.cc:31] Could not find cuda drivers\n"
                   "Epoch 1/2\n22/22 - 1s - loss: 0.47")
    follower.poll()
    assert capsys.readouterr().out == "Epoch 1/2\n"
    with open(log, "a") as f:
        f.write("44 - accuracy: 0.89\nEpoch 2/2\n")
    follower.poll()
    follower.poll()
    assert capsys.readouterr().out == "22/22 - 1s - loss: 0.4744 - accuracy: 0.89\nEpoch 2/2\n"
