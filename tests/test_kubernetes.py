"""Kubernetes without an operator: exported JobSets and Indexed Jobs, and the pods' own TF_CONFIG.

Every pod the JobSet and Job controllers would create from an exported manifest is simulated: its labels, its
downward-API environment, JOB_COMPLETION_INDEX, its hostname and subdomain, and the config its command loads.
No cluster, no TensorFlow (but one test that builds the resolver, and one `plan`).
"""

import json
import os
import shlex

import pytest
import yaml
from k8s_schema import schema_errors, semantic_errors

from paradl_tf import cluster as cl
from paradl_tf.cluster import deploy
from paradl_tf.config import load_config
from paradl_tf.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNC, ASYNC = "configs/sync_multiworker.yaml", "configs/async_ps.yaml"
OPTIONS = {"image": "registry/paradl:1", "cpu": "2", "memory": "4Gi", "gpus": 1, "checkpoint_claim": "paradl-ckpt"}
CHECKPOINT = "checkpoint.dir=/shared/backup"
# (config, --set overrides given to export, format, the tasks every pod must agree on)
SETS = [
    (SYNC, [CHECKPOINT], "jobset", {"worker": 2}),
    (SYNC, [CHECKPOINT], "indexed-job", {"worker": 2}),
    (ASYNC, [CHECKPOINT], "jobset", {"chief": 1, "worker": 2, "ps": 1}),
    (ASYNC, [CHECKPOINT, "cluster.workers=3", "cluster.ps=2"], "jobset", {"chief": 1, "worker": 3, "ps": 2}),
]


def _export(config, overrides, fmt, **options):
    cfg = load_config(os.path.join(ROOT, config), overrides)
    return list(yaml.safe_load_all(deploy.export(cfg, fmt, config, overrides=overrides, **{**OPTIONS, **options})))


def _pods(manifests):
    """(hostname, subdomain, labels, container) of every pod the controllers would make from `manifests`."""
    by_kind = {m["kind"]: m for m in manifests}
    if "JobSet" in by_kind:
        js = by_kind["JobSet"]
        name = js["metadata"]["name"]
        subdomain = js["spec"]["network"].get("subdomain", name)  # the JobSet controller's default
        for rj in js["spec"]["replicatedJobs"]:
            for job_index in range(rj["replicas"]):
                job = rj["template"]["spec"]
                job_name = f"{name}-{rj['name']}-{job_index}"
                for i in range(job["completions"]):
                    labels = {"jobset.sigs.k8s.io/jobset-name": name, "jobset.sigs.k8s.io/replicatedjob-name": rj["name"],
                              "jobset.sigs.k8s.io/job-index": str(job_index), "batch.kubernetes.io/job-name": job_name,
                              "batch.kubernetes.io/job-completion-index": str(i)}
                    yield f"{job_name}-{i}", subdomain, labels, job["template"]["spec"]["containers"][0]
    else:
        job, service = by_kind["Job"], by_kind["Service"]
        name, pod = job["metadata"]["name"], job["spec"]["template"]["spec"]
        assert pod["subdomain"] == service["metadata"]["name"] and service["spec"]["clusterIP"] == "None"
        for i in range(job["spec"]["completions"]):
            labels = {"batch.kubernetes.io/job-name": name, "batch.kubernetes.io/job-completion-index": str(i)}
            assert service["spec"]["selector"].items() <= labels.items()  # the headless Service selects every pod
            yield f"{name}-{i}", pod["subdomain"], labels, pod["containers"][0]


def _environment(labels, container):
    """The container's environment: the Job controller's JOB_COMPLETION_INDEX, then its env, fieldRefs resolved."""
    env = {"JOB_COMPLETION_INDEX": labels["batch.kubernetes.io/job-completion-index"]}
    for var in container.get("env", []):
        path = var["valueFrom"]["fieldRef"]["fieldPath"] if "valueFrom" in var else None
        env[var["name"]] = labels[path.removeprefix("metadata.labels['").removesuffix("']")] if path else var["value"]
    return env


def _pod_config(command):
    """The config a pod's `paradl-tf train|serve --config=X --set ...` loads."""
    args = command[2:]  # after `paradl-tf train|serve`
    path = args[0].removeprefix("--config=")
    sets = [args[i + 1] for i in range(1, len(args), 2) if args[i] == "--set"]
    return load_config(os.path.join(ROOT, path), sets)


