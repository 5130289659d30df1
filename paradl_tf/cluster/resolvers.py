"""TensorFlow's cluster resolvers from the `cluster` section, and TF_CONFIG built inside JobSet / Indexed Job pods."""

from __future__ import annotations

import os
import re
from typing import Mapping, Sequence


from paradl_tf.errors import ConfigError
from paradl_tf.cluster.spec import Spec, parse_tf_config, tf_config



def in_slurm_rank_order(spec: Mapping[str, Sequence[str]], jobs: Mapping[str, int]) -> Spec:
    """SlurmClusterResolver's spec with rank r at Slurm's r-th task slot.

    The resolver lays the tasks out over the nodes sorted as strings (n1, n10, n2, ...), while Slurm numbers the
    ranks (SLURM_PROCID) over its node list in natural order (n1, n2, ..., n10): with 10 or more nodes named without
    leading zeros, rank 1 runs on n2 but is given n10's address. The resolver's own rank -> (job, index) mapping is
    right; only the addresses are reordered: hosts in natural order, each host's ports in turn, cut into the jobs
    in the resolver's order (sorted by name)."""
    def natural(address: str):
        host, _, port = address.rpartition(":")
        return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", host)], int(port)

    addresses = sorted((a for job in sorted(jobs) for a in spec.get(job, [])), key=natural)
    out: Spec = {}
    for job in sorted(jobs):
        out[job], addresses = addresses[:jobs[job]], addresses[jobs[job]:]
    return out


def cluster_resolver(cluster_cfg, required_jobs: Sequence[str] = (), spec: Spec | None = None,
                     task: tuple[str, int] = ("chief", 0), use_gpus: bool = False):
    """TensorFlow's ClusterResolver for the `cluster` section: local (a spec this toolkit made), tf_config, slurm
    or kubernetes. The caller's task (`task`) is set where the resolver cannot know it."""
    kind = cluster_cfg.resolver
    if kind == "tf_config":  # one-line errors before TensorFlow starts (and before its own, less clear ones)
        parse_tf_config(os.environ.get("TF_CONFIG"), required_jobs)
    if kind in POD_RESOLVERS:
        # This pod's TF_CONFIG, set as a TFJob's operator would set it: TensorFlow and Keras then see the task
        # exactly as under tf_config (the path the local launcher runs), and TFConfigClusterResolver counts this
        # pod's GPUs, where a SimpleClusterResolver reports none and MultiWorkerMirroredStrategy trains on the CPU.
        os.environ["TF_CONFIG"] = pod_tf_config(cluster_cfg, required_jobs)
    import tensorflow as tf

    resolvers = tf.distribute.cluster_resolver
    if kind == "local":
        return resolvers.SimpleClusterResolver(tf.train.ClusterSpec(spec), task_type=task[0], task_id=task[1],
                                               rpc_layer="grpc")
    if kind in ("tf_config", *POD_RESOLVERS):
        return resolvers.TFConfigClusterResolver()
    if kind == "slurm":
        jobs = job_counts(cluster_cfg, required_jobs)
        try:
            if use_gpus:
                slurm = resolvers.SlurmClusterResolver(jobs=jobs, port_base=cluster_cfg.port)
            else:
                # SlurmClusterResolver hands out one task per GPU slot and fails with none (tensorflow/tensorflow
                # #56894): give it a slot per task without touching CUDA_VISIBLE_DEVICES.
                slurm = resolvers.SlurmClusterResolver(jobs=jobs, port_base=cluster_cfg.port, gpus_per_node=1024,
                                                       gpus_per_task=1, auto_set_gpu=False)
            spec = in_slurm_rank_order(slurm.cluster_spec().as_dict(), jobs)
            return resolvers.SimpleClusterResolver(tf.train.ClusterSpec(spec), task_type=slurm.task_type,
                                                   task_id=slurm.task_id, rpc_layer="grpc",
                                                   num_accelerators={"GPU": slurm.num_accelerators()} if use_gpus else None)
        except (RuntimeError, KeyError, ValueError) as exc:  # SLURM_* variables missing or inconsistent
            raise ConfigError(
                f"cluster.resolver: slurm cannot resolve the cluster from the SLURM_* variables: {exc}"
            ) from None
    if kind == "kubernetes":
        labels = cluster_cfg.kubernetes_labels
        if not labels:
            raise ConfigError(
                "cluster.resolver: kubernetes needs cluster.kubernetes_labels, job -> pod label selector, "
                "e.g. {worker: 'job-name=worker', ps: 'job-name=ps', chief: 'job-name=chief'}"
            )
        try:
            resolver = resolvers.KubernetesClusterResolver({j: [s] for j, s in labels.items()},
                                                           tf_server_port=cluster_cfg.port)
        except ImportError:
            raise ConfigError(
                "cluster.resolver: kubernetes needs the `kubernetes` package: pip install kubernetes"
            ) from None
        resolver.task_type, resolver.task_id = task
        return resolver
    raise ConfigError(
        f"cluster.resolver: unknown resolver {kind!r}; choose one of: local, tf_config, slurm, kubernetes, "
        "jobset, indexed_job"
    )


def job_counts(cluster_cfg, required_jobs: Sequence[str]) -> dict[str, int]:
    """Tasks per job from the `cluster` section, in the order chief, worker, ps: the jobs the strategy needs (a
    multi-worker cluster is workers only; worker 0 is its chief)."""
    jobs = {"chief": 1, "worker": cluster_cfg.workers, "ps": cluster_cfg.ps}
    return {job: n for job, n in jobs.items() if n and (job in required_jobs or job == "worker")}


