"""A real Slurm: slurmctld and a slurmd per emulated host (tests/slurm_cluster.py), started once for this module.

The sbatch scripts of `paradl-tf export --format=slurm` and the srun recipe of docs/deployment.md run as
written, on nodes named n01..n04 (Slurm lists them as n[01-04]: tensorflow/tensorflow#49956) without GPUs
(SlurmClusterResolver's GPU-only task layout, tensorflow/tensorflow#56894, is worked around in
paradl_tf/cluster/resolvers.py). Every job must end with its chief, COMPLETED or FAILED, leaving no task behind.
Without slurm-wlm and munge (or without root for the hosts) every test here is skipped, saying what is missing.
"""

import json
import os
import re
import signal
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from slurm_cluster import SlurmCluster, missing, wait_for

ROOT = Path(__file__).resolve().parents[1]
NODES = ["n01", "n02", "n03", "n04"]
DOCS = ROOT / "docs" / "deployment.md"
pytestmark = pytest.mark.skipif(missing() is not None, reason=str(missing()))


@pytest.fixture(scope="module")
def slurm():
    from paradl_tf.cluster.hosts import Network, hosts_available

    if why := hosts_available():
        pytest.skip(f"Slurm tests run on emulated hosts: {why}")
    env = {**os.environ, "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
           "PYTHONUNBUFFERED": "1"}  # the jobs run this interpreter's paradl-tf
    with Network(name="slurm", subnet="10.231.1.0/24") as net:
        cluster = SlurmCluster(net, NODES, env)
        try:
            cluster.start()
            yield cluster
        finally:
            cluster.stop()


