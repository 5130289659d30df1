"""The network part: sync against async where the difference lives, on emulated hosts, beside the cost models.

MultiWorkerMirrored (2 workers) against parameter servers (2 workers + 1 ps), each task on its own emulated host
(cluster.hosts: a network namespace on a private bridge, paradl_tf.cluster.hosts), on the digits MLP and the CNN:

- links: every link unshaped, then at each bandwidth of the plan (10 Gbit down to 10 Mbit);
- stragglers: one worker's host slowed s times, by its CPU share or by its link. s is the slow worker's own
  measured step time against an unslowed worker's, not the quota: a one-worker parameter-server cluster (its
  steps wait for nobody) is timed unslowed, at each CPU share of the plan and at the link the ps-traffic model
  gives for each s; each target s takes the setting whose measured s is nearest, and its rows carry that s.

Beside each row, its model (paradl_tf.runs.communication, the same functions `plan --link` prints), and whether
the measurement is within MODEL_TOLERANCE of it: links, the compute of a step (the unshaped row's) plus the ring
all-reduce 2(n-1)/n*S/B (MultiWorkerMirrored), or the slower of a worker's own step (compute, pull and push,
(S_pull + S_push)/B) and the ps link's share of every worker's traffic, over P (parameter servers); stragglers,
synchronous throughput 1/s of the unslowed run's and asynchronous (P-1+1/s)/P (MultiWorkerMirrored slowed by a
link: the ring over its slowest link). And `plan --link --compute=cluster`'s predicted communication share against
the measured one, 1 - unshaped step / step, at 100 and 10 Mbit: the worker that measured the row runs that plan of
its config after training (the config's cluster on loopback, the way a user runs plan before renting hosts).

Each row also has the training time to a validation accuracy (VAL_TARGETS), so that what staleness costs in
accuracy stands beside the speed. Hybrid is not measured: its replica groups are devices of one process, so
nothing of it crosses a host's link. Needs root (network namespaces): elsewhere the part says why and measures
nothing.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from paradl_tf.benchmark.budgets import Budget
from paradl_tf.benchmark.figures import process_figures, stat, summarize_train
from paradl_tf.benchmark.methods import METHOD_BY_NAME
from paradl_tf.benchmark.modes import MODES, Mode
from paradl_tf.benchmark.parts import PARTS, Bench
from paradl_tf.benchmark.processes import run_interleaved
from paradl_tf.benchmark.specs import Spec, build_config, forward_flops, train_spec
from paradl_tf.benchmark.workloads import Workload
from paradl_tf.cluster import hosts
from paradl_tf.cluster.local import write_json
from paradl_tf.runs.communication import predict, seconds

SYNC, ASYNC = "multi_worker_mirrored_2", "parameter_server"
WORKERS = 2
MODEL_TOLERANCE = 0.25
"""A measurement within +-25% of its model agrees with it."""
VAL_TARGETS = {"mlp": 0.9, "cnn": 0.8}
"""The validation accuracy each workload's time-to-accuracy counts to (digits: 0.9; the synthetic-image CNN: 0.8)."""
PLAN_LINKS_MBIT = (100, 10)
"""Where `plan --link`'s predicted communication share is checked against the measured one."""
HYBRID = ("hybrid runs its replica groups as devices of one process (strategy.groups): no host link carries its "
          "per-stage reduce, so emulated hosts cannot slow it")


@dataclass(frozen=True)
class NetworkPlan:
    """What the network part measures in one mode."""

    workloads: tuple[str, ...]
    bandwidths_mbit: tuple[float, ...]
    """Every link at each of these (beside the unshaped run)."""
    slowdowns: tuple[float, ...]
    """Target s of the slow worker (beside s = 1, the unshaped run)."""
    slow_by: tuple[str, ...]
    """"cpu" (the host's CPU share), "link" (the host's bandwidth)."""
    cpu_shares: tuple[float, ...]
    """The CPU shares (cores) the calibration times a worker at."""
    unshaped: bool
    """Also every link unshaped: s = 1 of the stragglers, and the compute the link models add to (else plan's:
    its cluster on loopback)."""
    epochs: int
    steps: int
    """Steps per epoch (every step a global batch: MultiWorkerMirrored splits it, a ps worker runs it whole)."""
    reps: int
    timeout_s: float
    """Per cluster run (its launcher stops it 10 s before): 4 processes start TensorFlow on the machine's cores."""


