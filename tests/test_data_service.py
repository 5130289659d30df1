"""The tf.data service (data.service): a local service under MultiWorkerMirrored, a data worker killed mid-epoch,
a running service at an address (started by `paradl-tf serve`), and bad addresses.

Every test that starts processes has a timeout and checks that nothing it started is left running.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from conftest import ROOT
from paradl_tf import cluster as cl
from paradl_tf.config import load_config
from paradl_tf.errors import ConfigError

ISOLATION = cl.isolation_available()
needs_isolation = pytest.mark.skipif(ISOLATION is not None, reason=f"no private network namespace: {ISOLATION}")
SHARDS = ROOT / "runs" / "test_data_service_shards"


@pytest.fixture(scope="module")
def shards():
    """Digits as 4 TFRecord training shards and one validation shard, written once."""
    if not (SHARDS / "metadata.json").exists():
        done = subprocess.run([sys.executable, "-m", "paradl_tf.cli", "data", "write",
                               "--config=configs/sync_mirrored.yaml", f"--out={SHARDS}", "--shards=4"],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
    return SHARDS


def _files(shards: Path) -> list[str]:
    return [f"data.train_files={shards}/train-*.tfrecord", f"data.validation_files={shards}/validation-*.tfrecord"]


def _service_task(p: psutil.Process) -> str | None:
    """'dispatcher:0' or 'data_worker:1' for a service process (by its title, or its command line before)."""
    try:
        line = " ".join(p.cmdline())
    except psutil.Error:
        return None
    found = (re.search(r"paradl-tf serve ((?:dispatcher|data_worker):\d+)", line)
             or re.search(r"serve --job=(dispatcher|data_worker) --task=(\d+)", line))
    return None if found is None else ":".join(g for g in found.groups())


@needs_isolation
@pytest.mark.timeout(240)
def test_multi_worker_through_a_local_service_survives_a_killed_data_worker(tmp_path, shards):
    """MultiWorkerMirrored, 2 workers, a local service of a dispatcher and 2 data workers. Data worker 1 gets
    SIGKILL during epoch 2: the service hands the next passes to data worker 0 (DYNAMIC sharding is at most once:
    the rest of the pass it was producing is lost), both workers keep taking equal steps (their streams never
    end), the run finishes and reaches the bar, and no process is left."""
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "paradl_tf.cli", "train", "--config=configs/tfrecord_multiworker.yaml",
           *[a for o in [*_files(shards), "data.service.kind=local", "data.service.workers=2", "train.epochs=8",
                         f"output_dir={out_dir}"] for a in ("--set", o)]]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: dict[int, psutil.Process] = {}
    chief_log = out_dir / "cluster" / "worker-0.log"
    victim, service = None, {}
    try:
        while proc.poll() is None:
            for p in cl.descendants(proc.pid):
                seen.setdefault(p.pid, p)
                if (task := _service_task(p)) is not None:
                    service[task] = p
            if victim is None and chief_log.exists() and "Epoch 2/" in chief_log.read_text(errors="replace"):
                victim = service["data_worker:1"]
                victim.kill()
            time.sleep(0.05)
        out = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert victim is not None, "the run ended before epoch 2"
    assert proc.returncode == 0, out
    print(next(line for line in out.splitlines() if line.startswith("[cluster]")))
    assert re.search(r"\[cluster\] task data_worker:1 \(127\.0\.0\.1:\d+, pid \d+\) exited: killed by SIGKILL; "
                     r"going on with 1 data_worker\(s\)", out), out
    results = json.loads((out_dir / "results.json").read_text())
    assert results["input"]["service"] == "local"
    assert results["input"]["service_mode"].startswith("distributed_epoch")
    assert results["optimizer_iterations"] == results["requested_steps"]
    assert results["val_accuracy"] >= 0.95, results["history"]["val_accuracy"]
    assert sorted(service) == ["data_worker:0", "data_worker:1", "dispatcher:0"]
    deadline = time.monotonic() + 10
    while (alive := [p for p in seen.values() if cl.is_alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alive == [], [p.cmdline() for p in alive]


ONE_DEVICE = textwrap.dedent("""
    strategy: {kind: default}
    model: {kind: mlp, hidden: [128, 64]}
    data: {kind: tfrecord, train_files: unset}
    train: {epochs: 6, global_batch_size: 64, optimizer: adam, learning_rate: 0.003, seed: 0, verbose: 2}
