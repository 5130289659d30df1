"""Side by side: the toolkit and TensorFlow's tutorial-style code of each cluster method at the same time, each
pinned to its own half of the CPUs, the halves swapped every round, the side whose cluster starts sooner started
later; the ratio is taken round by round, over the epochs both sides trained together.

Why not the main table's tutorial rows alone: there the two sides run one after the other on the whole machine,
and on a shared machine of few cores the load from outside changes between one process and the next. Single
pairs of the same code spread from 0.8 to 1.2 that way (bench/RESULTS.md, entries 11 and 12). At the same time,
both sides meet the same moment's load; pinned, neither takes the other's cores; swapped, neither keeps the
faster half; started so, both train at once. What each side then measures is a local cluster on half the machine,
so these figures are ratios, not the main table's throughput. Entries 13 and 14 of bench/RESULTS.md have full runs.
"""

from __future__ import annotations

import copy
import functools
import os
import statistics
import time
from dataclasses import asdict, dataclass

from paradl_tf.benchmark.budgets import Budget, record_wall
from paradl_tf.benchmark.figures import TARGETS, median_interval, process_figures, stat
from paradl_tf.benchmark.methods import METHODS, Method
from paradl_tf.benchmark.parts import Bench
from paradl_tf.benchmark.processes import concurrently, run_worker
from paradl_tf.benchmark.specs import build_config, devices_for, steps_for, train_spec
from paradl_tf.cluster.processes import usable_cpus

SIDES = ("toolkit", "tutorial")
INTERVAL_CONFIDENCE = 0.9
"""Of the interval each row gives its median ratio: a target inside it is not told apart from the median."""


@dataclass(frozen=True)
class TutorialsPlan:
    """How much the part measures in one mode."""

    workloads: tuple[str, ...]
    rounds: int
    """Rounds per row: in each, one process of each side, at the same time; even (the halves swap every round)."""
    epochs: int
    """Per process: one warm-up epoch, then epochs - 1 timed (more than the main table's: each round starts
    a cluster of several processes on half the cores, and its epochs amortize that start)."""
    steps_scale: float
    """Steps per epoch as a multiple of the main table's: epochs long against how much the two clusters' start-up
    times vary (seconds), so that most timed epochs of both sides run together."""
    timeout_s: float


PLANS: dict[str, TutorialsPlan | None] = {
    "full": TutorialsPlan(("mlp", "cnn"), rounds=8, epochs=6, steps_scale=3, timeout_s=420),
    # A ratio needs several rounds of clusters that each take a minute or two: not for a smoke run, nor for tests.
    "quick": None,
    "tiny": None,
}


def run(bench: Bench, budget: Budget) -> None:
    """Measure every cluster method that has a tutorial-style side, on each workload of the plan, round by round;
    adds results.json's `tutorials` entry."""
    bench.entries["tutorials"] = measure(bench, PLANS[bench.mode.name], budget)


def methods(only=None) -> list[Method]:
    """The methods with a tutorial-style side (`only`: those of them named by --methods)."""
    return [m for m in METHODS if m.tutorial and (not only or m.name in only)]


def halves(cpus: set[int]) -> tuple[frozenset[int], frozenset[int]] | None:
    """The usable CPUs split into two halves of equal size (an odd one left out); None with fewer than 2."""
    ordered = sorted(cpus)
    half = len(ordered) // 2
    return (frozenset(ordered[:half]), frozenset(ordered[half:2 * half])) if half else None