PLANS: dict[str, NetworkPlan] = {
    # CPU shares: the MLP's step is mostly dispatch and RPCs (0.5, 0.25, 0.18 and 0.12 cores gave s = 1.0, 2.7, 3.5
    # and 5.5), the CNN's compute (0.5 and 0.25 cores: s = 2.8 and 6.0); 0.06 cores did not start in time.
    "full": NetworkPlan(("mlp", "cnn"), (10_000, 1_000, 100, 10), (2, 4), ("cpu", "link"),
                        (0.75, 0.5, 0.35, 0.25, 0.18, 0.12),
                        True, epochs=6, steps=40, reps=2, timeout_s=900),  # the CNN at 10 Mbit: 2 s a step
    # 14 cluster runs: the MLP, two links, s = 4 by CPU and by link.
    "quick": NetworkPlan(("mlp",), (100, 10), (4,), ("cpu", "link"), (0.25, 0.12), True, epochs=4, steps=20, reps=1,
                         timeout_s=300),
    # Tests: the two strategies at one link, against plan's compute (the suite's time allows two runs, and plan's).
    "tiny": NetworkPlan(("mlp",), (10,), (), (), (), False, epochs=2, steps=5, reps=1, timeout_s=240),
}
"""The network part's settings per mode."""


def run(bench: Bench, budget: Budget) -> None:
    """Calibrate the stragglers, measure the links and stragglers of every workload, interleaved; adds the rows
    and results.json's `network` entry (models beside measurements)."""
    entry = measure(bench.mode, PLANS[bench.mode.name], bench, budget)
    bench.entries["network"] = entry


def measure_network(mode: str = "tiny", out_dir: str | Path = "bench/network", plan: NetworkPlan | None = None,
                    log: Callable[[str], None] = print) -> dict:
    """The network part alone, from Python (notebook 05): its results.json entry, with the part's budget of `mode`
    and its plan (or `plan`), also written to <out_dir>/network.json. Worker logs go to <out_dir>/logs."""
    m = MODES[mode]
    bench = Bench(m, Path(out_dir), {"device_type": "CPU"}, False, 0, None, log, None)
    entry = measure(m, plan or PLANS[mode], bench, PARTS["network"].budget(m))
    write_json(Path(out_dir) / "network.json", entry)
    return entry


def measure(mode: Mode, plan: NetworkPlan, bench: Bench, budget: Budget) -> dict:
    why = hosts.hosts_available()
    if why:
        bench.log(f"network part: not available: {why}")
        bench.missing += [{"section": "network", "workload": w, "method": m, "impl": "toolkit", "x": None,
                           "status": "not available", "why": why} for w in plan.workloads for m in (SYNC, ASYNC)]
        return {"status": "not available", "why": why, "plan": asdict(plan)}
    mode = replace(mode, timeout_s=plan.timeout_s)
    try:
        calibration = {w: calibrate(mode, plan, mode.workloads[w], bench, budget) for w in plan.workloads}
        specs = [s for w in plan.workloads for s in row_specs(mode, plan, mode.workloads[w], calibration[w])]
        bench.log(f"network: {len(specs)} measurements on emulated hosts x {plan.reps} process(es), interleaved")
        run_interleaved(specs, bench.out, mode, budget, bench.log)
    finally:
        hosts.sweep_stale()  # a process killed past its timeout cannot remove its hosts: its namespaces go here
    rows = [{**summarize_train(s, bench.peak_flops(), forward_flops(s)), **s.about} for s in specs]
    for s, row in zip(specs, rows):
        row.update(_accuracy(s, VAL_TARGETS[row["workload"]]), plans=[r["plan"] for r in s.results if r.get("plan")])
    bench.rows += [{k: v for k, v in r.items() if k != "plans"} for r in rows]
    return {"status": "ok", "plan": asdict(plan), "val_targets": VAL_TARGETS, "tolerance": MODEL_TOLERANCE,
            "hybrid": HYBRID, "calibration": calibration, **compare(rows)}


# ================================================================ configs and specs
def host_config(mode: Mode, plan: NetworkPlan, workload: Workload, method: str, workers: int = WORKERS,
                links: dict | None = None) -> dict:
    """The config of one run on emulated hosts: a host per task, named n1, n2, ... in `groups` order."""
    m = METHOD_BY_NAME[method]
    cfg = build_config(workload, m, {"type": "CPU", "count": 1}, workload.batch, workload.width, plan.steps,
                       plan.epochs)
    ps = m.strategy["kind"] == "parameter_server"
    tasks = (["chief:0"] if ps else []) + [f"worker:{i}" for i in range(workers)] + (["ps:0"] if ps else [])
    # The launcher stops the run (and removes its hosts) before the bench would kill it.
    cfg["cluster"].update(workers=workers, timeout_s=plan.timeout_s - 10,
                          hosts={"groups": [[t] for t in tasks], **copy.deepcopy(links or {})})
    return cfg


