"""RESULTS.md: the header with the machine, the tables in order, the hand-kept before/after record; and
write_all, which writes RESULTS.md and the plots."""

from __future__ import annotations

from pathlib import Path

from paradl_tf.benchmark.parts import PARTS
from paradl_tf.benchmark.report.data import data_tables
from paradl_tf.benchmark.report.format import fmt
from paradl_tf.benchmark.report.main import (model_parallel_table, pipeline_table, startup_table, throughput_tables,
                                             tutorial_table, tutorials_side_by_side_table)
from paradl_tf.benchmark.report.network import network_tables
from paradl_tf.benchmark.report.plots import write_plots
from paradl_tf.benchmark.report.sections import precision_table, threads_table
from paradl_tf.benchmark.report.sweeps import sweep_tables


BEFORE_AFTER = "BEFORE_AFTER.md"
"""Hand-kept record, in the output folder, of fixes the figures led to and what each changed (A/B runs):
RESULTS.md ends with it, so a rerun of the benchmark keeps the history."""


def markdown(results: dict, plots: list[str] = (), before_after: str = "") -> str:
    images = "\n".join(f"![{name.removesuffix('.png')}]({name})" for name in plots)
    parts = [_header(results), throughput_tables(results), tutorial_table(results),
             tutorials_side_by_side_table(results), images,
             precision_table(results), threads_table(results),
             startup_table(results), model_parallel_table(results), pipeline_table(results), sweep_tables(results),
             network_tables(results), data_tables(results),
             _reading(results), before_after.strip()]
    return "\n\n".join(p for p in parts if p) + "\n"


def _header(results: dict) -> str:
    m, peak = results["machine"], results["peak"]
    reps = results["repetitions"]
    lines = [
        "# paradl_tf benchmark results",
        "",
        f"Mode: **{results['mode']}**, {results['created']}, {results['wall_seconds']:.0f} s."
        + (f" {reps['note']}." if _repeated(results) else ""),
        *(["", f"Parts measured in this run: {', '.join(results['parts'])} (`paradl-tf bench --parts`); the others "
                "were not run."] if results.get("parts") and len(results["parts"]) < len(PARTS) else []),
        *(["", f"Main-table methods measured in this run: {', '.join(results['methods_selected'])} "
                "(`paradl-tf bench --methods`)."] if results.get("methods_selected") else []),
        "",
        "| machine | |",
        "|---|---|",
        f"| device kind | {m['device_kind']} ({m['device_type']}) |",
        f"| cores | {m['cpu_cores_logical']} logical, {m['cpu_cores_physical']} physical, {m['cpus_usable']} usable |",
        f"| memory | {m['memory_bytes'] / (1 << 30):.1f} GiB |",
        f"| TensorFlow / Keras / tf_keras | {m['tensorflow_version']} / {m['keras_version']} / {m['tf_keras_version']} |",
        f"| multi-device layout | {m['multi_device_layout']} |",
        f"| load average at start | {', '.join(f'{x:.2f}' for x in m['load_average_at_start'] or [])} |",
    ]
    # Results from before the precision section hold the float32 peak alone.
    for dtype, p in (results.get("peaks") or {"float32": peak}).items():
        lines.append(f"| {dtype} matmul peak | {fmt(p and p['flops_per_sec'], 1e-9, 1)} GFLOP/s"
                     + (f" (n={p['matmul_size']}, {p['device']}, over {p['samples_over']})" if p else "") + " |")
    if "native_float16" in m and "float16" not in (results.get("peaks") or {}):
        lines.append(f"| float16 matmul peak | not measured: no native float16 on this {m['device_type']} |")
    return "\n".join(lines)


def _repeated(results: dict) -> bool:
    """Whether a part that the mode's processes-per-figure note describes ran (the network part has its own)."""
    return not results.get("parts") or bool({"main", "sections", "sweeps"} & set(results["parts"]))


def _reading(results: dict) -> str:
    if results["machine"]["device_type"] != "CPU":
        return ""
    return ("## Reading these figures on a CPU\n\n"
            "The logical CPUs of one machine share the same cores and the same thread pools, so no strategy can "
            "beat one device here: the multi-device figures measure how little each method loses (synchronisation, "
            "all-reduce, per-replica overhead), not speed-up. The toolkit-over-hand-written ratio is the toolkit's "
            "own overhead and should be ~1.00 whatever the machine.")


def write_all(results: dict, out: Path) -> list[str]:
    """RESULTS.md and the plots into `out`; returns the file names written."""
    plots = write_plots(results, out)
    record = out / BEFORE_AFTER
    (out / "RESULTS.md").write_text(markdown(results, plots, record.read_text() if record.exists() else ""))
    return ["RESULTS.md", *plots]
