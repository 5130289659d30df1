"""The sections' tables in RESULTS.md: precision and threads, each row against its baseline value."""

from __future__ import annotations

from paradl_tf.benchmark.report.format import fmt, fmt_ratio


def _section_rows(results: dict, name: str) -> list[dict]:
    return [r for r in results["rows"] if r["section"] == name]


def _section_ratio(results: dict, name: str, row: dict) -> dict | None:
    return next((q for q in results.get("section_ratios", []) if q["section"] == name and
                 (q["workload"], q["method"], q["x"]) == (row["workload"], row["method"], row["x"])), None)


def precision_table(results: dict) -> str:
    rows = _section_rows(results, "precision")
    if not rows:
        return ""
    out = ["## Precision (toolkit, examples/s: median (min-max))", "",
           "`train.precision` on the same workload and method, the values interleaved round by round. `vs float32` "
           "= this precision / float32, paired by round; `% own peak` = achieved training FLOP/s over the matmul "
           "peak of the dtype the row computes in (float32 rows: the float32 peak; mixed_bfloat16: the bfloat16 "
           "peak), both measured in this run; `train acc` = training accuracy of the last epoch (same data, seed "
           "and steps).", "",
           "| workload | method | precision | keras | examples/s | vs float32 | % own peak | train acc | status |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = _section_ratio(results, "precision", r)
        acc = r.get("train_accuracy")
        why = f"{r['status']}: {r['why']}" if r.get("why") else r["status"]
        out.append(f"| {r['workload']} | {r['method']} | {r['x']} | {r.get('keras') or '-'} "
                   f"| {fmt(r.get('examples_per_sec'))} | {fmt_ratio(ratio and ratio['over_baseline'])} "
                   f"| {fmt(r.get('fraction_of_peak'), 100, 1, spread=False)} "
                   f"| {fmt(acc, digits=3, spread=False)} | {why.replace('|', '/')} |")
    return "\n".join(out)


def threads_table(results: dict) -> str:
    rows = _section_rows(results, "threads")
    if not rows:
        return ""
    m = results["machine"]
    out = ["## Threads (toolkit, one device, examples/s: median (min-max))", "",
           f"`devices.threads.intra_op` (threads inside one op), interleaved round by round. `vs 1 thread` = this / "
           f"1 thread, paired by round; `ceiling` = the speed-up the physical cores allow "
           f"({m.get('cpu_cores_physical')} here); `of ceiling` = how much of it the speed-up reaches.", "",
           "| workload | intra_op | examples/s | vs 1 thread | ceiling | of ceiling | status |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = _section_ratio(results, "threads", r) or {}
        why = f"{r['status']}: {r['why']}" if r.get("why") else r["status"]
        ceiling = f"{ratio['ceiling']:.2f}x" if ratio.get("ceiling") else ""
        of = f"{ratio['of_ceiling'] * 100:.0f}%" if ratio.get("of_ceiling") else ""
        out.append(f"| {r['workload']} | {r['x']} | {fmt(r.get('examples_per_sec'))} "
                   f"| {fmt_ratio(ratio.get('over_baseline')) if ratio else ''} | {ceiling} | {of} "
                   f"| {why.replace('|', '/')} |")
    return "\n".join(out)
