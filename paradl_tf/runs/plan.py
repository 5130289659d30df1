"""`plan`: what a config will run, without training: config with provenance, devices, strategy, variables."""

from __future__ import annotations

import json
import tempfile
import time
from typing import Any, Callable

import numpy as np
import tensorflow as tf

from paradl_tf.builders.data import load_source
from paradl_tf.builders.devices import logical_device_names
from paradl_tf.builders.keras_version import import_keras
from paradl_tf.builders.models import build_model, compile_model
from paradl_tf.builders.precision import precision_policy, resolve_precision
from paradl_tf.cluster.emulated import host_spec, layout, planned_hosts
from paradl_tf.config import Config
from paradl_tf.runs.communication import format_communication
from paradl_tf.runs.fit import prepare
from paradl_tf.tf_logs import descriptor_into


def plan(cfg: Config) -> dict[str, Any]:
    """Build the strategy and the model in this process (no training) and describe them; the cluster strategies
    plan without starting their cluster (paradl_tf.runs.multi_worker.plan, .parameter_server.plan)."""
    job = prepare(cfg)
    variables = [describe_variable(v, variable_devices(v, job.strategy)) for v in job.model.variables]
    mesh = job.placement if job.placement and "groups" in job.placement else None
    # Hybrid's model holds R copies: one replica computes the gradients of one copy.
    gradients = mesh["mirrored_all_reduce_bytes_per_step"] if mesh else trainable_bytes(job.model)
    return {
        **plan_header(cfg, type(job.strategy).__name__, job.keras_name, variables, job.precision, gradients),
        "replicas": job.replicas,
        "devices": job.devices,
        "per_replica_batch_size": job.per_replica_batch_size,
        "input": job.datasets.input,
        **({"placement": job.placement} if job.placement else {}),
    }


def plan_header(cfg: Config, strategy_class: str, keras_name: str, variables: list[dict],
                precision: dict, gradient_bytes: int) -> dict[str, Any]:
    """The keys every plan has: the config with provenance, devices, strategy, Keras, precision, the variables and
    the bytes of the gradients one replica computes per step (what an all-reduce or a push to the ps moves)."""
    return {
        "config": cfg.model_dump(mode="json"),
        "provenance": cfg.provenance,
        "source": cfg.source,
        "logical_devices": [d.name for d in tf.config.list_logical_devices()],
        "strategy": cfg.strategy.kind,
        "strategy_class": strategy_class,
        "keras": keras_name,
        "precision": precision,
        "global_batch_size": cfg.train.global_batch_size,
        "variables": variables,
        "parameter_bytes": sum(v["bytes"] for v in variables),
        "gradient_bytes": gradient_bytes,
    }


def trainable_bytes(model) -> int:
    """Bytes of a model's trainable variables: the gradients of one step."""
    return sum(int(np.prod(v.shape, dtype=np.int64)) * tf.as_dtype(v.dtype).size for v in model.trainable_variables)


def measure_step_seconds(cfg: Config, keras_name: str, batch: int, steps: int = 20) -> tuple[float, str]:
    """The median time of one training step of cfg's whole model on this machine's first device, with `batch`
    random examples, inside model.fit as a run steps (train_on_batch pays a Python call per step that fit does not):
    the compute one replica (or one worker, or the whole pipeline) does per step, measured here. Returns the
    seconds and where they were measured."""
    keras = import_keras(keras_name)
    source = load_source(cfg.data, cfg.train.seed)
    device = logical_device_names(cfg.devices.type)[0]
    warm_up = 5  # tracing and the first steps' allocations are not the step
    rng = np.random.default_rng(cfg.train.seed)
    x = rng.random((batch * (warm_up + steps), *source.input_shape), dtype=np.float32)
    y = rng.integers(0, source.num_classes, size=len(x)).astype(np.int32)
    ends: list[float] = []
    timer = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))
    with tf.device(device), precision_policy(keras, resolve_precision(cfg.train.precision, cfg.devices.type)):
        model = build_model(cfg.model, source.input_shape, source.num_classes, keras)
        compile_model(model, cfg.train.model_copy(update={"steps_per_execution": 1}), keras)
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
    times = np.diff(ends[warm_up - 1:])
    return float(np.median(times)), f"measured here: median of {len(times)} steps of batch {batch} on {device}"


