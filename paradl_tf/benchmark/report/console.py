"""The console table a run prints at its end: throughput and ratios per workload and method."""

from __future__ import annotations

from paradl_tf.benchmark.report.format import fmt, fmt_interval, index_of, method_order, mib, rows_of


def console_table(results: dict) -> str:
    index, ratio = index_of(results), {(r["workload"], r["method"]): r for r in results["ratios"]}
    lines = [f"{'workload':10} {'method':26} {'toolkit ex/s':>24} {'hand-written ex/s':>24} {'tk/hw':>7} "
             f"{'vs 1dev':>7} {'%peak':>6}"]
    for wname in results["workloads"]:
        for method in method_order(results):
            tk, hw = index.get((wname, method, "toolkit")), index.get((wname, method, "reference"))
            tut = index.get((wname, method, "tutorial"))
            missing = next((r for r in rows_of(results) if r["workload"] == wname and r["method"] == method
                            and r.get("impl") is None), None)
            if missing and missing["status"] == "skipped":
                continue
            if missing:
                lines.append(f"{wname:10} {method:26} {missing['status']}: {missing['why'][:90]}")
                continue
            if not tk and not hw:
                continue
            r = ratio.get((wname, method), {})
            tk_text = fmt(tk.get("examples_per_sec")) if tk and tk.get("examples_per_sec") else (tk or {}).get("status", "-")
            hw_text = fmt(hw.get("examples_per_sec")) if hw and hw.get("examples_per_sec") else (hw or {}).get("status", "n/a")
            lines.append(f"{wname:10} {method:26} {tk_text:>24} {hw_text:>24} "
                         f"{_short(r.get('toolkit_over_reference')):>7} {_short(r.get('vs_one_device')):>7} "
                         f"{fmt((tk or {}).get('fraction_of_peak'), 100, 1, spread=False):>6}")
            if tut:  # TensorFlow's tutorial-style code: its figure under hand-written, toolkit / it under tk/hw
                tut_text = fmt(tut.get("examples_per_sec")) if tut.get("examples_per_sec") else tut["status"]
                lines.append(f"{'':10} {'  vs tutorial-style':26} {'':>24} {tut_text:>24} "
                             f"{_short(r.get('toolkit_over_tutorial')):>7}")
            for row in (tk, hw, tut):
                if row and row["status"] != "ok":
                    lines.append(f"{'':37} {row['impl']} {row['status']}: {row.get('why', '')[:110]}")
    skipped = [f"{r['workload']}/{r['method']}" for r in rows_of(results) if r.get("impl") is None
               and r["status"] == "skipped"]
    if skipped:
        lines.append(f"not run in {results['mode']} mode: {', '.join(skipped)}")
    tutorials = results.get("tutorials") or {}
    for row in tutorials.get("rows", []):  # the tutorials part: both sides at once, each on its own half of the CPUs
        interval = row.get("median_interval")
        within = f", median within {fmt_interval(interval)}" if interval else ""
        lines.append(f"side by side {row['workload']:6} {row['method']:26} tk/tut {_short(row['toolkit_over_tutorial'])}"
                     f" ({row['rounds_at_or_above_target']} of {row['rounds_measured']} rounds >= target{within})")
    for q in results.get("section_ratios", []):
        extra = f" ({q['of_ceiling'] * 100:.0f}% of the {q['ceiling']:.1f}x ceiling)" if q.get("of_ceiling") else ""
        lines.append(f"{q['section']:10} {q['workload']:10} {q['method']:18} {q['x']!s:>15} / {q['baseline']!s:<8} "
                     f"{_short(q['over_baseline'])}{extra}")
    data = results.get("data")
    for q in (data or {}).get("input", []):
        if q["status"] == "ok":
            lines.append(f"data input {q['workload']:6} memory {fmt(q['memory'], spread=False):>10} files "
                         f"{fmt(q['files'], spread=False):>10} examples/s, files/memory {_short(q['files_over_memory'])}")
    for t in (data or {}).get("train", []):
        lines.append(f"data train {t['workload']:6} files/memory {_short(t['files_over_memory'])} "
                     f"(target {t['target']})")
    if data and data["memory"].get("difference_bytes") is not None:
        m = data["memory"]
        lines.append(f"data memory: peak RSS big - small shards {mib(m['difference_bytes'])} (same buffer: "
                     f"{mib(m.get('difference_same_buffer_bytes'))}; target < {mib(m['target_bytes'])})")
    peaks = results.get("peaks") or {"float32": results["peak"]}
    lines.append("matmul peak: " + ", ".join(f"{d} {fmt(p and p['flops_per_sec'], 1e-9, 1)}" for d, p in peaks.items())
                 + f" GFLOP/s; {results['repetitions']['note']}")
    return "\n".join(lines)


def _short(s: dict | None) -> str:
    return f"{s['median']:.2f}" if s else "n/a"
