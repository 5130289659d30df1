"""MultiWorkerMirroredStrategy: config errors, and real worker processes on 127.0.0.1 in a private namespace.

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

import numpy as np
import psutil
import pytest

from equivalence import TOLERANCE, float64_env, max_abs_diff  # tests/ is on sys.path under pytest
from paradl_tf import cluster as cl
from paradl_tf.config import load_config
from paradl_tf.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/sync_multiworker.yaml"
ISOLATION = cl.isolation_available()
needs_isolation = pytest.mark.skipif(ISOLATION is not None, reason=f"no private network namespace: {ISOLATION}")
# Small and deterministic: 2 workers x 1 CPU, global batch 32 (16 per replica), 44 steps per epoch.
SMALL = ["train.global_batch_size=32", "train.deterministic=true", "train.verbose=0", "model.hidden=[32]"]


# ---------------------------------------------------------------- config errors, no TensorFlow
@pytest.mark.parametrize("overrides,message", [
    (["strategy.communication=nccl"],
     r"strategy\.communication: NCCL collectives need GPUs, but devices\.type is CPU; use auto or ring\. "
     r"Received: strategy\.communication='nccl'$"),
    (["keras=keras3"], r"keras: keras3 cannot run this: Keras 3's model\.fit fails under MultiWorkerMirroredStrategy "
                       r"\(keras-team/keras#20585\)"),
    (["cluster.mode=in_process"], r"cluster\.mode: in_process is not possible with multi_worker_mirrored"),
    (["strategy.communication=mpi"], r"strategy\.communication: input should be 'auto', 'ring' or 'nccl'"),
    (["checkpoint.backup_and_restore.save_freq=batch"], r"checkpoint\.backup_and_restore\.save_freq"),
])
def test_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, overrides)


@pytest.mark.parametrize("config,overrides,message", [
    ("configs/async_ps.yaml", ["checkpoint.export=true"],
     r"checkpoint\.export does not apply to strategy\.kind: parameter_server .*Received: checkpoint\.export=True$"),
    ("configs/sync_mirrored.yaml", ["checkpoint.backup_and_restore.save_freq=5"],
     r"checkpoint\.backup_and_restore\.save_freq applies to strategy\.kind: multi_worker_mirrored only"),
    ("configs/sync_mirrored.yaml", ["checkpoint.keep=2"],
     r"checkpoint\.keep applies to strategy\.kind: multi_worker_mirrored only"),
])
def test_multi_worker_only_keys_elsewhere_are_errors(config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config, overrides)


def test_keras_auto_resolves_to_tf_keras_and_config_defaults():
    from paradl_tf.builders.keras_version import resolve_keras

    cfg = load_config(CONFIG)
    assert cfg.strategy.kind == "multi_worker_mirrored" and cfg.cluster.workers == 2
    assert cfg.checkpoint.backup_and_restore.save_freq == "epoch"
    assert load_config(CONFIG, ["checkpoint.backup_and_restore.save_freq=5"]).checkpoint.backup_and_restore.save_freq == 5
    assert resolve_keras("auto", "multi_worker_mirrored") == "tf_keras"
    assert cl.REQUIRED_JOBS["multi_worker_mirrored"] == ("worker",)


def test_plan_without_a_cluster(cli):
    """plan: 2 workers x 2 logical CPUs = 4 replicas, every variable on each; what one step all-reduces."""
    proc = cli("plan", f"--config={CONFIG}", "--set", "devices.count=2", "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    p = json.loads(proc.stdout)
    devices = [f"/job:worker/replica:0/task:{t}/device:CPU:{i}" for t in range(2) for i in range(2)]
    assert p["replicas"] == 4 and p["devices"] == devices and p["per_replica_batch_size"] == 16
    assert p["keras"] == "tf_keras" and p["cluster"]["tasks"] == {"worker": ["127.0.0.1:<port>"] * 2}
    assert all(v["devices"] == devices for v in p["variables"])
    assert p["all_reduce"] == {"communication": "auto", "local_replicas": 2, "bytes_per_step": p["parameter_bytes"]}
    assert p["parameter_bytes"] == 4 * (64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10)


def test_one_line_error_finds_tensorflow_causes():
    from paradl_tf.runs.multi_worker import one_line_error

    graph = ("Graph execution error:\n\nDetected at node CollectiveReduceV2 defined at (most recent call last):\n"
             '  File "x.py", line 1, in <module>\n\nCollective has timed out during execution.\n'
             "\t [[{{node CollectiveReduceV2}}]] [Op:__inference_train_function_1540]")
    assert one_line_error(TimeoutError(graph)) == "TimeoutError: Collective has timed out during execution."
    user = ("in user code:\n\n    File \"x.py\", line 2\n    UnavailableError: {{function_node __wrapped__X}} "
            "Collective ops is aborted by: tasks are unhealthy (stopped sending heartbeats):\n    /job:worker/task:1\n"
            "    Restart your program.")
    assert one_line_error(RuntimeError(user)) == ("UnavailableError: Collective ops is aborted by: tasks are unhealthy "
                                                  "(stopped sending heartbeats): /job:worker/task:1")
    assert one_line_error(ValueError("bad value\nmore")) == "ValueError: bad value"


# ---------------------------------------------------------------- real runs
class Run:
    """`paradl-tf train --config=CONFIG` in a subprocess; every process under it recorded."""

    def __init__(self, *overrides: str, env: dict[str, str] | None = None):
        cmd = [sys.executable, "-m", "paradl_tf.cli", "train", f"--config={CONFIG}",
               *[a for o in overrides for a in ("--set", o)]]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**os.environ, **(env or {})})
        self.seen: dict[int, psutil.Process] = {}

    def poll_processes(self) -> None:
        for p in cl.descendants(self.proc.pid):
            self.seen.setdefault(p.pid, p)

    def worker(self, index: int) -> psutil.Process:
        title = f"paradl-tf worker:{index}"  # the worker's process title, as `ps` shows it
        for p in cl.descendants(self.proc.pid):
            try:
                if p.cmdline()[:1] == [title]:
                    return p
            except psutil.Error:
                pass
        raise LookupError(f"no process for worker {index}")

    def wait_for(self, path: Path, timeout: float = 120) -> None:
        """Until `path` exists (e.g. the first backup: training is under way); the run must not end first."""
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, self.finish(1)[1]
            self.poll_processes()
            time.sleep(0.05)

    def finish(self, timeout: float = 150) -> tuple[int, str]:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.poll_processes()
            time.sleep(0.2)
        if self.proc.poll() is None:
            self.proc.kill()
        out = self.proc.communicate()[0]
        return self.proc.returncode, out

    def assert_nothing_left(self, timeout: float = 10) -> None:
        assert self.seen, "never saw a process under the launcher"
        deadline = time.monotonic() + timeout
        while (alive := [p for p in self.seen.values() if cl.is_alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert alive == [], [p.cmdline() for p in alive]


def _train(*overrides: str, timeout: float = 150, env: dict[str, str] | None = None) -> dict:
    run = Run(*overrides, env=env)
    code, out = run.finish(timeout)
    run.assert_nothing_left()
    assert code == 0, out
    output_dir = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))
    return json.loads((Path(output_dir) / "results.json").read_text())


def _exported_weights(path: Path, checkpoint: Path | None = None) -> list[np.ndarray]:
    """The weights of the exported model, or of a kept checkpoint restored into it."""
    import tensorflow as tf
    import tf_keras

    model = tf_keras.models.load_model(path, compile=False)
    if checkpoint is not None:
        model.set_weights([np.zeros_like(w) for w in model.get_weights()])  # so that a no-op restore shows
        tf.train.Checkpoint(model=model).restore(str(checkpoint)).expect_partial()
    return [np.asarray(w) for w in model.get_weights()]


def _kept_checkpoints(output_dir: Path) -> list[str]:
    return sorted((p.stem for p in (output_dir / "checkpoints").glob("ckpt-*.index")), key=lambda n: int(n[5:]))


@needs_isolation
@pytest.mark.timeout(180)
def test_sigkill_worker_stops_the_job_and_rerun_resumes_to_the_same_weights(tmp_path, equivalence, digits_shards):
    """SIGKILL worker 1 mid-epoch: the job fails within seconds, naming it; nothing is left; the same command
    resumes from the last backup, trains exactly the requested steps and ends with the uninterrupted weights.
    The data comes from TFRecord shards, so the resumed file stream is checked too (each worker reads its
    records from where the backup says, not from the top of its files)."""
    from test_files import _tfrecord_data

    common = [*SMALL, "data=" + json.dumps(_tfrecord_data(digits_shards)), f"train.seed={equivalence.seed(0)}",
              "train.epochs=3", "checkpoint.export=true", "checkpoint.backup_and_restore.save_freq=10", "checkpoint.keep=3"]
    run_dir, ref_dir = tmp_path / "run", tmp_path / "ref"
    same = [*common, f"output_dir={run_dir}", f"checkpoint.dir={tmp_path / 'backup'}"]
    run = Run(*same)
    run.wait_for(tmp_path / "backup" / "chief" / "checkpoint")  # the first backup (step 10): training is under way
    victim = run.worker(1)
    killed_at = time.monotonic()
    victim.kill()
    code, out = run.finish(60)
    stopped_s = time.monotonic() - killed_at
    run.assert_nothing_left()
    assert code == 2, out
    error = out.strip().splitlines()[-1]
    assert re.match(r"error: task worker:1 \(127\.0\.0\.1:\d+, pid \d+\) exited: killed by SIGKILL; "
                    r"MultiWorkerMirroredStrategy cannot go on without it .*rerun the same command to resume", error)
    assert stopped_s < 20, stopped_s
    assert not (run_dir / "results.json").exists()

    resumed = _train(*same)
    assert resumed["resumed_from_step"] > 0 and resumed["resumed_from_step"] % 10 == 0, resumed
    assert resumed["optimizer_iterations"] == resumed["requested_steps"] == 3 * 44
    assert resumed["steps_this_run"] == resumed["requested_steps"] - resumed["resumed_from_step"]
    assert resumed["input"]["source"] == "tfrecord"
    # The last 3 checkpoints by step (132 steps, one every 10), across the kill: the rerun's manager took over.
    assert _kept_checkpoints(run_dir) == ["ckpt-110", "ckpt-120", "ckpt-130"]
    reference = _train(*common, f"output_dir={ref_dir}", f"checkpoint.dir={tmp_path / 'ref_backup'}")
    assert reference["resumed_from_step"] == 0 and reference["optimizer_iterations"] == 3 * 44
    # Bit for bit: op determinism, the same steps on the same batches from exactly restored variables. No rounding
    # difference exists for a ReLU to amplify, so the check holds on any CPU and catches any lost or repeated step.
    equivalence.check(0.0, weights=max_abs_diff(_exported_weights(run_dir / "model.keras"),
                                                _exported_weights(ref_dir / "model.keras")))


@needs_isolation
@pytest.mark.timeout(150)
def test_hung_worker_stops_the_job_in_bounded_time(tmp_path):
    """SIGSTOP worker 1 mid-epoch: it does not exit, so only TensorFlow can notice; the chief's collective is
    aborted (coordination-service heartbeat or strategy.collective_timeout_s), the job fails with the cause in
    one line, and every process is stopped, the frozen one included."""
    run = Run(*SMALL, "train.epochs=100", "strategy.collective_timeout_s=5", f"output_dir={tmp_path / 'run'}",
              f"checkpoint.dir={tmp_path / 'backup'}", "checkpoint.backup_and_restore.save_freq=10")
    run.wait_for(tmp_path / "backup" / "chief" / "checkpoint")  # training is under way
    frozen_at = time.monotonic()
    run.worker(1).suspend()
    code, out = run.finish(90)
    stopped_s = time.monotonic() - frozen_at
    run.assert_nothing_left()
    assert code == 2, out
    error = out.strip().splitlines()[-1]
    # TensorFlow either raises the abort in the chief, or segfaults tearing the aborted collectives down.
    assert re.match(r"error: (worker:0 failed: \w+Error: |task worker:0 .* exited: killed by SIGSEGV after TensorFlow "
                    r"aborted its collectives: )(Collective has timed out during execution\."
                    r"|.*unhealthy.*task:1)", error), error
    assert stopped_s < 60, stopped_s
    print(f"stopped {stopped_s:.1f} s after the freeze: {error}")


@needs_isolation
@pytest.mark.timeout(120)
def test_mismatched_worker_configs_fail_before_training(tmp_path):
    """Worker 1 runs a different batch size: both fail at the config-hash collective, before any step."""
    base = load_config(CONFIG, [f"output_dir={tmp_path}", *SMALL])
    from paradl_tf.config import dump_config

    (tmp_path / "a.yaml").write_text(dump_config(base))
    (tmp_path / "b.yaml").write_text(dump_config(base.model_copy(update={"train": base.train.model_copy(
        update={"global_batch_size": 64})})))
    driver = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from paradl_tf import cluster as cl
        cl.loopback_up()
        tmp = Path({str(tmp_path)!r})
        spec = cl.local_cluster_spec({{"worker": 2}})
        argv = lambda job, i: [sys.executable, "-m", "paradl_tf.runs.multi_worker",
                               str(tmp / ("a.yaml" if i == 0 else "b.yaml")), str(tmp / f"w{{i}}.status.json")]
        local = cl.LocalCluster(cl.make_tasks(spec, ("worker",), argv, tmp), max_restarts=0, restartable=(),
                                exit_0_is_done=True)
        local.start()
        while all(t.process.poll() is None for t in local.tasks):
            time.sleep(0.1)
        time.sleep(3)
        local.stop()
    """)
    seen: dict[int, psutil.Process] = {}
    proc = subprocess.Popen(cl.isolated([sys.executable, "-c", driver]), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    while proc.poll() is None:
        for p in cl.descendants(proc.pid):
            seen.setdefault(p.pid, p)
        time.sleep(0.2)
    out = proc.communicate(timeout=90)[0]
    assert proc.returncode == 0, out
    statuses = [json.loads((tmp_path / f"w{i}.status.json").read_text()) for i in range(2)]
    assert statuses[0]["type"] == "ConfigError", statuses
    assert re.search(r"the workers run different configs .*Received: config hash [0-9a-f]{7} on worker 0, "
                     r"another on worker\(s\) 1$", statuses[0]["error"])
    assert not (tmp_path / "results.json").exists()
    assert "Epoch 1" not in (tmp_path / "worker-0.log").read_text()
    assert [p for p in seen.values() if cl.is_alive(p)] == []


@needs_isolation
@pytest.mark.timeout(150)
def test_workers_train_in_bfloat16_with_the_configured_threads(tmp_path):
    """The chief's results come from a worker process: its thread pools and dtypes are the config's."""
    results = _train(*SMALL, "train.epochs=2", "train.precision=mixed_bfloat16", "devices.threads.intra_op=1",
                     "devices.threads.inter_op=3", f"output_dir={tmp_path}")
    assert results["threads"] == {"intra_op": 1, "inter_op": 3}
    assert results["precision"]["activation_dtype"] == "bfloat16" and results["precision"]["variable_dtypes"] == [
        "float32"]
    assert results["history"]["loss"][-1] < results["history"]["loss"][0]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("cpus_per_worker", [1, 2])
def test_two_workers_match_mirrored_in_one_process(tmp_path, cpus_per_worker, equivalence):
    """2 worker processes x N logical CPUs give the weights of MirroredStrategy over 2N logical CPUs in one
    process, with the same global batch, seed and data (op determinism on). Both train in float64 (KERAS_HOME's
    keras.json; see equivalence.py): with 4 replicas the all-reduces sum in another order."""
    epochs, replicas = 2, 2 * cpus_per_worker
    small = [*SMALL, f"train.seed={equivalence.seed(0)}"]
    env = float64_env(tmp_path / "keras_home")
    results = _train(*small, f"devices.count={cpus_per_worker}", f"train.epochs={epochs}", "checkpoint.export=true",
                     "checkpoint.keep=1", f"output_dir={tmp_path}", env=env)
    assert results["replicas"] == replicas and results["workers"] == 2
    assert results["per_replica_batch_size"] == 32 // replicas
    assert results["devices"] == [f"/job:worker/replica:0/task:{t}/device:CPU:{i}"
                                  for t in range(2) for i in range(cpus_per_worker)]
    assert results["cluster"]["private_network"] is True and len(results["cluster"]["tasks"]["worker"]) == 2
    for key in ("val_accuracy", "history", "examples_per_sec", "keras", "strategy_class", "devices"):
        assert key in results
    # The reference runs in a fresh process too, as a user's would (seeds and op determinism are process-wide).
    overrides = ["strategy.kind=mirrored", f"strategy.devices={replicas}", f"devices.count={replicas}",
                 "keras=tf_keras", *small, f"train.epochs={epochs}", f"output_dir={tmp_path / 'mirrored'}"]
    script = textwrap.dedent(f"""
        import numpy as np
        from paradl_tf.config import load_config
        from paradl_tf.runs.fit import prepare
        job = prepare(load_config("configs/sync_mirrored.yaml", {overrides!r}))
        job.model.fit(**job.datasets.fit_kwargs(job.keras_name), epochs={epochs}, verbose=0)
        np.savez({str(tmp_path / 'mirrored.npz')!r}, *job.model.get_weights())
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(tmp_path / "mirrored.npz") as saved:
        reference = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    exported = _exported_weights(tmp_path / "model.keras")
    assert len(exported) == len(reference) == 4 and exported[0].dtype == reference[0].dtype == np.float64
    equivalence.check(TOLERANCE, weights=max_abs_diff(exported, reference))
    # One checkpoint kept (one per epoch), the final one: it restores the exported weights.
    assert _kept_checkpoints(tmp_path) == [f"ckpt-{epochs * 44}"]
    restored = _exported_weights(tmp_path / "model.keras", tmp_path / "checkpoints" / f"ckpt-{epochs * 44}")
    for a, b in zip(restored, exported):
        np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------- multi-host: TF_CONFIG, TFJob, Slurm
def test_tf_config_per_host():
    from paradl_tf.cluster import deploy

    configs = deploy.tf_configs(load_config(CONFIG), ["10.0.0.1", "10.0.0.2:3333"])
    assert list(configs) == ["worker:0", "worker:1"]
    parsed = [cl.parse_tf_config(text, ("worker",)) for text in configs.values()]
    assert parsed[1].cluster == {"worker": ["10.0.0.1:8888", "10.0.0.2:3333"]} and parsed[1].task == "worker:1"
    ps = deploy.tf_configs(load_config("configs/async_ps.yaml"), ["c", "w1", "w2", "p"])
    assert cl.parse_tf_config(ps["ps:0"], cl.REQUIRED_JOBS["parameter_server"]).cluster["chief"] == ["c:8888"]
    with pytest.raises(ConfigError, match=r"--hosts must name 2 hosts \(2 worker, in that order\)\. Received: 1"):
        deploy.tf_configs(load_config(CONFIG), ["a"])
    with pytest.raises(ConfigError, match=r"strategy\.kind: mirrored runs in one process"):
        deploy.tf_configs(load_config("configs/sync_mirrored.yaml"), ["a"])


def test_tfjob_manifest_fields():
    """The TFJob v1 fields: apiVersion/kind, tfReplicaSpecs with replicas, restartPolicy and a pod template
    whose container is named tensorflow (the operator's default container name)."""
    import yaml

    from paradl_tf.cluster import deploy

    job = yaml.safe_load(deploy.export(load_config(CONFIG), "tfjob", "/cfg/mw.yaml", image="reg/paradl:1"))
    assert job["apiVersion"] == "kubeflow.org/v1" and job["kind"] == "TFJob" and job["metadata"]["name"]
    (role, spec), = job["spec"]["tfReplicaSpecs"].items()
    assert role == "Worker" and spec["replicas"] == 2 and spec["restartPolicy"] == "OnFailure"
    container = spec["template"]["spec"]["containers"][0]
    assert container["name"] == "tensorflow" and container["image"] == "reg/paradl:1"
    assert container["command"] == ["paradl-tf", "train", "--config=/cfg/mw.yaml", "--set", "cluster.resolver=tf_config"]
    ps = deploy.tfjob(load_config("configs/async_ps.yaml"), deploy.Pod("img"), "/c.yaml")["spec"]["tfReplicaSpecs"]
    assert {r: s["replicas"] for r, s in ps.items()} == {"Chief": 1, "Worker": 2, "PS": 1}
    assert ps["PS"]["template"]["spec"]["containers"][0]["command"] == ["paradl-tf", "serve"]
    with pytest.raises(ConfigError, match=r"needs --image"):
        deploy.export(load_config(CONFIG), "tfjob", "x.yaml")


def test_slurm_script(cli):
    done = cli("export", f"--config={CONFIG}", "--format=slurm", timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "#!/bin/bash" and "#SBATCH --nodes=2" in lines and "#SBATCH --ntasks-per-node=1" in lines
    assert lines[-1] == f"srun --kill-on-bad-exit=1 paradl-tf train --config={CONFIG} --set cluster.resolver=slurm"


@pytest.mark.timeout(60)
def test_slurm_script_runs_overrides_as_given():
    """The parameter-server script's `bash -c` gives each rank the argv export was given, quotes included:
    rank 0 trains, the others serve (printf stands in for paradl-tf and prints its arguments, one a line)."""
    from paradl_tf.cluster import deploy

    quoted = "output_dir=/tmp/it's a \"run\" $HOME"
    script = deploy.slurm_script(load_config("configs/async_ps.yaml"), "/c.yaml", command="printf '%s\\n'",
                                 overrides=[quoted])
    run = [line for line in script.splitlines() if line.startswith(deploy.SLURM_STEP)]
    assert len(run) == 1, script
    step = run[0][len(deploy.SLURM_STEP):]
    for rank, command in (("0", "train"), ("1", "serve")):
        done = subprocess.run(["bash", "-c", step], env={**os.environ, "SLURM_PROCID": rank}, capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines() == [command, "--config=/c.yaml", "--set", quoted, "--set",
                                            "cluster.resolver=slurm"], (rank, script)
