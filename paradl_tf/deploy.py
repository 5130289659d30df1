"""What a multi-host run needs, written from its config: TF_CONFIG per task, a Kubeflow TFJob, a Slurm script.

    paradl-tf tf-config --config=configs/sync_multiworker.yaml --hosts=10.0.0.1,10.0.0.2
    paradl-tf export --config=configs/sync_multiworker.yaml --format=tfjob --image=registry/paradl:1 > job.yaml
    paradl-tf export --config=configs/async_ps.yaml --format=slurm > job.sbatch

Pure functions of the config: no TensorFlow, no cluster.
"""

from __future__ import annotations

import shlex

import yaml

from paradl_tf.cluster import Spec, tf_config
from paradl_tf.config import Config
from paradl_tf.errors import ConfigError

TFJOB_PORT = 2222  # the port the TFJob operator gives every task
MULTI_PROCESS = ("multi_worker_mirrored", "parameter_server")


def task_counts(cfg: Config) -> dict[str, int]:
    """Tasks per job, in the order hosts are given to them: chief, worker, ps."""
    kind = cfg.strategy.kind
    if kind == "multi_worker_mirrored":
        return {"worker": cfg.cluster.workers}
    if kind == "parameter_server":
        return {"chief": 1, "worker": cfg.cluster.workers, "ps": cfg.cluster.ps}
    raise ConfigError(f"strategy.kind: {kind} runs in one process; a cluster is for one of: "
                      f"{', '.join(MULTI_PROCESS)}. Received: strategy.kind={kind!r}")


def host_spec(cfg: Config, hosts: list[str]) -> Spec:
    """The cluster of `hosts` ('host' or 'host:port', one task each, in order chief, workers, ps)."""
    counts = task_counts(cfg)
    needed = sum(counts.values())
    if len(hosts) != needed:
        layout = ", ".join(f"{n} {job}" for job, n in counts.items())
        raise ConfigError(f"--hosts must name {needed} hosts ({layout}, in that order). "
                          f"Received: {len(hosts)} host(s): {','.join(hosts)}")
    addresses = iter(h if ":" in h else f"{h}:{cfg.cluster.port}" for h in hosts)
    return {job: [next(addresses) for _ in range(n)] for job, n in counts.items()}


def tf_configs(cfg: Config, hosts: list[str]) -> dict[str, str]:
    """Task name ('worker:0') -> its TF_CONFIG."""
    spec = host_spec(cfg, hosts)
    return {f"{job}:{i}": tf_config(spec, job, i) for job, addresses in spec.items() for i in range(len(addresses))}


def _train_args(config_path: str, resolver: str) -> list[str]:
    return ["train", f"--config={config_path}", "--set", f"cluster.resolver={resolver}"]


def tfjob(cfg: Config, image: str, config_path: str, command: str = "paradl-tf", name: str = "paradl-tf") -> dict:
    """A Kubeflow TFJob (kubeflow.org/v1): the operator sets TF_CONFIG in every pod. Multi-worker: Worker pods all
    train; parameter servers: the Chief trains, Worker and PS pods serve."""
    exe = shlex.split(command)

    def replica(n: int, args: list[str]) -> dict:
        container = {"name": "tensorflow", "image": image, "command": [*exe, *args],
                     "ports": [{"name": "tfjob-port", "containerPort": TFJOB_PORT}]}
        return {"replicas": n, "restartPolicy": "OnFailure", "template": {"spec": {"containers": [container]}}}

    train = _train_args(config_path, "tf_config")
    counts = task_counts(cfg)
    if cfg.strategy.kind == "multi_worker_mirrored":
        specs = {"Worker": replica(counts["worker"], train)}
    else:
        specs = {"Chief": replica(1, train), "Worker": replica(counts["worker"], ["serve"]),
                 "PS": replica(counts["ps"], ["serve"])}
    return {"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": name},
            "spec": {"tfReplicaSpecs": specs}}


def slurm_script(cfg: Config, config_path: str, command: str = "paradl-tf", name: str = "paradl-tf") -> str:
    """An sbatch script: one task per node, each finding its task through TensorFlow's SlurmClusterResolver
    (cluster.resolver: slurm, SLURM_PROCID order chief, workers, ps)."""
    nodes = sum(task_counts(cfg).values())
    train = " ".join(shlex.quote(a) for a in [*shlex.split(command), *_train_args(config_path, "slurm")])
    if cfg.strategy.kind == "multi_worker_mirrored":
        run = f"srun {train}"
    else:  # task 0 is the chief; the others serve
        serve = " ".join(shlex.quote(a) for a in [*shlex.split(command), "serve", f"--config={config_path}",
                                                  "--set", "cluster.resolver=slurm"])
        run = f"srun bash -c 'if [ \"$SLURM_PROCID\" = 0 ]; then exec {train}; else exec {serve}; fi'"
    return "\n".join([
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"# {cfg.strategy.kind}: {', '.join(f'{n} {j}' for j, n in task_counts(cfg).items())}; "
        f"tasks listen on port {cfg.cluster.port} and up (cluster.port)",
        "set -euo pipefail",
        run,
        "",
    ])


def export(cfg: Config, fmt: str, config_path: str, image: str | None = None, command: str = "paradl-tf") -> str:
    """The text of `paradl-tf export --format=FMT`."""
    if fmt == "tfjob":
        if not image:
            raise ConfigError("export --format=tfjob needs --image (the container image with paradl-tf installed)")
        return yaml.safe_dump(tfjob(cfg, image, config_path, command), sort_keys=False)
    if fmt == "slurm":
        return slurm_script(cfg, config_path, command)
    raise ConfigError(f"--format must be tfjob or slurm. Received: --format={fmt}")
