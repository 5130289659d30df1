"""What a multi-host run needs, written from its config: TF_CONFIG per task, Kubernetes manifests, a Slurm script.

    paradl-tf tf-config --config=configs/sync_multiworker.yaml --hosts=10.0.0.1,10.0.0.2
    paradl-tf export --config=configs/sync_multiworker.yaml --format=jobset --image=registry/paradl:1 > job.yaml
    paradl-tf export --config=configs/sync_multiworker.yaml --format=indexed-job --image=registry/paradl:1 > job.yaml
    paradl-tf export --config=configs/sync_multiworker.yaml --format=tfjob --image=registry/paradl:1 > job.yaml
    paradl-tf export --config=configs/async_ps.yaml --format=slurm > job.sbatch

Kubernetes: a JobSet (jobset.x-k8s.io/v1alpha2) or a plain Indexed Job and headless Service need no operator;
their pods build TF_CONFIG themselves (cluster.resolver: jobset / indexed_job, see cluster.py). A TFJob
(kubeflow.org/v1) needs Kubeflow's legacy training operator, which sets TF_CONFIG. Every task serves on
cluster.port in every format.

Pure functions of the config: no TensorFlow, no cluster.
"""

from __future__ import annotations

import posixpath
import shlex
from dataclasses import dataclass
from typing import Sequence

import yaml

from paradl_tf.cluster.resolvers import POD_LABELS, job_counts
from paradl_tf.cluster.spec import REQUIRED_JOBS, Spec, tf_config
from paradl_tf.config import Config
from paradl_tf.errors import ConfigError

FORMATS = ("tfjob", "jobset", "indexed-job", "slurm")
CONTAINER = "tensorflow"  # TFJob's operator finds the port on the container of this name; the same name everywhere
PORT_NAME = "tfjob-port"  # ... and on the port of this name (else it puts 2222 in TF_CONFIG)
CHECKPOINTS = "checkpoints"  # the volume that holds checkpoint.dir


@dataclass(frozen=True)
class Pod:
    """What every exported pod runs and may use."""

    image: str
    command: str = "paradl-tf"  # how paradl-tf is run in the image
    cpu: str | None = None  # requests.cpu, e.g. "4"
    memory: str | None = None  # requests and limits memory, e.g. "16Gi"
    gpus: int | None = None  # nvidia.com/gpu per worker pod; None: 1 where devices.type is GPU
    checkpoint_claim: str | None = None  # a ReadWriteMany PersistentVolumeClaim for checkpoint.dir


def task_counts(cfg: Config) -> dict[str, int]:
    """Tasks per job, in the order hosts are given to them: chief, worker, ps."""
    kind = cfg.strategy.kind
    if kind not in REQUIRED_JOBS:  # the strategies that run a cluster
        raise ConfigError(f"strategy.kind: {kind} runs in one process; a cluster is for one of: "
                          f"{', '.join(sorted(REQUIRED_JOBS))}. Received: strategy.kind={kind!r}")
    return job_counts(cfg.cluster, REQUIRED_JOBS[kind])


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


def _config_args(config_path: str, overrides: Sequence[str], resolver: str) -> list[str]:
    """The config as export read it (the file, then export's --set overrides), with the task's resolver."""
    sets = [arg for item in overrides for arg in ("--set", item)]
    return [f"--config={config_path}", *sets, "--set", f"cluster.resolver={resolver}"]


def _task_args(cfg: Config, job: str, config_path: str, overrides: Sequence[str], resolver: str) -> list[str]:
    """Multi-worker: every worker trains. Parameter servers: the chief trains, workers and ps serve."""
    return ["train" if _trains(cfg, job) else "serve", *_config_args(config_path, overrides, resolver)]


def _trains(cfg: Config, job: str) -> bool:
    return cfg.strategy.kind == "multi_worker_mirrored" or job == "chief"


def _container(cfg: Config, pod: Pod, job: str, args: list[str], env: list[dict] | None = None) -> dict:
    """The `tensorflow` container of a task: image, command, the task port, resources, the checkpoint volume."""
    container = {"name": CONTAINER, "image": pod.image, "command": [*shlex.split(pod.command), *args]}
    if env:
        container["env"] = env
    container["ports"] = [{"name": PORT_NAME, "containerPort": cfg.cluster.port}]
    if resources := _resources(cfg, pod, job):
        container["resources"] = resources
    if pod.checkpoint_claim and _trains(cfg, job):
        container["volumeMounts"] = [{"name": CHECKPOINTS, "mountPath": _checkpoint_mount(cfg)}]
    return container