""")

ADDRESS_RUN = textwrap.dedent("""
    import json, os, subprocess, sys, time
    from paradl_tf import cluster as cl
    assert cl.in_private_network()
    cl.loopback_up()
    spec = cl.service_spec(1)
    serving = [subprocess.Popen([sys.executable, "-m", "paradl_tf.cli", "serve"],
                                env={**os.environ, "TF_CONFIG": json.dumps({"cluster": spec,
                                                                            "task": {"type": job, "index": 0}})},
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for job in ("dispatcher", "data_worker")]
    try:
        cl.wait_until_reachable({"dispatcher": spec["dispatcher"][0], "data_worker": spec["data_worker"][0]}, 90)
        train = subprocess.run([sys.executable, "-m", "paradl_tf.cli", "train", *sys.argv[1:],
                                "--set", f"data.service.address={cl.dispatcher_address(spec)}"],
                               capture_output=True, text=True)
    finally:
        for p in serving:
            p.terminate()
    print(json.dumps({"rc": train.returncode, "out": train.stdout, "err": train.stderr[-2000:],
                      "served": [p.communicate(timeout=30)[0].strip().splitlines()[-1] for p in serving]}))
""")


@needs_isolation
@pytest.mark.timeout(180)
def test_address_mode_reads_through_a_service_started_by_serve(tmp_path, shards):
    """In a private namespace: `paradl-tf serve` runs a dispatcher and a data worker from TF_CONFIG, and a
    one-device run reads its training data through them (data.service.kind: address)."""
    script, config = tmp_path / "address_run.py", tmp_path / "one_device.yaml"
    script.write_text(ADDRESS_RUN)
    config.write_text(ONE_DEVICE)
    overrides = ["data.service.kind=address", *_files(shards), f"output_dir={tmp_path / 'run'}"]
    done = subprocess.run(cl.isolated([sys.executable, str(script), f"--config={config}",
                                       *[a for o in overrides for a in ("--set", o)]]),
                          cwd=ROOT, capture_output=True, text=True, timeout=170)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["rc"] == 0, result["err"]
    assert re.match(r"serving the tf\.data service's dispatcher:0 at 127\.0\.0\.1:\d+", result["served"][0])
    assert re.match(r"serving the tf\.data service's data_worker:0 at 127\.0\.0\.1:\d+", result["served"][1])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["input"]["service"] == "address"
    assert results["val_accuracy"] >= 0.9, results["history"]["val_accuracy"]


@pytest.mark.parametrize("address, message", [
    ("grpc://127.0.0.1:{port}", r"^data\.service\.address: no tf\.data dispatcher answers at grpc://127\.0\.0\.1:\d+ "
                                r"\(Connection refused\)$"),
    ("grpc://dispatcher", r"^data\.service\.address: expected grpc://host:port, the dispatcher's address\. "
                          r"Received: 'grpc://dispatcher'$"),
])
def test_a_bad_address_is_a_one_line_error_naming_the_key(address, message, shards):
    from paradl_tf.files.service import service_address

    port = cl.free_ports(1)[0]  # nothing listens on it
    cfg = load_config(ROOT / "configs" / "tfrecord_multiworker.yaml",
                      ["data.service.kind=address", f"data.service.address={address.format(port=port)}",
                       *_files(shards)])
    with pytest.raises(ConfigError, match=message):
        service_address(cfg)


def test_local_without_a_service_started_and_the_serve_flags(cli):
    from paradl_tf.files.service import service_address

    cfg = load_config(ROOT / "configs" / "tfrecord_multiworker.yaml", ["data.service.kind=local"])
    with pytest.raises(ConfigError, match=r"^data\.service\.kind: local, but no local tf\.data service was started"):
        service_address(cfg)
    spec = cl.service_spec(2)
    assert list(spec) == ["dispatcher", "data_worker"] and len(spec["data_worker"]) == 2
    proc = cli("serve", "--job=data_worker", "--task=0", env={"TF_CONFIG": json.dumps(
        {"cluster": {"dispatcher": ["127.0.0.1:1", "127.0.0.1:2"], "data_worker": ["127.0.0.1:3"]}})}, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: TF_CONFIG cluster must name exactly one dispatcher for a data worker. "
        "Received: dispatcher=['127.0.0.1:1', '127.0.0.1:2']")


@needs_isolation
@pytest.mark.timeout(90)
def test_a_local_cluster_checks_the_address_before_starting_a_task(cli, tmp_path, shards):
    """MultiWorkerMirrored with a service address nothing answers at: one line from the driver, no worker started
    (the local cluster's private network reaches only its own loopback, and the line says so)."""
    port = cl.free_ports(1)[0]
    proc = cli("train", "--config=configs/tfrecord_multiworker.yaml",
               *[a for o in ["data.service.kind=address", f"data.service.address=grpc://127.0.0.1:{port}",
                             *_files(shards), f"output_dir={tmp_path}"] for a in ("--set", o)], timeout=80)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: data.service.address: no tf.data dispatcher answers at grpc://127.0.0.1:{port} from inside the local "
        "cluster's private network (only its own loopback is there; set cluster.private_network: off to reach this "
        "host's other servers) (Connection refused)"]
    assert not list((tmp_path / "cluster").glob("worker-*.log"))


@pytest.mark.timeout(150)
def test_one_process_run_starts_and_stops_its_own_service(cli, tmp_path, shards):
    """MirroredStrategy over 2 logical CPUs (one process): the dispatcher and data worker run as its children,
    one job per replica, all in the private network namespace of a local cluster where the kernel allows one
    (else with a warning that they are reachable); when the run ends they are gone."""
    config = tmp_path / "mirrored.yaml"
    config.write_text(ONE_DEVICE.replace("{kind: default}", "{kind: mirrored}") + "devices: {type: CPU, count: 2}\n")
    proc = cli("train", f"--config={config}", *[a for o in ["data.service.kind=local", "data.service.workers=1",
                                                            *_files(shards), "train.epochs=3",
                                                            f"output_dir={tmp_path / 'run'}"] for a in ("--set", o)],
               timeout=140)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["input"]["service"] == "local" and results["replicas"] == 2
    logs = sorted(p.name for p in (tmp_path / "run" / "data_service").glob("*.log"))
    assert logs == ["data_worker-0.log", "dispatcher-0.log"]
    served = [(tmp_path / "run" / "data_service" / log).read_text() for log in logs]
    pids = [int(m.group(1)) for text in served if (m := re.search(r"at 127\.0\.0\.1:\d+ \(pid (\d+)\)", text))]
    assert len(pids) == 2
    if cl.isolation_available() is None:  # pids of the run's PID namespace, which ended with the run
        assert "SECURITY" not in proc.stderr, proc.stderr
        assert not [p for p in cl.descendants(os.getpid()) if "paradl-tf" in " ".join(p.cmdline())]
    else:
        assert not [p for p in pids if psutil.pid_exists(p) and cl.is_alive(psutil.Process(p))]
        assert "SECURITY: the local tf.data service serves unauthenticated gRPC" in proc.stderr