def slow_host(cfg: dict, task: str) -> str:
    """The host name (n1, n2, ...) that runs `task`."""
    return f"n{cfg['cluster']['hosts']['groups'].index([task]) + 1}"


def _slowed(cfg: dict, task: str, by: str, setting: float) -> dict:
    key = "cpu_share" if by == "cpu" else "bandwidth_mbit"
    cfg["cluster"]["hosts"]["per_host"] = {slow_host(cfg, task): {key: setting}}
    return cfg


@dataclass
class NetworkSpec(Spec):
    about: dict = field(default_factory=dict)
    """What its row is (links or straggler, bandwidth, slowed by, s): keys of its row."""


def _spec(cfg: dict, method: str, workload: str, x: str, reps: int, about: dict,
          plan_link: str | None = None, plan_compute: str = "cluster") -> NetworkSpec:
    spec = train_spec(("network", workload, method, "toolkit", x), cfg, METHOD_BY_NAME[method], reps)
    if plan_link:  # the worker also gives `plan --link=<plan_link> --compute=<plan_compute>`'s figures of its config
        spec.worker.update(plan_link=plan_link, plan_compute=plan_compute)
    return NetworkSpec(spec.key, spec.worker, spec.reps, about=about)


# ================================================================ calibration: s is measured, not the quota
def calibrate(mode: Mode, plan: NetworkPlan, workload: Workload, bench: Bench, budget: Budget) -> dict:
    """Time a one-worker parameter-server cluster unslowed, at each CPU share and at the link the ps model gives for
    each s; per slow_by and target s, the setting whose measured s is nearest (log scale)."""
    if not plan.slowdowns:
        return {"points": [], "chosen": {}}
    base = _spec(host_config(mode, plan, workload, ASYNC, workers=1), ASYNC, workload.name, "calibration",
                 1, {"by": None, "setting": None}, plan_link="100Mbit", plan_compute="device")  # bytes alone
    bench.log(f"network calibration ({workload.name}): a one-worker parameter-server cluster, unslowed")
    run_interleaved([base], bench.out, mode, budget, bench.log)
    w1 = _step(base)
    p = next((r["plan"] for r in base.results if r.get("plan")), None)
    if w1 is None or p is None:
        return {"points": [], "chosen": {}, "why": "the unslowed calibration run failed"}
    traffic = p["parameter_bytes"] + p["gradient_bytes"]  # what a ps worker pulls and pushes each step
    settings = [("cpu", q) for q in plan.cpu_shares if "cpu" in plan.slow_by]
    # The link whose pull and push add (s - 1) unslowed steps: (S_pull + S_push) / B = (s - 1) * w1.
    settings += [("link", round(traffic * 8 / ((s - 1) * w1) / 1e6, 3)) for s in plan.slowdowns
                 if "link" in plan.slow_by]
    specs = [_spec(_slowed(host_config(mode, plan, workload, ASYNC, workers=1), "worker:0", by, v), ASYNC,
                   workload.name, f"calibration {by} {v:g}", 1, {"by": by, "setting": v}) for by, v in settings]
    bench.log(f"network calibration ({workload.name}): {len(specs)} slowed settings")
    run_interleaved(specs, bench.out, mode, budget, bench.log)
    points = [{"by": by, "setting": v, "step_seconds": t, "s": t / w1 if t else None}
              for (by, v), t in zip(settings, map(_step, specs))]
    return {"unslowed_step_seconds": w1, "points": points,
            "chosen": {by: {str(s): choose(points, by, s) for s in plan.slowdowns} for by in plan.slow_by}}


def _step(spec: Spec) -> float | None:
    """The median steady-state step of the spec's processes; None if none ran."""
    per = [process_figures(r)["step_seconds"] for r in spec.results if r.get("ok")]
    return stat(per)["median"] if per else None


def choose(points: list[dict], by: str, target: float) -> dict | None:
    """The calibration point of `by` whose measured s is nearest `target` (log scale); None if none was measured."""
    measured = [p for p in points if p["by"] == by and p["s"]]
    return min(measured, key=lambda p: abs(math.log(p["s"] / target)), default=None)


