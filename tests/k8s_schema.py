"""The Kubernetes API fields of the manifests `paradl-tf export` writes, checked as the API server would.

JobSet (jobset.x-k8s.io/v1alpha2): the CRD's own openAPIV3Schema (k8s_schemas/, descriptions removed; see its
$comment). Its replicatedJobs[].template is batch/v1 JobTemplateSpec, so a plain Job's spec is checked against
the same JobSpec. Service (v1): the ServiceSpec fields of k8s.io/api core/v1, written out below.

`kubectl apply` validates fields strictly by default (unknown or duplicate fields are errors), so every object
that lists its properties here rejects any other. `semantic_errors` adds the rules the schemas cannot express
and the API server or the JobSet webhook enforce on what we emit.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import jsonschema

SCHEMAS = Path(__file__).parent / "k8s_schemas"
DNS1035 = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"  # a Service, Job or JobSet name; pod hostnames
RULE_NAME = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"  # JobSet failure policy rule names (its webhook)

# ObjectMeta, the part a client writes (metav1.ObjectMeta); the rest is the server's.
OBJECT_META = {
    "type": "object", "required": ["name"], "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": DNS1035, "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}

# core/v1 ServiceSpec and ServicePort (k8s.io/api v0.36); `ports` is a list map keyed by port and protocol.
SERVICE_SPEC = {
    "type": "object", "additionalProperties": False,
    "properties": {
        **{key: {"type": "string"} for key in (
            "clusterIP", "externalName", "externalTrafficPolicy", "internalTrafficPolicy", "ipFamilyPolicy",
            "loadBalancerClass", "loadBalancerIP", "sessionAffinity", "trafficDistribution")},
        **{key: {"type": "array", "items": {"type": "string"}} for key in (
            "clusterIPs", "externalIPs", "ipFamilies", "loadBalancerSourceRanges")},
        "allocateLoadBalancerNodePorts": {"type": "boolean"},
        "healthCheckNodePort": {"type": "integer"},
        "publishNotReadyAddresses": {"type": "boolean"},
        "selector": {"type": "object", "additionalProperties": {"type": "string"}},
        "sessionAffinityConfig": {"type": "object"},
        "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
        "ports": {"type": "array", "items": {
            "type": "object", "required": ["port"], "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "pattern": DNS1035},
                "appProtocol": {"type": "string"},
                "nodePort": {"type": "integer"},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                "targetPort": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string"}]},
            },
        }},
    },
}


def strict(schema: dict) -> dict:
    """A structural (CRD) schema as a JSON Schema that rejects unknown fields, as strict field validation does:
    additionalProperties false wherever properties are listed (unless unknown fields are preserved),
    int-or-string as either; the other x-kubernetes-* annotations (CEL rules, list types) left out."""
    out = {k: v for k, v in schema.items()
           if not k.startswith("x-kubernetes-") and k not in ("properties", "items", "additionalProperties",
                                                               "anyOf", "allOf", "oneOf")}
    if "properties" in schema:
        out["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
    if "items" in schema:
        out["items"] = strict(schema["items"])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = strict(extra)
    elif extra is not None:
        out["additionalProperties"] = extra
    elif "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    for key in ("anyOf", "allOf", "oneOf"):
        if key in schema:
            out[key] = [strict(sub) for sub in schema[key]]
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return out


def _object(api_version: str, kind: str, spec: dict) -> dict:
    return {
        "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"], "additionalProperties": False,
        "properties": {"apiVersion": {"const": api_version}, "kind": {"const": kind}, "metadata": OBJECT_META,
                       "spec": spec},
    }


@functools.lru_cache(maxsize=None)
def schemas() -> dict[str, dict]:
    """(apiVersion, kind) -> JSON Schema."""
    crd = strict(json.loads((SCHEMAS / "jobset.x-k8s.io_v1alpha2.json").read_text()))
    job_spec = crd["properties"]["spec"]["properties"]["replicatedJobs"]["items"]["properties"]["template"][
        "properties"]["spec"]
    return {
        ("jobset.x-k8s.io/v1alpha2", "JobSet"): _object("jobset.x-k8s.io/v1alpha2", "JobSet", crd["properties"]["spec"]),
        ("batch/v1", "Job"): _object("batch/v1", "Job", job_spec),
        ("v1", "Service"): _object("v1", "Service", SERVICE_SPEC),
    }


def schema_errors(manifest: dict) -> list[str]:
    """Every schema violation of one manifest, as 'path: message'."""
    schema = schemas().get((manifest.get("apiVersion"), manifest.get("kind")))
    if schema is None:
        return [f"no schema for apiVersion={manifest.get('apiVersion')} kind={manifest.get('kind')}"]
    validator = jsonschema.Draft202012Validator(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(manifest)]


def semantic_errors(manifest: dict) -> list[str]:
    """Rules the schemas cannot express, as the batch/v1 Job validation and the JobSet webhook apply them."""
    errors = []
    if manifest["kind"] == "JobSet":
        spec = manifest["spec"]
        names = [rj["name"] for rj in spec["replicatedJobs"]]
        if len(set(names)) != len(names):
            errors.append(f"replicatedJobs: duplicate names {names}")
        targets = [*spec.get("successPolicy", {}).get("targetReplicatedJobs", [])]
        for rule in spec.get("failurePolicy", {}).get("rules", []):
            targets += rule.get("targetReplicatedJobs", [])
            if not re.match(RULE_NAME, rule["name"]):
                errors.append(f"failurePolicy rule name {rule['name']!r} does not match {RULE_NAME}")
        errors += [f"target replicated job {t!r} is not in replicatedJobs" for t in targets if t not in names]
        jobs = [(f"{manifest['metadata']['name']}-{rj['name']}-{rj.get('replicas', 1) - 1}", rj["template"]["spec"])
                for rj in spec["replicatedJobs"]]
    else:
        jobs = [(manifest["metadata"]["name"], manifest["spec"])] if manifest["kind"] == "Job" else []
    for job_name, job in jobs:
        errors += _job_errors(job_name, job)
    return errors


def _job_errors(job_name: str, job: dict) -> list[str]:
    errors = []
    indexed = job.get("completionMode") == "Indexed"
    restart = job["template"]["spec"].get("restartPolicy")
    if restart not in ("Never", "OnFailure"):
        errors.append(f"{job_name}: a Job's pods must have restartPolicy Never or OnFailure, not {restart!r}")
    if ("backoffLimitPerIndex" in job or "successPolicy" in job) and not indexed:
        errors.append(f"{job_name}: backoffLimitPerIndex and successPolicy need completionMode: Indexed")
    if "backoffLimitPerIndex" in job and restart != "Never":
        errors.append(f"{job_name}: backoffLimitPerIndex needs the pods' restartPolicy: Never")
    if "maxFailedIndexes" in job and "backoffLimitPerIndex" not in job:
        errors.append(f"{job_name}: maxFailedIndexes needs backoffLimitPerIndex")
    if indexed and job.get("completions") is None:
        errors.append(f"{job_name}: an Indexed Job needs completions")
    longest_pod = f"{job_name}-{job.get('completions', 1) - 1}-abcde"  # <job>-<index>-<random suffix>
    if len(longest_pod) > 63 or not re.match(DNS1035, longest_pod):
        errors.append(f"{job_name}: pod name {longest_pod} is not a DNS-1035 label of at most 63 characters")
    return errors