CLUSTER_STEP_EPOCHS, CLUSTER_STEP_STEPS = 4, 20
"""`plan --compute=cluster` trains the cluster this many epochs of this many steps; the first (tracing) is not timed."""


def measure_cluster_step_seconds(cfg: Config, tasks: dict[str, list],
                                 train: Callable[[Config], dict[str, Any]]) -> tuple[float, str]:
    """The median time of one worker's training step in cfg's own cluster (`tasks`: the plan's, so a TF_CONFIG or
    Slurm cluster runs with its real number of workers and ps), started here on loopback for a few epochs.

    It holds what a step costs besides the link: the compute, the runtime's RPCs and coordination, the chief's
    dispatch, and the tasks sharing this machine's cores. One device's step leaves all that out: for the digits
    MLP 1.0-1.3 ms against a cluster's 7.7-14.1 ms (bench/network_full_mlp), so the link's predicted share of the
    step came out 2-4x too high. A parameter-server cluster runs P workers' steps side by side: one worker's
    step is the cluster's time per step times P. `train`: paradl_tf.train, which launches the cluster."""
    workers, ps = len(tasks.get("worker", [])), len(tasks.get("ps", []))
    with tempfile.TemporaryDirectory(prefix="paradl-plan-") as tmp:
        run = cfg.model_copy(update={
            "output_dir": tmp,
            "train": cfg.train.model_copy(update={"epochs": CLUSTER_STEP_EPOCHS,
                                                  "steps_per_epoch": CLUSTER_STEP_STEPS, "tensorboard": False}),
            "cluster": cfg.cluster.model_copy(update={
                "resolver": "local", "mode": "process", "hosts": None, "workers": workers, "ps": ps,
                "restart_workers": 0, "timeout_s": cfg.cluster.timeout_s or 600}),
            "checkpoint": cfg.checkpoint.model_copy(update={"dir": None, "keep": 0}),
        })
        with descriptor_into(1, 2):  # the cluster's per-epoch progress is not the plan (plan --json reads stdout)
            results = train(run)
    steps = results["steps_per_epoch"]
    per_step = float(np.median([s / steps for s in results["epoch_train_seconds"][1:]]))
    side_by_side = cfg.strategy.kind == "parameter_server"  # P workers' steps at once: a worker's is P times longer
    return per_step * (workers if side_by_side else 1), (
        f"measured here: the config's cluster ({workers} worker(s)" + (f", {ps} ps" if ps else "")
        + f") on loopback, median of {CLUSTER_STEP_EPOCHS - 1} epochs of {steps} steps"
        + (f", times {workers} workers" if side_by_side else ""))


def variable_devices(variable, strategy: tf.distribute.Strategy) -> list[str]:
    """Devices holding a variable's values: one per replica for a mirrored variable."""
    value = getattr(variable, "value", variable)  # Keras 3 wraps the tf.Variable
    if callable(value):  # tf_keras: `value` is a method of tf.Variable
        value = variable
    return [t.device for t in strategy.experimental_local_results(value)]


def describe_variable(variable, devices: list[str]) -> dict[str, Any]:
    """A variable's row in a plan: name, shape, dtype, bytes and the devices holding its values."""
    shape = tuple(int(d) for d in variable.shape)
    dtype = tf.as_dtype(variable.dtype)
    return {
        "name": getattr(variable, "path", variable.name),
        "shape": list(shape),
        "dtype": dtype.name,
        "bytes": int(np.prod(shape, dtype=np.int64)) * dtype.size,
        "devices": devices,
    }