# ================================================================ the rows
def row_specs(mode: Mode, plan: NetworkPlan, workload: Workload, calibration: dict) -> list[Spec]:
    """Per strategy: unshaped (s = 1), every link at each bandwidth, and the slow worker at each chosen setting."""
    specs = []
    for method in (SYNC, ASYNC):
        if plan.unshaped:
            specs.append(_spec(host_config(mode, plan, workload, method), method, workload.name, "unshaped",
                               plan.reps, {"kind": "links", "bandwidth_mbit": None}))
        for mbit in plan.bandwidths_mbit:
            cfg = host_config(mode, plan, workload, method, links={"bandwidth_mbit": mbit})
            link = f"{mbit:g}Mbit"
            specs.append(_spec(cfg, method, workload.name, link, plan.reps, {"kind": "links", "bandwidth_mbit": mbit},
                               plan_link=link if mbit in PLAN_LINKS_MBIT else None))
        for by, chosen in calibration.get("chosen", {}).items():
            for target, point in chosen.items():
                if point is None:
                    continue
                cfg = _slowed(host_config(mode, plan, workload, method), "worker:1", by, point["setting"])
                specs.append(_spec(cfg, method, workload.name, f"{by} s={target}", plan.reps,
                                   {"kind": "straggler", "by": by, "target_s": float(target), "s": point["s"],
                                    "setting": point["setting"]}))
    return specs


def _accuracy(spec: Spec, target: float) -> dict:
    """Training seconds (validation excluded, the first epoch's tracing included) to the first epoch whose
    validation accuracy reaches `target`, per process; and the last epoch's validation accuracy."""
    ok = [r for r in spec.results if r.get("ok") and r.get("history")]
    reached = [time_to(r["epoch_seconds"], r["history"]["val_accuracy"], target) for r in ok]
    return {"val_target": target, "seconds_to_target": stat([t for t in reached if t is not None]),
            "reached_target": sum(t is not None for t in reached), "val_accuracy": stat(
                [r["history"]["val_accuracy"][-1] for r in ok]),
            "accuracy_curves": [{"seconds": list(_cumsum(r["epoch_seconds"])), "val_accuracy":
                                 r["history"]["val_accuracy"]} for r in ok]}


def time_to(epoch_seconds: list[float], val_accuracy: list[float], target: float) -> float | None:
    return next((t for t, a in zip(_cumsum(epoch_seconds), val_accuracy) if a >= target), None)


def _cumsum(xs: list[float]) -> list[float]:
    out, total = [], 0.0
    for x in xs:
        total += x
        out.append(total)
    return out


# ================================================================ the models beside the measurements
def compare(rows: list[dict]) -> dict:
    """Each link and straggler row beside its model, and plan --link's share against the measured one."""
    links, stragglers, plan_check = [], [], []
    for (workload, method), group in _groups(rows).items():
        base = next((r for r in group if r.get("kind") == "links" and r.get("bandwidth_mbit") is None), None)
        p = next((q for r in group for q in r["plans"]), None)
        for r in group:
            if r.get("kind") == "links":
                links.append(_point(r, link_model(r, base, p) if r.get("examples_per_sec") else {}))
                if r.get("bandwidth_mbit") in PLAN_LINKS_MBIT:
                    plan_check.append(plan_share(r, base))
            elif r.get("kind") == "straggler":
                stragglers.append(_point(r, straggler_model(r, base, p) if r.get("examples_per_sec") else {}))
    return {"links": links, "stragglers": stragglers, "plan_check": plan_check}


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in rows:
        out.setdefault((r["workload"], r["method"]), []).append(r)
    return out


def _median(figure: dict | None) -> float | None:
    return figure["median"] if figure else None


def _point(row: dict, model: dict) -> dict:
    """What a table prints of one row: its figures, its model's, and whether they agree."""
    if not row.get("examples_per_sec"):  # failed, or past the budget: nothing to put beside a model
        model = {"applies": False, "why": f"not measured ({row['status']})"}
    measured = _median(row.get("examples_per_sec"))
    predicted = model.get("examples_per_sec")
    ratio = measured / predicted if measured and predicted else None
    agrees = None if ratio is None else abs(ratio - 1) <= MODEL_TOLERANCE
    keep = ("workload", "method", "x", "kind", "bandwidth_mbit", "by", "target_s", "s", "setting", "status", "why",
            "examples_per_sec", "step_seconds", "val_target", "seconds_to_target", "reached_target", "val_accuracy",
            "accuracy_curves", "global_batch_size")
    return {**{k: row.get(k) for k in keep}, "model": model, "measured_over_model": ratio, "within": agrees}