def _resources(cfg: Config, pod: Pod, job: str) -> dict:
    """CPU and memory for every pod; GPUs for the workers only (the chief of parameter servers dispatches steps,
    a ps holds variables: neither computes gradients)."""
    gpus = pod.gpus if pod.gpus is not None else int(cfg.devices.type == "GPU")
    requests = {k: v for k, v in (("cpu", pod.cpu), ("memory", pod.memory)) if v}
    limits = {k: v for k, v in (("memory", pod.memory), ("nvidia.com/gpu", gpus if job == "worker" else 0)) if v}
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _checkpoint_mount(cfg: Config) -> str:
    """Where the claim is mounted: checkpoint.dir's parent, since Keras deletes checkpoint.dir when the run ends
    and a mount point cannot be deleted."""
    directory = cfg.checkpoint.dir
    parent = posixpath.dirname(posixpath.normpath(directory)) if directory else ""
    if not directory or not posixpath.isabs(directory) or parent == "/":
        raise ConfigError("--checkpoint_claim needs checkpoint.dir, an absolute path in the pods below a directory "
                          f"the claim is mounted on, e.g. /shared/backup. Received: checkpoint.dir={directory!r}")
    return parent


def _pod_template(cfg: Config, pod: Pod, job: str, args: list[str], env: list[dict] | None = None, **spec) -> dict:
    """A pod template with the task's container (and the checkpoint volume where it trains)."""
    pod_spec = {**spec, "containers": [_container(cfg, pod, job, args, env)]}
    if pod.checkpoint_claim and _trains(cfg, job):
        pod_spec["volumes"] = [{"name": CHECKPOINTS, "persistentVolumeClaim": {"claimName": pod.checkpoint_claim}}]
    return {"spec": pod_spec}


def _downward_env(kind: str) -> list[dict]:
    """The variables the pod resolvers read, from the labels the JobSet and Job controllers set on every pod."""
    return [{"name": variable, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.labels['{label}']"}}}
            for variable, label in POD_LABELS[kind].items()]


def _check_names(cfg: Config, hostnames: list[str]) -> None:
    """Pod names (a hostname and 6 more characters) must be DNS-1035 labels of at most 63 characters, as the
    JobSet webhook and the API server check."""
    longest = max(hostnames, key=len)
    if len(longest) + 6 > 63:
        raise ConfigError(f"cluster.kubernetes_name is too long: pod {longest}-xxxxx would be longer than 63 "
                          f"characters. Received: cluster.kubernetes_name={cfg.cluster.kubernetes_name!r}")


def tfjob(cfg: Config, pod: Pod, config_path: str, overrides: Sequence[str] = ()) -> dict:
    """A Kubeflow TFJob (kubeflow.org/v1): the operator sets TF_CONFIG in every pod. Multi-worker: Worker pods all
    train; parameter servers: the Chief trains, Worker and PS pods serve."""
    def replica(job: str, n: int) -> dict:
        args = _task_args(cfg, job, config_path, overrides, "tf_config") if _trains(cfg, job) else ["serve"]
        return {"replicas": n, "restartPolicy": "OnFailure", "template": _pod_template(cfg, pod, job, args)}

    roles = {"chief": "Chief", "worker": "Worker", "ps": "PS"}
    return {"apiVersion": "kubeflow.org/v1", "kind": "TFJob", "metadata": {"name": cfg.cluster.kubernetes_name},
            "spec": {"tfReplicaSpecs": {roles[job]: replica(job, n) for job, n in task_counts(cfg).items()}}}


def jobset(cfg: Config, pod: Pod, config_path: str, overrides: Sequence[str] = ()) -> dict:
    """A JobSet (jobset.x-k8s.io/v1alpha2): one replicated job per role, each one Indexed Job with a pod per task
    (stable hostname <name>-<role>-0-<index>.<name>); pods build TF_CONFIG with cluster.resolver: jobset.

    Multi-worker: a lost worker breaks every worker's collectives, so any failure restarts the whole set
    (cluster.restart_workers times), which resumes from checkpoint.dir; the set succeeds when every worker has.
    Parameter servers: a worker pod restarts alone (cluster.restart_workers times; the coordinator hands its
    steps to the others meanwhile); a lost chief or ps fails the set; the set succeeds when the chief does, and
    the JobSet controller then deletes the serving workers and ps."""
    name, counts = cfg.cluster.kubernetes_name, task_counts(cfg)
    _check_names(cfg, [f"{name}-{job}-0-{n - 1}" for job, n in counts.items()])
    sync = cfg.strategy.kind == "multi_worker_mirrored"

    def replicated_job(job: str, n: int) -> dict:
        restarts = ({"backoffLimitPerIndex": cfg.cluster.restart_workers} if job == "worker" and not sync
                    else {"backoffLimit": 0})  # a failed pod fails its Job: the failure policy decides
        args = _task_args(cfg, job, config_path, overrides, "jobset")
        template = _pod_template(cfg, pod, job, args, _downward_env("jobset"), restartPolicy="Never")
        return {"name": job, "replicas": 1, "template": {"spec": {
            "completionMode": "Indexed", "completions": n, "parallelism": n, **restarts, "template": template}}}

    if sync:
        success = {"operator": "All", "targetReplicatedJobs": ["worker"]}
        failure = {"maxRestarts": cfg.cluster.restart_workers,
                   "rules": [{"name": "RestartAllWorkers", "action": "RestartJobSet", "targetReplicatedJobs": ["worker"]}]}
    else:
        success = {"operator": "All", "targetReplicatedJobs": ["chief"]}
        failure = {"maxRestarts": 0,
                   "rules": [{"name": "LostChiefOrPs", "action": "FailJobSet", "targetReplicatedJobs": ["chief", "ps"]}]}
    return {"apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": {"name": name},
            "spec": {"network": {"enableDNSHostnames": True, "publishNotReadyAddresses": True},
                     "successPolicy": success, "failurePolicy": failure,
                     "replicatedJobs": [replicated_job(job, n) for job, n in counts.items()]}}


def indexed_job(cfg: Config, pod: Pod, config_path: str, overrides: Sequence[str] = ()) -> list[dict]:
    """A headless Service and an Indexed Job (batch/v1) of workers, multi-worker only: pod <name>-<index> is worker
    <index>, reachable at <name>-<index>.<name>; pods build TF_CONFIG with cluster.resolver: indexed_job.

    Kubernetes restarts a failed pod alone (cluster.restart_workers times per worker); the other workers' collectives
    fail, they exit and are restarted too, and all resume from checkpoint.dir. One worker out of restarts fails the
    Job (maxFailedIndexes: 0)."""
    if cfg.strategy.kind != "multi_worker_mirrored":
        raise ConfigError("export --format=indexed-job is for synchronous training (strategy.kind: "
                          "multi_worker_mirrored): a plain Job cannot end the serving workers and ps when the chief "
                          f"finishes nor fail on a lost ps; use --format=jobset. Received: strategy.kind={cfg.strategy.kind!r}")
    name, workers, port = cfg.cluster.kubernetes_name, task_counts(cfg)["worker"], cfg.cluster.port
    _check_names(cfg, [f"{name}-{workers - 1}"])
    selector = {POD_LABELS["indexed_job"]["JOB_NAME"]: name}  # the label the Job controller sets on its pods
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": selector,
                        "ports": [{"name": "grpc", "port": port, "targetPort": port}]}}
    args = _task_args(cfg, "worker", config_path, overrides, "indexed_job")
    template = _pod_template(cfg, pod, "worker", args, _downward_env("indexed_job"), subdomain=name,
                             restartPolicy="Never")
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
           "spec": {"completionMode": "Indexed", "completions": workers, "parallelism": workers,
                    "backoffLimitPerIndex": cfg.cluster.restart_workers, "maxFailedIndexes": 0, "template": template}}
    return [service, job]