# ================================================================ inside a JobSet or Indexed Job pod
# A pod of an exported JobSet or Indexed Job builds its TF_CONFIG from what it knows: its role and name from the
# labels the JobSet and Job controllers set (read through the downward API into the variables below), its index
# from JOB_COMPLETION_INDEX (the Job controller's, Indexed mode) and every task's stable hostname, which the
# headless Service publishes. No Kubernetes API access, so no RBAC.
POD_RESOLVERS = ("jobset", "indexed_job")
POD_LABELS = {  # environment variable -> the pod label it is read from (downward API)
    "jobset": {"JOBSET_NAME": "jobset.sigs.k8s.io/jobset-name",
               "REPLICATED_JOB_NAME": "jobset.sigs.k8s.io/replicatedjob-name",
               "JOB_INDEX": "jobset.sigs.k8s.io/job-index"},
    "indexed_job": {"JOB_NAME": "batch.kubernetes.io/job-name"},
}
COMPLETION_INDEX = "JOB_COMPLETION_INDEX"


def pod_hostnames(kind: str, name: str, counts: Mapping[str, int], port: int) -> Spec:
    """Every task's stable address. A JobSet pod is <jobset>-<replicated job>-<job index>-<pod index>.<subdomain>,
    the subdomain being the JobSet's name; the export makes one Job per role (job index 0) with a pod per task.
    An Indexed Job pod is <job>-<index>.<service>, the Service named as the Job."""
    if kind == "jobset":
        return {job: [f"{name}-{job}-0-{i}.{name}:{port}" for i in range(n)] for job, n in counts.items()}
    return {"worker": [f"{name}-{i}.{name}:{port}" for i in range(counts["worker"])]}


def pod_task(cluster_cfg, required_jobs: Sequence[str], environ: Mapping[str, str] = os.environ
             ) -> tuple[Spec, str, int]:
    """(cluster, task type, task index) of this pod, from its environment; a one-line ConfigError names the
    variable that is missing or disagrees with the config."""
    kind, counts = cluster_cfg.resolver, job_counts(cluster_cfg, required_jobs)
    if kind == "jobset":
        name = environ.get("JOBSET_NAME") or cluster_cfg.kubernetes_name
        job = _pod_variable(environ, "REPLICATED_JOB_NAME", kind)
        if job not in counts:
            raise ConfigError(f"cluster.resolver: jobset: this pod's replicated job {job!r} is not a job of the "
                              f"cluster ({', '.join(counts)}). Received: REPLICATED_JOB_NAME={job}")
        if environ.get("JOB_INDEX", "0") != "0":
            raise ConfigError("cluster.resolver: jobset expects one Job per role (replicas: 1), a pod per task. "
                              f"Received: JOB_INDEX={environ['JOB_INDEX']}")
    else:
        name, job = environ.get("JOB_NAME") or cluster_cfg.kubernetes_name, "worker"
    index = _pod_variable(environ, COMPLETION_INDEX, kind)
    key = "cluster.workers" if job == "worker" else f"cluster.{job}"
    if not index.isdigit() or int(index) >= counts[job]:
        raise ConfigError(f"cluster.resolver: {kind}: {COMPLETION_INDEX}={index} is not a task of job {job!r}, "
                          f"which has {counts[job]} ({key}={counts[job]}); the manifest and the config disagree")
    return pod_hostnames(kind, name, counts, cluster_cfg.port), job, int(index)


def pod_tf_config(cluster_cfg, required_jobs: Sequence[str], environ: Mapping[str, str] = os.environ) -> str:
    """This pod's TF_CONFIG (cluster.resolver: jobset or indexed_job)."""
    return tf_config(*pod_task(cluster_cfg, required_jobs, environ))


def _pod_variable(environ: Mapping[str, str], variable: str, kind: str) -> str:
    value = environ.get(variable)
    if not value:
        source = (f"the pod label {POD_LABELS[kind][variable]} through the downward API"
                  if variable in POD_LABELS[kind] else "the Job controller, in completionMode: Indexed")
        raise ConfigError(f"cluster.resolver: {kind} needs {variable} in the pod's environment (from {source}); "
                          f"run it in a pod of `paradl-tf export --format={kind.replace('_', '-')}`")
    return value


def resolver_tf_config(cluster_cfg, required_jobs: Sequence[str] = ()) -> str:
    """This process's TF_CONFIG as a resolver that knows the task (slurm: from SLURM_PROCID) works it out, so
    `paradl-tf serve --config=X` runs on a Slurm node as it does with TF_CONFIG elsewhere."""
    resolver = cluster_resolver(cluster_cfg, required_jobs)
    spec = resolver_spec(resolver)
    if resolver.task_type is None:
        raise ConfigError(f"cluster.resolver: {cluster_cfg.resolver} cannot tell which task this process is; "
                          "set TF_CONFIG and run `paradl-tf serve` without --config")
    return tf_config(spec, resolver.task_type, resolver.task_id)


def resolver_spec(resolver) -> Spec:
    """The cluster of a TensorFlow ClusterResolver as a plain dict, jobs in a stable order."""
    spec = resolver.cluster_spec().as_dict()
    return {job: list(spec[job].values()) if isinstance(spec[job], dict) else list(spec[job]) for job in sorted(spec)}

def planned_spec(cluster_cfg, counts: Mapping[str, int]) -> Spec:
    """The tasks' addresses as far as they are known before the cluster starts (`paradl-tf plan`): the stable
    hostnames of an exported JobSet or Indexed Job; 127.0.0.1 locally (a port is chosen at start)."""
    if cluster_cfg.resolver in POD_RESOLVERS:
        return pod_hostnames(cluster_cfg.resolver, cluster_cfg.kubernetes_name, counts, cluster_cfg.port)
    host = "127.0.0.1:<port>" if cluster_cfg.resolver == "local" else f"<{cluster_cfg.resolver} host>:<port>"
    return {job: [host] * n for job, n in counts.items()}