def _worker_step(row: dict, method: str) -> float | None:
    """One worker's step, from the cluster's time per global step: a ps worker runs every P-th step whole."""
    step = _median(row.get("step_seconds")) if row else None
    return None if step is None else step * (WORKERS if method == ASYNC else 1)


def link_model(row: dict, base: dict | None, p: dict | None) -> dict:
    """Compute (the unshaped run's step) plus the communication over links of the row's bandwidth."""
    if row.get("bandwidth_mbit") is None:
        return {"applies": False, "why": "the reference point: its step is the compute the other rows' models use"}
    if p is None:
        return {"applies": False, "why": "no plan to take the bytes from (its run failed)"}
    compute, source = _worker_step(base, row["method"]), "the unshaped run's step"
    if compute is None:  # plan's: its cluster on loopback (--compute=cluster), or one device (no RPC)
        compute = p["communication"]["compute_seconds_per_step"]
        source = f"plan's ({p['communication']['compute_source']})"
    model = modelled_step(p, row["bandwidth_mbit"] * 1e6, compute)
    return {"applies": True, "compute_source": source, "compute_seconds": compute, **model,
            "examples_per_sec": row["global_batch_size"] / model["step_seconds"],
            "formula": ("compute + 2(n-1)/n * S / B" if row["method"] == SYNC else
                        "max(compute + (S_pull + S_push) / B, P * max(S_pull, S_push) / B) / P")}


def modelled_step(p: dict, bits_per_s: float, compute: float) -> dict:
    """The cluster's time per global step over links of `bits_per_s` by plan `p`'s models, with a worker's
    `compute`: MultiWorkerMirrored, compute plus the ring; parameter servers, a worker's own step (compute, pull
    and push) or the ps link's share of every worker's traffic, whichever is slower, over P workers."""
    c = predict(p, bits_per_s, compute)
    ps_link = sum(i["seconds_per_step"] for i in c["items"] if not i["on_step"])
    workers = len(p["cluster"]["tasks"]["worker"]) if p["strategy"] == "parameter_server" else 1
    return {"communication_seconds": c["communication_seconds_per_step"], "ps_link_seconds": ps_link or None,
            "step_seconds": max(c["step_seconds"], ps_link) / workers}


def straggler_model(row: dict, base: dict | None, p: dict | None) -> dict:
    """Sync: 1/s of the unslowed throughput (slowed by a link: the ring over its slowest link); async: (P-1+1/s)/P."""
    unslowed, s = _median(base and base.get("examples_per_sec")), row.get("s")
    if unslowed is None or not s:
        return {"applies": False, "why": "no unslowed run or measured s"}
    if row["method"] == SYNC and row["by"] == "link":
        model = link_model({**row, "bandwidth_mbit": row["setting"]}, base, p)
        return {**model, "formula": "compute + 2(n-1)/n * S / B_slowest (a ring runs at its slowest link)"}
    if row["method"] == SYNC:
        return {"applies": True, "examples_per_sec": unslowed / s, "formula": "unslowed / s"}
    return {"applies": True, "examples_per_sec": unslowed * (WORKERS - 1 + 1 / s) / WORKERS,
            "formula": "unslowed * (P - 1 + 1/s) / P"}


def plan_share(row: dict, base: dict | None) -> dict:
    """`plan --link`'s communication share of the step against the measured one (1 - unshaped step / this step)."""
    plans = row.get("plans") or []
    predicted = _median(stat([q["communication"]["communication_share"] for q in plans])) if plans else None
    step, unshaped = _median(row.get("step_seconds")), _median(base and base.get("step_seconds"))
    measured = max(0.0, 1 - unshaped / step) if step and unshaped else None
    agrees = None if predicted is None or measured is None else abs(predicted - measured) <= MODEL_TOLERANCE * measured
    return {"workload": row["workload"], "method": row["method"], "link": row["x"], "predicted_share": predicted,
            "predicted_communication_seconds": _median(stat([q["communication"]["communication_seconds_per_step"]
                                                             for q in plans])) if plans else None,
            "plan_compute_seconds": _median(stat([q["communication"]["compute_seconds_per_step"] for q in plans]))
            if plans else None, "measured_share": measured, "within": agrees}