def format_plan(p: dict[str, Any], as_json: bool = False) -> str:
    """The plan as text (or JSON)."""
    if as_json:
        return json.dumps(p, indent=2)
    lines = [f"config: {p['source'] or '(defaults)'}"]
    width = max(len(k) for k in p["provenance"])
    flat = _flatten(p["config"])
    for key, origin in p["provenance"].items():
        lines.append(f"  {key:<{width}}  {json.dumps(flat.get(key))}  [{origin}]")
    lines.append("logical devices: " + ", ".join(p["logical_devices"]))
    lines.append(f"strategy: {p['strategy']} ({p['strategy_class']}), {p['replicas']} replica(s) on {', '.join(p['devices'])}")
    lines.append(f"keras: {p['keras']}")
    lines.append(format_precision(p["precision"]))
    lines.append(f"batch: global {p['global_batch_size']}, per replica {p['per_replica_batch_size']}")
    rows = [(v["name"], "x".join(map(str, v["shape"])) or "scalar", str(v["bytes"]), ", ".join(v["devices"])) for v in p["variables"]]
    rows.insert(0, ("variable", "shape", "bytes", "device(s)"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for r in rows:
        lines.append(f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}")
    lines.append(f"parameter bytes: {p['parameter_bytes']}")
    if p.get("cluster"):
        c = p["cluster"]
        lines.append(f"cluster: resolver {c['resolver']}, {c['mode']}; "
                     + ", ".join(f"{job} x{len(addrs)}" for job, addrs in c["tasks"].items()))
        for job, addresses in c["tasks"].items():
            lines.extend(f"  {job}:{i}  {address}" for i, address in enumerate(addresses))
        for name, h in c.get("hosts", {}).items():
            bandwidth = f"{h['bandwidth_mbit']:g} Mbit/s" if h["bandwidth_mbit"] else "unshaped"
            cpu = f"{h['cpu_share']:g} core(s)" if h["cpu_share"] else "no CPU limit"
            lines.append(f"  host {name}  {h['address']}  link {bandwidth}, {cpu}: {', '.join(h['tasks'])}"
                         + ("  (absent: never starts)" if h.get("absent") else ""))
    if p.get("ps_bytes"):
        lines.extend(format_cluster_plan(p))
    if p.get("all_reduce"):
        a = p["all_reduce"]
        lines.append(f"all-reduce: {a['communication']}, {a['bytes_per_step']} gradient bytes per replica per step "
                     f"over {p['replicas']} replicas ({a['local_replicas']} per worker)")
    if p.get("placement") and "groups" in p["placement"]:
        lines.extend(format_mesh(p["placement"]))
    elif p.get("placement"):
        lines.extend(format_placement(p["placement"]))
    if p.get("input"):
        lines.extend(format_input(p["input"]))
    if p.get("communication"):
        lines.extend(format_communication(p["communication"]))
    return "\n".join(lines)


def format_input(i: dict[str, Any]) -> list[str]:
    """Where the examples come from and, for files, what each input pipeline reads."""
    service = f", tf.data service: {i['service']}" if i.get("service") else ""
    if not i.get("files"):
        return [f"input: {i['source']}, {i['shard_policy']}{service}; {i['examples_per_epoch']} examples per epoch"]
    pipelines = i["pipelines"]
    lines = [f"input: {i['source']}, {i['files']} training file(s) ({i['train_examples']} examples), "
             f"{i['validation_files']} validation file(s) ({i['validation_examples']}); shard policy "
             f"{pipelines['policy']} over {pipelines['pipelines']} input pipeline(s){service}; "
             f"{i['examples_per_epoch']} examples per epoch"]
    for n, share in enumerate(pipelines["per_pipeline"]):
        more = share["files"] - len(share["first_files"])
        lines.append(f"  pipeline {n}: {share['files']} file(s), {share['examples']} examples: "
                     + ", ".join(share["first_files"]) + (f", ... ({more} more)" if more else ""))
    if pipelines.get("warning"):
        lines.append(f"  warning: {pipelines['warning']}")
    return lines


def format_precision(precision: dict[str, Any]) -> str:
    """One line: the policy, the dtypes it gives, and why it was chosen."""
    scaling = ", loss scaling" if precision["loss_scaling"] else ""
    return (f"precision: {precision['policy']} (variables {', '.join(precision['variable_dtypes'])}, activations "
            f"{precision['activation_dtype']}, logits {precision['output_dtype']}{scaling}); {precision['why']}")


def format_placement(placement: dict[str, Any]) -> list[str]:
    """Model parallel: one row per stage, then the balance and the pipeline's idle fraction."""
    stages = placement["stages"]
    by = f" (balanced by {placement['balance_by']})" if "balance_by" in placement else ""
    lines = [f"placement: {placement['kind']}{by}, {len(stages)} stage(s)"]
    rows = [("stage", "device", "params", "param bytes", "sends bytes/example", "layers")]
    rows += [
        (str(s["stage"]), s["device"], str(s["params"]), str(s["parameter_bytes"]),
         str(s["sends_bytes_per_example"]), ", ".join(s["layers"]))
        for s in stages
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        lines.append(
            f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]:>{widths[3]}}  "
            f"{r[4]:>{widths[4]}}  {r[5]}"
        )
    if placement.get("activation_dtypes"):
        lines.append(f"activations sent between stages as: {', '.join(placement['activation_dtypes'])}")
    lines.append(f"balance (largest stage / mean, parameter bytes): {placement['balance']:.3f}")
    m, idle = placement["microbatches"], placement["idle_fraction"]
    if idle is None:
        lines.append(f"pipeline: {m} micro-batch(es); branches run side by side, no stage chain")
    else:
        lines.append(f"pipeline: {m} micro-batch(es) over {len(stages)} stages, idle fraction (S-1)/(M+S-1) = {idle:.3f}")
    return lines


def format_mesh(mesh: dict[str, Any]) -> list[str]:
    """Hybrid: the groups x stages mesh, one row per (group, stage), then the all-reduce bytes against Mirrored."""
    groups, stages = mesh["groups"], mesh["stages"]
    by = f" (balanced by {mesh['balance_by']})" if "balance_by" in mesh else ""
    lines = [f"mesh: {len(groups)} replica group(s) x {len(groups[0]['devices'])} stage(s), placement {mesh['kind']}{by}"]
    lines.extend(f"  group {g['group']}: {', '.join(g['devices'])}" for g in groups)
    rows = [("group", "stage", "device", "param bytes", "all-reduced bytes/step", "layers")]
    rows += [(str(s["group"]), str(s["stage"]), s["device"], str(s["parameter_bytes"]),
              str(s["all_reduce_bytes_per_step"]), ", ".join(s["layers"])) for s in stages]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for r in rows:
        lines.append(f"  {r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}  "
                     f"{r[4]:>{widths[4]}}  {r[5]}")
    lines.append(f"all-reduce: each stage's gradients averaged with the same stage of the other groups "
                 f"({mesh['cross_device_ops']}): {mesh['all_reduce_bytes_per_step']} bytes per group per step, "
                 f"at most {max(s['all_reduce_bytes_per_step'] for s in stages)} per device "
                 f"(MirroredStrategy: {mesh['mirrored_all_reduce_bytes_per_step']} per device)")
    m, idle = mesh["microbatches"], mesh["idle_fraction"]
    idle_text = "branches side by side" if idle is None else f"idle fraction (S-1)/(M+S-1) = {idle:.3f}"
    lines.append(f"pipeline: {m} micro-batch(es) per group; {idle_text}")
    if mesh.get("activation_dtypes"):
        lines.append(f"activations sent between stages as: {', '.join(mesh['activation_dtypes'])}")
    return lines


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def cluster_plan(cfg: Config, mode: str, tasks: dict) -> dict[str, Any]:
    """The plan's `cluster`: how tasks are found and run, their addresses; on emulated hosts (cluster.hosts) the
    hosts too (address, link, CPU share, tasks), and the tasks at their hosts' names."""
    c = cfg.cluster
    if c.hosts is None:
        return {"resolver": c.resolver, "mode": mode, "tasks": tasks}
    return {"resolver": c.resolver, "mode": "emulated hosts", "tasks": host_spec(cfg, layout(cfg)),
            "hosts": planned_hosts(cfg)}


def format_cluster_plan(p: dict[str, Any]) -> list[str]:
    """Parameter servers: the shards of split variables, the bytes per ps, steps per dispatch, evaluation."""
    lines = []
    split = [v for v in p["variables"] if len(v["shards"]) > 1]
    if split:
        lines.append("shards (axis 0):")
        for v in split:
            for s in v["shards"]:
                rows = f"rows {s['offset']}-{s['offset'] + s['shape'][0] - 1}"
                lines.append(f"  {v['name']}  {rows}  {s['bytes']} bytes  {s['device']}")
    lines.append("bytes per ps: " + ", ".join(f"{d}: {b}" for d, b in p["ps_bytes"].items()))
    lines.append(f"steps per dispatch: {p['steps_per_execution']}; evaluation {p['evaluation']}")
    return lines
