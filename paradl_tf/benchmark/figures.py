"""Statistics and ratios: min/median/max over timed epochs, a row per spec, paired ratios against their targets."""

from __future__ import annotations

import statistics
from typing import Any, Sequence

from paradl_tf.benchmark.methods import BASELINE, METHOD_BY_NAME
from paradl_tf.benchmark.modes import Mode
from paradl_tf.benchmark.report.main import PLAIN_TF_BEFORE
from paradl_tf.benchmark.specs import Spec


TARGETS = {
    "toolkit_over_reference": 0.98,
    "toolkit_over_tutorial": 1.0,  # issue 14: parameter servers and MultiWorkerMirrored against TF's tutorials
    "vs_one_device": {("mirrored_2", "cnn"): 0.9, ("mirrored_4", "cnn"): 0.9, ("mirrored_2", "mlp"): 0.6,
                      ("mirrored_4", "mlp"): 0.6, ("parameter_server", "cnn"): 0.8,
                      ("multi_worker_mirrored_2", "cnn"): 0.8},
}


def stat(values: Sequence[float]) -> dict[str, Any] | None:
    """min / median / max (and n, the samples) of the values; None when there are none."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values),
            "samples": values}


def median_interval(values: Sequence[float], confidence: float) -> dict[str, Any] | None:
    """A distribution-free confidence interval of the median: the k-th smallest and k-th largest value, k the
    largest with at least `confidence` that the true median lies between them (each value falls on either side of
    it with probability 1/2, so the count below it is binomial). What a handful of noisy rounds can tell apart
    from a target; None with too few values to reach `confidence` (5 for 0.9: 1 - 2/2**5 = 0.94)."""
    from scipy.stats import binom

    ordered = sorted(float(v) for v in values if v is not None)
    n = len(ordered)
    coverage = {k: 1 - 2 * binom.cdf(k - 1, n, 0.5) for k in range(1, n // 2 + 1)}
    reached = [k for k, c in coverage.items() if c >= confidence]
    if not reached:
        return None
    k = max(reached)
    return {"low": ordered[k - 1], "high": ordered[n - k], "coverage": float(coverage[k]), "n": n}


def process_figures(result: dict) -> dict[str, float]:
    """Steady-state throughput of one process: the timed epochs (all but the first)."""
    timed = result["epoch_seconds"][1:] or result["epoch_seconds"]
    steps, batch = result["steps_per_epoch"], result["global_batch_size"]
    return {"examples_per_sec": steps * batch * len(timed) / sum(timed), "step_seconds": sum(timed) / (steps * len(timed))}


def _samples(results: list[dict]) -> tuple[list[float], list[float], list[str], str]:
    """Throughput and step-time samples and their keys: one per timed epoch of every process (key:
    "<round>.<epoch>"), so that 3 processes x 3 timed epochs give 9 repetitions after warm-up while
    the interleaving still spreads them over the whole run."""
    ok = [(i, r) for i, r in enumerate(results) if r.get("ok")]
    if not ok:
        return [], [], [], "none"
    throughput, step, keys = [], [], []
    for i, r in ok:
        timed = r["epoch_seconds"][1:] or r["epoch_seconds"]
        steps, batch = r["steps_per_epoch"], r["global_batch_size"]
        throughput += [steps * batch / t for t in timed]
        step += [t / steps for t in timed]
        keys += [f"{i}.{e}" for e in range(len(timed))]
    over = "timed epochs of one process" if len(ok) == 1 else f"timed epochs of {len(ok)} processes"
    return throughput, step, keys, over


def summarize_train(spec: Spec, peak: float | None, flops_per_example: int) -> dict[str, Any]:
    section, workload, method, impl, x = spec.key
    ok = [r for r in spec.results if r.get("ok")]
    errors = sorted({r["error"] for r in spec.results if not r.get("ok")})
    row: dict[str, Any] = {"section": section, "workload": workload, "method": method, "impl": impl, "x": x,
                           "processes": len(spec.results), "processes_ok": len(ok)}
    if not ok:
        skipped = all(r.get("skipped") for r in spec.results)
        return {**row, "status": "skipped" if skipped else "failed", "why": "; ".join(errors)}
    throughput, step, keys, over = _samples(spec.results)
    train_flops = 3 * flops_per_example
    failed = [r for r in spec.results if not r.get("ok") and not r.get("skipped")]
    row.update(
        # Processes the time budget did not reach are not failures: say which it was.
        status="ok" if not errors else "partly failed" if failed else "partly skipped (time budget)",
        samples_over=over,
        sample_keys=keys,
        examples_per_sec=stat(throughput),
        step_seconds=stat(step),
        train_flops_per_example=train_flops,
        flops_per_sec=stat([t * train_flops for t in throughput]),
        fraction_of_peak=stat([t * train_flops / peak for t in throughput]) if peak else None,
        startup={k: stat([r.get(k) for r in ok]) for k in
                 ("process_start_seconds", "import_seconds", "build_seconds", "first_epoch_seconds",
                  "cluster_start_seconds", "process_wall_seconds")},
        peak_rss_bytes=stat([r["peak_rss_bytes"] for r in ok]),
        train_accuracy=stat([r.get("train_accuracy") for r in ok]),
        children_peak_rss_bytes=stat([r.get("children_peak_rss_bytes") for r in ok]),
        keras=ok[0].get("keras"),
        replicas=ok[0].get("replicas"),
        global_batch_size=ok[0]["global_batch_size"],
        steps_per_epoch=ok[0]["steps_per_epoch"],
        config=spec.worker["config"],
    )
    if errors:
        row["why"] = "; ".join(errors)
    if ok[0].get("parameter_bytes_per_device"):
        row["parameter_bytes_per_device"] = ok[0]["parameter_bytes_per_device"]
    if ok[0].get("all_reduce_bytes_per_device") is not None:
        row["all_reduce_bytes_per_device"] = ok[0]["all_reduce_bytes_per_device"]
    if ok[0].get("params") is not None:
        row["params_counted_by_keras"] = ok[0]["params"]
    return row


def paired_ratio(a: dict | None, b: dict | None) -> dict | None:
    """a / b sample by sample: process against process of the same round (or epoch against epoch of the same
    index when each side is one process), as min/median/max."""
    if not (a and b and a.get("examples_per_sec") and b.get("examples_per_sec")):
        return None
    xs = dict(zip(a.get("sample_keys") or range(a["examples_per_sec"]["n"]), a["examples_per_sec"]["samples"]))
    ys = dict(zip(b.get("sample_keys") or range(b["examples_per_sec"]["n"]), b["examples_per_sec"]["samples"]))
    if a.get("samples_over") != b.get("samples_over"):  # one side lost processes: compare medians only
        return stat([a["examples_per_sec"]["median"] / b["examples_per_sec"]["median"]])
    return stat([xs[k] / ys[k] for k in xs if k in ys])


def ratios(rows: list[dict]) -> list[dict]:
    """Per workload and method: toolkit / hand-written, toolkit / tutorial-style (None where there is none), and
    toolkit / one device (hand-written, no strategy)."""
    index = {(r["workload"], r["method"], r["impl"]): r for r in rows if r["section"] == "main" and r.get("impl")}
    out = []
    for (workload, method, impl), row in index.items():
        if impl != "toolkit":
            continue
        baseline = index.get((workload, BASELINE, "reference"))
        target = TARGETS["vs_one_device"].get((method, workload))
        out.append({
            "workload": workload, "method": method,
            "toolkit_over_reference": paired_ratio(row, index.get((workload, method, "reference"))),
            "toolkit_over_reference_target": TARGETS["toolkit_over_reference"],
            "toolkit_over_tutorial": paired_ratio(row, index.get((workload, method, "tutorial"))),
            "toolkit_over_tutorial_target": TARGETS["toolkit_over_tutorial"],
            "vs_one_device": paired_ratio(row, baseline),
            "vs_one_device_target": target,
            "plain_tf_before": PLAIN_TF_BEFORE.get((method, workload)),
        })
    return out


def best_strategy(rows: list[dict], workload: str) -> str | None:
    """The toolkit method other than the baselines with the highest median throughput on `workload`."""
    candidates = [r for r in rows if r["section"] == "main" and r["workload"] == workload and r["impl"] == "toolkit"
                  and METHOD_BY_NAME[r["method"]].group != "baseline" and r.get("examples_per_sec")]
    return max(candidates, key=lambda r: r["examples_per_sec"]["median"])["method"] if candidates else None


def best_strategies(rows: list[dict], mode: Mode) -> dict[str, str | None]:
    """best_strategy of each workload the mode sweeps: the sweeps' toolkit side."""
    return {w: best_strategy(rows, w) for w in mode.sweep_workloads}