# The job ends with the training, in the state of its chief. --kill-on-bad-exit=1 (srun's -K) ends the whole
# step as soon as a task fails: a failed chief (or, multi-worker, any worker, which the others cannot train
# without) never leaves tasks holding the allocation. After a chief that succeeds, the serving workers and ps
# stop themselves (serve, cluster.chief_gone_s). Their exit status is left out of the step's: the chief's
# coordinator goes on without a lost worker, and a lost ps fails the chief itself.
SLURM_STEP = "srun --kill-on-bad-exit=1"


def slurm_script(cfg: Config, config_path: str, command: str = "paradl-tf", name: str = "paradl-tf",
                 overrides: Sequence[str] = ()) -> str:
    """An sbatch script: one task per node, each finding its task through TensorFlow's SlurmClusterResolver
    (cluster.resolver: slurm; it gives ranks to jobs in name order: chief, ps, worker). The job is COMPLETED
    when the chief succeeds, FAILED when it fails, and no task outlives it (SLURM_STEP)."""
    nodes = sum(task_counts(cfg).values())
    exe = shlex.split(command)
    train = shlex.join([*exe, *_task_args(cfg, "chief", config_path, overrides, "slurm")])
    if cfg.strategy.kind == "multi_worker_mirrored":
        run = f"{SLURM_STEP} {train}"
    else:  # task 0 is the chief; the others serve
        serve = shlex.join([*exe, *_task_args(cfg, "ps", config_path, overrides, "slurm")])
        # Quoted as a whole: an override's own quoting (a value with a single quote) stays inside the script.
        step = f'if [ "$SLURM_PROCID" = 0 ]; then exec {train}; else {serve} || true; fi'
        run = f"{SLURM_STEP} bash -c {shlex.quote(step)}"
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


def export(cfg: Config, fmt: str, config_path: str, image: str | None = None, command: str = "paradl-tf",
           overrides: Sequence[str] = (), **resources) -> str:
    """The text of `paradl-tf export --format=FMT`: every task runs `config_path` with the `overrides` export was
    given. `resources`: Pod's cpu, memory, gpus, checkpoint_claim."""
    if fmt == "slurm":
        return slurm_script(cfg, config_path, command, overrides=overrides)
    builders = {"tfjob": tfjob, "jobset": jobset, "indexed-job": indexed_job}
    if fmt not in builders:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}. Received: --format={fmt}")
    if not image:
        raise ConfigError(f"export --format={fmt} needs --image (the container image with paradl-tf installed)")
    manifest = builders[fmt](cfg, Pod(image, command, **resources), config_path, overrides)
    return yaml.safe_dump_all(manifest if isinstance(manifest, list) else [manifest], sort_keys=False)
