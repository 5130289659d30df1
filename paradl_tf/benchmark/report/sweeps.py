"""The sweeps' tables in RESULTS.md: throughput against global batch size and model width."""

from __future__ import annotations

from paradl_tf.benchmark.report.format import fmt


def sweep_tables(results: dict) -> str:
    out = []
    for section, label in (("batch", "global batch size"), ("width", "model width")):
        points = results["sweeps"][section]
        if not points:
            continue
        out += [f"## Scaling with {label} (examples/s)", "",
                f"one device = hand-written, no strategy; best = the toolkit method with the highest median on the "
                f"main table ({', '.join(f'{w}: {m}' for w, m in results['best_strategy'].items())}).", "",
                f"| workload | method | {label} | examples/s | train MFLOP/example | status |", "|---|---|---|---|---|---|"]
        for p in points:
            flops = p.get("flops_per_example")
            out.append(f"| {p['workload']} | {p['method']} ({p['impl']}) | {p['x']} | {fmt(p['examples_per_sec'])} "
                       f"| {flops / 1e6:,.3f} | {p['status']} |" if flops else
                       f"| {p['workload']} | {p['method']} ({p['impl']}) | {p['x']} | - | - | {p['status']} |")
        out.append("")
    return "\n".join(out).rstrip()