# ---------------------------------------------------------------- TF_CONFIG inside the pods
@pytest.mark.parametrize("config,overrides,fmt,tasks", SETS, ids=[f"{s[2]}-{'-'.join(map(str, s[3].values()))}" for s in SETS])
def test_every_pod_builds_a_consistent_tf_config(config, overrides, fmt, tasks):
    """Every task exactly once, the same cluster in every pod, each pod's own address its hostname.subdomain on
    the port its container declares; trainers train, the others serve."""
    seen, clusters = [], []
    for hostname, subdomain, labels, container in _pods(_export(config, overrides, fmt)):
        cfg = _pod_config(container["command"])
        env = _environment(labels, container)
        parsed = cl.parse_tf_config(cl.pod_tf_config(cfg.cluster, cl.REQUIRED_JOBS[cfg.strategy.kind], env))
        seen.append(parsed.task)
        clusters.append(parsed.cluster)
        port = container["ports"][0]["containerPort"]
        assert parsed.cluster[parsed.task_type][parsed.task_index] == f"{hostname}.{subdomain}:{port}"
        trains = cfg.strategy.kind == "multi_worker_mirrored" or parsed.task_type == "chief"
        assert container["command"][1] == ("train" if trains else "serve")
    assert sorted(seen) == sorted(f"{job}:{i}" for job, n in tasks.items() for i in range(n))
    assert all(c == clusters[0] for c in clusters) and {job: len(a) for job, a in clusters[0].items()} == tasks
    cfg = load_config(os.path.join(ROOT, config), [*overrides, f"cluster.resolver={fmt.replace('-', '_')}"])
    assert cl.planned_spec(cfg.cluster, tasks) == clusters[0]  # what `plan` shows


BAD_POD_ENV = [
    ("jobset", {"JOB_COMPLETION_INDEX": "0"}, r"^cluster\.resolver: jobset needs REPLICATED_JOB_NAME in the pod's "
     r"environment \(from the pod label jobset\.sigs\.k8s\.io/replicatedjob-name through the downward API\)"),
    ("jobset", {"REPLICATED_JOB_NAME": "worker"}, r"needs JOB_COMPLETION_INDEX in the pod's environment \(from the "
     r"Job controller, in completionMode: Indexed\)"),
    ("jobset", {"REPLICATED_JOB_NAME": "evaluator", "JOB_COMPLETION_INDEX": "0"},
     r"replicated job 'evaluator' is not a job of the cluster \(chief, worker, ps\)"),
    ("jobset", {"REPLICATED_JOB_NAME": "worker", "JOB_COMPLETION_INDEX": "2"},
     r"JOB_COMPLETION_INDEX=2 is not a task of job 'worker', which has 2 \(cluster\.workers=2\); the manifest and "
     r"the config disagree$"),
    ("jobset", {"REPLICATED_JOB_NAME": "ps", "JOB_COMPLETION_INDEX": "0", "JOB_INDEX": "1"},
     r"expects one Job per role \(replicas: 1\), a pod per task\. Received: JOB_INDEX=1$"),
]


@pytest.mark.parametrize("resolver,env,message", BAD_POD_ENV)
def test_a_pod_without_what_it_needs_is_a_one_line_error(resolver, env, message):
    cfg = load_config(os.path.join(ROOT, ASYNC), [f"cluster.resolver={resolver}"])
    with pytest.raises(ConfigError, match=message) as info:
        cl.pod_tf_config(cfg.cluster, cl.REQUIRED_JOBS["parameter_server"], env)
    assert "\n" not in str(info.value)


def test_cluster_resolver_sets_tf_config_in_the_pod(monkeypatch):
    """TensorFlow gets a TFConfigClusterResolver over the pod's TF_CONFIG (it counts the pod's GPUs)."""
    cfg = load_config(os.path.join(ROOT, SYNC), ["cluster.resolver=jobset", "cluster.kubernetes_name=mnist"])
    monkeypatch.setenv("TF_CONFIG", "")  # recorded, so the TF_CONFIG the resolver sets is undone after the test
    for name, value in {"JOBSET_NAME": "mnist", "REPLICATED_JOB_NAME": "worker", "JOB_INDEX": "0",
                        "JOB_COMPLETION_INDEX": "1"}.items():
        monkeypatch.setenv(name, value)
    resolver = cl.cluster_resolver(cfg.cluster, ("worker",))
    assert type(resolver).__name__ == "TFConfigClusterResolver"
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)
    assert cl.resolver_spec(resolver) == {"worker": ["mnist-worker-0-0.mnist:8888", "mnist-worker-0-1.mnist:8888"]}
    assert json.loads(os.environ["TF_CONFIG"])["task"] == {"type": "worker", "index": 1}