@pytest.fixture
def job_dir(tmp_path):
    """A job's working directory (storage every node sees, as a cluster's shared home is) with the configs."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    return tmp_path


def _export(cli, job_dir: Path, config: str, *overrides: str) -> Path:
    """export's sbatch script, into job_dir/job.sbatch. Tasks get 180 s to come up: four TensorFlow processes
    starting at once on a busy 2-core machine can take a minute."""
    sets = [arg for item in (*overrides, "cluster.start_timeout_s=180") for arg in ("--set", item)]
    done = cli("export", f"--config={config}", "--format=slurm", *sets, timeout=60)
    assert done.returncode == 0, done.stderr
    (job_dir / "job.sbatch").write_text(done.stdout)
    return job_dir / "job.sbatch"


def _recipe(test: str) -> str:
    """The docs/deployment.md block whose run-by marker names this test, as written."""
    from test_docs_examples import blocks_of

    found = [b.code for b in blocks_of(DOCS) if b.run_by == ("tests/test_slurm.py", test)]
    assert len(found) == 1, f"docs/deployment.md has {len(found)} blocks run by {test}"
    return found[0]


def _results(job_dir: Path, output_dir: str) -> dict:
    return json.loads((job_dir / output_dir / "results.json").read_text())


def _ended(slurm: SlurmCluster, job_id: str, timeout_s: float) -> dict:
    job = slurm.wait(job_id, timeout_s)
    print(f"job {job_id} ({job['JobName']}): {job['JobState']}, exit {job['ExitCode']}, on {job['NodeList']}, "
          f"run time {job['RunTime']}")
    return job


@pytest.mark.timeout(300)
def test_multi_worker_sbatch_completes_on_zero_padded_nodes(slurm, job_dir, cli):
    script = _export(cli, job_dir, "configs/sync_multiworker.yaml", "train.epochs=3")
    job = _ended(slurm, slurm.sbatch(script, job_dir), timeout_s=240)
    assert job["JobState"] == "COMPLETED", slurm.output(job["JobId"])[-4000:]
    assert job["NodeList"] == "n[01-02]"  # SLURM_STEP_NODELIST too: the resolver must keep the zeros
    results = _results(job_dir, "runs/sync_multiworker")
    assert results["cluster"]["resolver"] == "slurm"
    assert results["cluster"]["tasks"] == {"worker": ["n01:8888", "n02:8888"]}
    assert results["val_accuracy"] >= 0.9, results["val_accuracy"]
    assert slurm.leftovers() == {}


@pytest.mark.timeout(300)
def test_parameter_server_sbatch_ends_with_its_chief(slurm, job_dir, cli):
    """The docs' `sbatch job.sbatch`, as written, on export's script: the chief trains, the workers and ps
    serve, and the job is COMPLETED once they stop after the chief (cluster.chief_gone_s)."""
    _export(cli, job_dir, "configs/async_ps.yaml", "train.epochs=3", "cluster.chief_gone_s=3")
    submitted = slurm.command("bash", "-c", _recipe("test_parameter_server_sbatch_ends_with_its_chief"), cwd=job_dir)
    assert submitted.returncode == 0, submitted.stderr
    job_id = re.fullmatch(r"Submitted batch job (\d+)\s*", submitted.stdout).group(1)
    job = _ended(slurm, job_id, timeout_s=240)
    assert job["JobState"] == "COMPLETED", slurm.output(job_id)[-4000:]
    assert job["NodeList"] == "n[01-04]"
    results = _results(job_dir, "runs/async_ps")
    # SlurmClusterResolver gives ranks to jobs in name order: chief, ps, worker
    assert results["cluster"]["tasks"] == {"chief": ["n01:8888"], "ps": ["n02:8888"],
                                           "worker": ["n03:8888", "n04:8888"]}
    assert results["val_accuracy"] >= 0.85, results["val_accuracy"]
    output = slurm.output(job_id)
    assert output.count("training has ended") == 3, output[-4000:]  # each server said why it stopped
    # serve as quiet as train: one line for the security warning, no TensorFlow start-up lines
    assert output.count("warning: SECURITY: task ") == 3
    assert not re.search(r"cudart_stub|cuInit|absl::InitializeLog|ClusterSecurityWarning", output), output[-4000:]
    ended = datetime.fromisoformat(job["EndTime"]).timestamp()
    print(f"the job ended {ended - (job_dir / 'runs/async_ps/results.json').stat().st_mtime:.0f} s after the "
          "chief wrote results.json (cluster.chief_gone_s=3)")
    assert slurm.leftovers() == {}


@pytest.mark.timeout(300)
def test_srun_recipe_with_two_tasks_per_node(slurm, job_dir):
    """docs/deployment.md's srun recipe, as written, in a 2-node allocation of 2 tasks each: two tasks share a
    node, so SlurmClusterResolver gives them consecutive ports from cluster.port. Its configs/async_ps.yaml is
    the repository's with `cluster.chief_gone_s: 3`: the servers' default 30 s after the chief would only be
    waiting (test_parameter_server_sbatch_ends_with_its_chief checks that the servers end after it)."""
    (job_dir / "configs").unlink()
    (job_dir / "configs").mkdir()
    config = (ROOT / "configs" / "async_ps.yaml").read_text()
    assert "\ncluster:\n" in config
    (job_dir / "configs" / "async_ps.yaml").write_text(config.replace("\ncluster:\n", "\ncluster:\n  chief_gone_s: 3\n"))
    script = job_dir / "recipe.sbatch"
    script.write_text("#!/bin/bash\n" + _recipe("test_srun_recipe_with_two_tasks_per_node"))
    job = _ended(slurm, slurm.sbatch(script, job_dir, "--nodes=2", "--ntasks-per-node=2"), timeout_s=240)
    assert job["JobState"] == "COMPLETED", slurm.output(job["JobId"])[-4000:]
    results = _results(job_dir, "runs/async_ps")
    tasks = results["cluster"]["tasks"]
    assert tasks["chief"] == ["n01:8888"]
    assert sorted(a for addresses in tasks.values() for a in addresses) == ["n01:8888", "n01:8889", "n02:8888",
                                                                          "n02:8889"]
    assert results["val_accuracy"] >= 0.85, results["val_accuracy"]
    assert slurm.leftovers() == {}


@pytest.mark.timeout(300)
def test_a_failed_chief_fails_the_job_and_ends_every_task(slurm, job_dir, cli):
    """The chief killed mid-training (a crash): srun's --kill-on-bad-exit ends the servers at once. Servers that
    would otherwise serve forever (cluster.chief_gone_s=null) show that nothing else ended them."""
    script = _export(cli, job_dir, "configs/async_ps.yaml", "train.epochs=50", "cluster.chief_gone_s=null")
    job_id = slurm.sbatch(script, job_dir)

    def training():
        return "Epoch 2/" in slurm.output(job_id) or slurm.job(job_id).get("JobState") in ("COMPLETED", "FAILED")

    wait_for(training, 180, lambda: f"the chief never trained: {slurm.output(job_id)[-4000:]}")
    chief = re.compile(r"\S*python\S* \S*paradl-tf train ")  # not srun nor the bash -c that name it too
    trainers = [pid for pid, cmd in slurm.processes("n01").items() if chief.match(cmd)]
    assert trainers, slurm.output(job_id)[-4000:]
    for pid in trainers:
        os.kill(pid, signal.SIGKILL)
    killed = time.time()
    job = _ended(slurm, job_id, timeout_s=60)
    ended = datetime.fromisoformat(job["EndTime"]).timestamp()
    print(f"the job ended {max(ended - killed, 0):.0f} s after the chief was killed (EndTime has whole seconds)")
    assert job["JobState"] == "FAILED" and job["ExitCode"] != "0:0"
    assert slurm.leftovers() == {}
    assert not (job_dir / "runs/async_ps/results.json").exists()
