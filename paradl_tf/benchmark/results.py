"""results.json: the dict a run writes, assembled from the machine, the rows and ratios, curves and targets."""

from __future__ import annotations

import datetime
from typing import Any

from paradl_tf.benchmark.figures import TARGETS, best_strategies, ratios
from paradl_tf.benchmark.methods import BASELINE, METHOD_BY_NAME, METHODS
from paradl_tf.benchmark.modes import Mode
from paradl_tf.benchmark.parts import Bench
from paradl_tf.benchmark.parts.sections import section_ratios
from paradl_tf.benchmark.workloads import input_shape, model_cost


def assemble(bench: Bench, started: datetime.datetime, wall: float) -> dict[str, Any]:
    """The results dict that results.json holds (the run adds which parts ran and the files it wrote)."""
    mode, machine, rows = bench.mode, bench.machine, bench.rows
    best = best_strategies(rows, mode)
    peaks = bench.peaks
    return {
        "schema": 1,
        "created": started.isoformat(timespec="seconds"),
        "mode": mode.name,
        "repetitions": {"main": mode.reps, "sweeps": mode.sweep_reps, "epochs_per_process": mode.epochs,
                        "timed_epochs_per_process": mode.epochs - 1, "concurrent_processes": mode.jobs,
                        "note": mode.note},
        "machine": machine,
        "peak": peaks["float32"],
        "peaks": peaks,
        "workloads": _workload_table(mode),
        "methods": {m.name: {"title": m.title, "group": m.group, "devices": m.devices, "reference": m.reference,
                             "tutorial": m.tutorial, "todo": m.todo} for m in METHODS},
        "rows": rows + bench.missing,
        "ratios": ratios(rows),
        "best_strategy": best,
        "sweeps": _sweep_curves(rows, best, mode),
        "pipeline": _pipeline_curve(rows),
        "sections": [{"name": s.name, "title": s.title, "key": ".".join(s.key), "values": list(s.values),
                      "baseline": s.baseline, "workloads": list(s.workloads), "methods": list(s.methods)}
                     for s in mode.sections],
        "section_ratios": section_ratios(rows, mode, machine),
        "targets": {"toolkit_over_reference": TARGETS["toolkit_over_reference"],
                    "toolkit_over_tutorial": TARGETS["toolkit_over_tutorial"],
                    "vs_one_device": [{"method": m, "workload": w, "target": t}
                                      for (m, w), t in TARGETS["vs_one_device"].items()]},
        "wall_seconds": wall,
    }


def _workload_table(mode: Mode) -> dict[str, Any]:
    out = {}
    for name, w in mode.workloads.items():
        shape, classes = input_shape(w.data)
        cost = model_cost(w.widen(w.model, w.width), shape, classes)
        out[name] = {"title": w.title, "model": w.widen(w.model, w.width), "data": w.data,
                     "global_batch_size": w.batch, "input_shape": shape, "classes": classes, **cost,
                     "train_flops_per_example": 3 * cost["forward_flops"]}
    return out


def _sweep_curves(rows: list[dict], best: dict[str, str | None], mode: Mode) -> dict[str, list[dict]]:
    """Per sweep (batch, width): a point per (workload, method, x), the main table's point included."""
    curves: dict[str, list[dict]] = {"batch": [], "width": []}
    main = {(r["workload"], r["method"], r["impl"]): r for r in rows if r["section"] == "main" and r.get("impl")}
    for wname in mode.sweep_workloads:
        w = mode.workloads[wname]
        for method, impl in [(BASELINE, "reference"), (best.get(wname), "toolkit")]:
            if not method:
                continue
            for section, default in (("batch", w.batch), ("width", w.width)):
                points = [r for r in rows if r["section"] == section and r["workload"] == wname
                          and r["method"] == method and r["impl"] == impl]
                if (wname, method, impl) in main:
                    points.append({**main[(wname, method, impl)], "x": default})
                for p in sorted(points, key=lambda p: p["x"]):
                    curves[section].append({"workload": wname, "method": method, "impl": impl, "x": p["x"],
                                            "status": p["status"], "examples_per_sec": p.get("examples_per_sec"),
                                            "flops_per_example": p.get("train_flops_per_example")})
    return curves


def _pipeline_curve(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        method = METHOD_BY_NAME.get(r["method"])
        if r["section"] == "main" and method and method.curve and method.curve[0] == "pipeline":
            out.append({"workload": r["workload"], "method": r["method"], "microbatches": method.curve[1],
                        "status": r["status"], "examples_per_sec": r.get("examples_per_sec")})
    return sorted(out, key=lambda p: (p["workload"], p["microbatches"]))