# ---------------------------------------------------------------- the manifests
MANIFESTS = [(SYNC, "jobset"), (SYNC, "indexed-job"), (ASYNC, "jobset")]


@pytest.mark.parametrize("config,fmt", MANIFESTS)
@pytest.mark.parametrize("options", [{}, {"cpu": None, "memory": None, "gpus": None, "checkpoint_claim": None}],
                         ids=["resources", "bare"])
def test_manifests_validate_against_the_api_schemas(config, fmt, options):
    for manifest in _export(config, [CHECKPOINT], fmt, **options):
        assert schema_errors(manifest) == [] and semantic_errors(manifest) == [], manifest["kind"]


def test_the_schema_check_is_strict():
    """A misspelt field, a wrong type, an unknown enum value, a bad quantity, an unknown target all fail."""
    manifest = _export(ASYNC, [CHECKPOINT], "jobset")[0]
    container = manifest["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    container["imagePullPolicyy"] = "Always"
    container["resources"]["requests"]["cpu"] = "two"
    manifest["spec"]["network"]["enableDNSHostnames"] = "yes"
    manifest["spec"]["failurePolicy"]["rules"][0]["action"] = "Restart"
    manifest["spec"]["successPolicy"]["targetReplicatedJobs"] = ["driver"]
    errors = schema_errors(manifest)
    assert len(errors) == 4 and any("'imagePullPolicyy' was unexpected" in e for e in errors)
    assert semantic_errors(manifest) == ["target replicated job 'driver' is not in replicatedJobs"]


def test_jobset_policies_fit_each_strategy():
    sync = _export(SYNC, [CHECKPOINT, "cluster.restart_workers=5"], "jobset")[0]["spec"]
    assert sync["network"] == {"enableDNSHostnames": True, "publishNotReadyAddresses": True}
    assert sync["successPolicy"] == {"operator": "All", "targetReplicatedJobs": ["worker"]}
    assert sync["failurePolicy"]["maxRestarts"] == 5  # a lost worker restarts the whole set, from checkpoint.dir
    assert sync["failurePolicy"]["rules"][0]["action"] == "RestartJobSet"
    (worker,) = sync["replicatedJobs"]
    assert worker["template"]["spec"]["backoffLimit"] == 0  # a failed pod fails its Job at once
    pod = worker["template"]["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["containers"][0]["volumeMounts"] == [{"name": "checkpoints", "mountPath": "/shared"}]

    ps = _export(ASYNC, [CHECKPOINT], "jobset")[0]["spec"]
    jobs = {rj["name"]: rj["template"]["spec"] for rj in ps["replicatedJobs"]}
    assert list(jobs) == ["chief", "worker", "ps"]
    assert ps["successPolicy"] == {"operator": "All", "targetReplicatedJobs": ["chief"]}
    assert ps["failurePolicy"]["rules"] == [{"name": "LostChiefOrPs", "action": "FailJobSet",
                                            "targetReplicatedJobs": ["chief", "ps"]}]
    assert jobs["worker"]["backoffLimitPerIndex"] == 3 and "backoffLimit" not in jobs["worker"]  # restarts alone
    assert jobs["chief"]["backoffLimit"] == jobs["ps"]["backoffLimit"] == 0
    containers = {job: spec["template"]["spec"]["containers"][0] for job, spec in jobs.items()}
    assert "nvidia.com/gpu" in containers["worker"]["resources"]["limits"]  # GPUs where gradients are computed
    assert "nvidia.com/gpu" not in containers["chief"]["resources"].get("limits", {})
    assert [job for job, c in containers.items() if "volumeMounts" in c] == ["chief"]  # who writes checkpoint.dir


def test_indexed_job_is_a_headless_service_and_an_indexed_job():
    service, job = _export(SYNC, [CHECKPOINT], "indexed-job")
    assert service["spec"]["publishNotReadyAddresses"] is True and service["spec"]["ports"][0]["port"] == 8888
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert (spec["backoffLimitPerIndex"], spec["maxFailedIndexes"]) == (3, 0)
    with pytest.raises(ConfigError, match=r"^export --format=indexed-job is for synchronous training .* use "
                                          r"--format=jobset\. Received: strategy\.kind='parameter_server'$"):
        _export(ASYNC, [], "indexed-job")
    with pytest.raises(ConfigError, match=r"cluster\.resolver: indexed_job runs synchronous training only"):
        load_config(os.path.join(ROOT, ASYNC), ["cluster.resolver=indexed_job"])


def test_export_errors_name_the_key():
    with pytest.raises(ConfigError, match=r"^--checkpoint_claim needs checkpoint\.dir, an absolute path .* "
                                          r"Received: checkpoint\.dir=None$"):
        _export(SYNC, [], "jobset")
    with pytest.raises(ConfigError, match=r"Received: checkpoint\.dir='runs/backup'$"):
        _export(SYNC, ["checkpoint.dir=runs/backup"], "jobset")
    with pytest.raises(ConfigError, match=r"^cluster\.kubernetes_name is too long: pod .*-worker-0-1-xxxxx"):
        _export(SYNC, [CHECKPOINT, "cluster.kubernetes_name=" + "a" * 47], "jobset")
    with pytest.raises(ConfigError, match=r"cluster\.kubernetes_name: string should match pattern"):
        load_config(os.path.join(ROOT, SYNC), ["cluster.kubernetes_name=Paradl_TF"])
    with pytest.raises(ConfigError, match=r"^export --format=jobset needs --image"):
        _export(SYNC, [CHECKPOINT], "jobset", image=None)


def test_every_format_serves_on_cluster_port():
    """The TFJob operator puts the tensorflow container's tfjob-port into TF_CONFIG (2222 only where there is
    none): exported with cluster.port, every format and `tf-config` agree."""
    cfg = load_config(os.path.join(ROOT, ASYNC), ["cluster.port=7777"])
    tfjob = deploy.tfjob(cfg, deploy.Pod("img"), ASYNC)
    for spec in tfjob["spec"]["tfReplicaSpecs"].values():
        assert spec["template"]["spec"]["containers"][0]["ports"] == [{"name": "tfjob-port", "containerPort": 7777}]
    assert all(a.endswith(":7777") for a in json.loads(deploy.tf_configs(cfg, list("abcd"))["ps:0"])["cluster"]["ps"])
    for manifest in _export(ASYNC, ["cluster.port=7777"], "jobset", checkpoint_claim=None):
        assert {c["containers"][0]["ports"][0]["containerPort"] for c in
                (rj["template"]["spec"]["template"]["spec"] for rj in manifest["spec"]["replicatedJobs"])} == {7777}


@pytest.mark.timeout(180)
def test_cli_export_and_plan(cli):
    done = cli("export", f"--config={SYNC}", "--format=jobset", "--image=reg/p:1", "--set", CHECKPOINT,
               "--checkpoint_claim=ckpt", "--gpus=2", timeout=60)
    assert done.returncode == 0, done.stderr
    (jobset,) = yaml.safe_load_all(done.stdout)
    container = jobset["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["containers"][0]
    assert shlex.join(container["command"]) == (f"paradl-tf train --config={SYNC} --set {CHECKPOINT} "
                                                "--set cluster.resolver=jobset")
    assert container["resources"] == {"limits": {"nvidia.com/gpu": 2}}
    bad = cli("export", f"--config={ASYNC}", "--format=indexed-job", "--image=i", timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error: export --format=indexed-job is for synchronous")
    plan = cli("plan", f"--config={SYNC}", "--set", "cluster.resolver=jobset", "--set", "train.epochs=1", timeout=150)
    assert plan.returncode == 0, plan.stderr
    assert "  worker:0  paradl-tf-worker-0-0.paradl-tf:8888" in plan.stdout.splitlines()
    assert "  worker:1  paradl-tf-worker-0-1.paradl-tf:8888" in plan.stdout.splitlines()