def measure(bench: Bench, plan: TutorialsPlan | None, budget: Budget) -> dict:
    chosen = methods(bench.methods)
    split = halves(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if plan is None:
        why, status = (f"skipped in {bench.mode.name} mode: a ratio needs rounds of local clusters; the full mode "
                       "measures it (paradl-tf bench --parts=tutorials)"), "skipped"
    elif not chosen:
        why, status = (f"--methods={','.join(bench.methods)} names no method with a tutorial-style side "
                       f"({', '.join(m.name for m in methods())})"), "skipped"
    elif split is None:
        why, status = (f"each side needs CPUs of its own (sched_setaffinity), and this process has "
                       f"{usable_cpus()} usable"), "not available"
    else:
        why, status = None, "ok"
    if why:
        bench.log(f"tutorials side by side: {why}")
        return {"status": status, "why": why, "plan": asdict(plan) if plan else None}
    rows = [_row(bench, w, m, plan) for w in plan.workloads for m in chosen]
    bench.log(f"tutorials side by side: {len(rows)} rows x {plan.rounds} rounds, each side on CPUs "
              f"{sorted(split[0])} or {sorted(split[1])}, swapped every round")
    for r in range(plan.rounds):  # interleaved, as the main table: slow drift of the machine hits every row alike
        for row in rows:
            _round(row, r, split, bench, plan, budget)
    for row in rows:
        row.update(_summary(row["rounds"]))
    return {"status": status, "plan": asdict(plan), "cpus": [sorted(h) for h in split],
            "target": TARGETS["toolkit_over_tutorial"],
            "rows": [{k: v for k, v in r.items() if k not in ("worker", "_lead_s")} for r in rows]}


def _row(bench: Bench, wname: str, method: Method, plan: TutorialsPlan) -> dict:
    mode = bench.mode
    workload = mode.workloads[wname]
    devices = devices_for(method, bench.machine, bench.virtual_gpus, bench.gpu_memory_mb)
    steps = round(steps_for(workload, mode, workload.batch, workload.width, bench.machine["device_type"])
                  * plan.steps_scale)
    cfg = build_config(workload, method, devices, workload.batch, workload.width, steps, plan.epochs)
    worker = train_spec(("tutorials", wname, method.name, "toolkit", None), cfg, method, plan.rounds).worker
    return {"workload": wname, "method": method.name, "steps_per_epoch": steps, "epochs": plan.epochs,
            "worker": worker, "rounds": [], "_lead_s": {}}


def _round(row: dict, r: int, split, bench: Bench, plan: TutorialsPlan, budget: Budget) -> None:
    """Round r of a row: both sides at once, the toolkit on half r % 2 and the tutorial-style side on the other."""
    name = f"{row['workload']}_{row['method']}"
    key = f"tutorials_{name}"  # a round's wall, which the budget expects of the next round of this row
    if not budget.fits(key):
        row["rounds"].append({"round": r, "skipped": f"it would end past the {budget.part} budget of "
                                                      f"{budget.seconds:.0f} s"})
        bench.log(f"  skipped {name} round {r + 1}: time budget")
        return
    cpus = {"toolkit": split[r % 2], "tutorial": split[1 - r % 2]}
    # The side whose cluster reached its timed epochs sooner last round starts that much later: both train at once.
    lead = row["_lead_s"]
    delays = {side: max(lead.values()) - lead[side] if len(lead) == 2 else 0.0 for side in SIDES}
    env = _threads_env(row["worker"]["config"], len(cpus["toolkit"]))
    calls = [functools.partial(_after, delays[side], run_worker, {**copy.deepcopy(row["worker"]), "impl": side},
                               bench.out / "logs" / f"tutorials_{name}_{side}_{r}.log", plan.timeout_s, cpus[side], env)
             for side in SIDES]
    t = time.perf_counter()
    started = dict(zip(SIDES, concurrently(calls, len(calls))))
    record_wall(key, time.perf_counter() - t)
    results = {side: result for side, (_, result) in started.items()}
    entry = {"round": r, "delayed_s": delays,
             "cpus": {side: results[side].get("cpus") for side in SIDES}}  # as each side saw them
    failed = {side: result.get("error") for side, result in results.items() if not result.get("ok")}
    if failed:
        entry.update({side: {"error": error} for side, error in failed.items()})
        bench.log(f"  {name} round {r + 1}: FAILED: " + "; ".join(f"{side}: {e}" for side, e in failed.items()))
    else:
        lead.update({side: _timed_spans(result)[0][0] - started[side][0] for side, result in results.items()})
        entry.update(together(results["toolkit"], results["tutorial"]))
        if "ratio" in entry:
            bench.log(f"  {name} round {r + 1}: toolkit {entry['toolkit']:.0f}, tutorial-style {entry['tutorial']:.0f}"
                      f" examples/s over the {entry['epochs_together']} epochs they trained together, ratio "
                      f"{entry['ratio']:.3f}")
        else:
            bench.log(f"  {name} round {r + 1}: no timed epochs of both sides ran at the same time")
    row["rounds"].append(entry)


def _after(delay_s: float, call, *args):
    """(when it started, on the wall clock, call(*args)) after waiting delay_s."""
    time.sleep(delay_s)
    return time.time(), call(*args)


def together(a: dict, b: dict) -> dict:
    """Each side's examples/s over its timed epochs that ran while the other side trained too, and their ratio.

    The two sides' clusters take different times to start, so the one training first would spend its first
    epochs beside the other's start-up, and the other its last ones beside an idle half: where the halves share a
    physical core or a cache, the neighbour's load counts. The side that started sooner last round is started
    later (_round); an epoch counts where its middle lies between the later start and the earlier end of the two
    sides' timed epochs (the first, tracing, epoch left out). `ratio_all_epochs`: over all timed epochs."""
    results = dict(zip(SIDES, (a, b)))
    spans = {side: _timed_spans(r) for side, r in results.items()}
    lo = max(spans[side][0][0] for side in spans)
    hi = min(spans[side][-1][1] for side in spans)
    out: dict = {"epochs_together": {}}
    for side, result in results.items():
        kept = [end - start for start, end in spans[side] if lo <= (start + end) / 2 <= hi]
        out["epochs_together"][side] = len(kept)
        if kept:
            out[side] = result["steps_per_epoch"] * result["global_batch_size"] * len(kept) / sum(kept)
    if all(side in out for side in SIDES):
        out["ratio"] = out["toolkit"] / out["tutorial"]
    out["ratio_all_epochs"] = process_figures(a)["examples_per_sec"] / process_figures(b)["examples_per_sec"]
    out["epochs_together"] = min(out["epochs_together"].values())
    return out


def _timed_spans(result: dict) -> list[tuple[float, float]]:
    """(start, end) on the wall clock of each timed epoch (all but the first) of a result."""
    pairs = list(zip(result["epoch_ends_unix"], result["epoch_seconds"]))[1:]
    return [(end - seconds, end) for end, seconds in pairs]


def _threads_env(cfg: dict, cpus: int) -> dict[str, str]:
    """Both sides' inter-op threads on a half of fewer CPUs than a parameter-server worker needs (workers + 1, or
    its steps wait on each other for ever): the toolkit gives itself that many (cluster.servers), TensorFlow's
    tutorial code does not, so both get them from TF_NUM_INTEROP_THREADS, the same number."""
    cluster = cfg.get("cluster") or {}
    needed = cluster.get("workers", 0) + 1
    return {"TF_NUM_INTEROP_THREADS": str(needed)} if "ps" in cluster and cpus < needed else {}


def _summary(rounds: list[dict]) -> dict:
    ratios = [r["ratio"] for r in rounds if "ratio" in r]
    return {"toolkit_over_tutorial": stat(ratios),
            "median_interval": median_interval(ratios, INTERVAL_CONFIDENCE),
            "all_epochs": stat([r["ratio_all_epochs"] for r in rounds if "ratio_all_epochs" in r]),
            "rounds_at_or_above_target": sum(x >= TARGETS["toolkit_over_tutorial"] for x in ratios),
            "rounds_measured": len(ratios),
            "by_half": {side: statistics.median(xs) if (xs := [r["ratio"] for r in rounds if "ratio" in r
                                                             and r["round"] % 2 == h]) else None
                        for h, side in enumerate(("toolkit_on_first_half", "toolkit_on_second_half"))}}
