"""The benchmark's report: RESULTS.md (tables with ratios), the console table, and PNG plots (matplotlib, Agg).

Everything here reads the results dict that paradl_tf.benchmark.runner.run_bench builds (and writes as results.json),
so a report can be redrawn from a saved run:

    python -m paradl_tf.benchmark.report bench/results.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

# Measured with plain TensorFlow on a 2-core CPU before any toolkit code (issue 7): the figures to beat.
PLAIN_TF_BEFORE = {("mirrored_4", "mlp"): "0.33x", ("mirrored_4", "cnn"): "1.00x",
                   ("multi_worker_mirrored_2", "mlp"): "0.12x", ("multi_worker_mirrored_2", "cnn"): "0.63x",
                   ("parameter_server", "mlp"): "0.18-0.38x", ("parameter_server", "cnn"): "0.74-0.85x"}


MIB = 1 << 20


# ================================================================ formatting
def fmt(s: dict | None, scale: float = 1.0, digits: int = 0, spread: bool = True) -> str:
    """'median (min-max)' of a figure, scaled; '-' when there is none."""
    if not s:
        return "-"
    m = f"{s['median'] * scale:,.{digits}f}"
    if not spread or s["n"] < 2:
        return m
    return f"{m} ({s['min'] * scale:,.{digits}f}-{s['max'] * scale:,.{digits}f})"


def fmt_ratio(s: dict | None, target: float | None = None) -> str:
    if not s:
        return "n/a"
    text = f"{s['median']:.2f}x" + (f" ({s['min']:.2f}-{s['max']:.2f})" if s["n"] >= 2 else "")
    if target is not None:
        text += " ok" if s["median"] >= target else " BELOW"
    return text


def _rows(results: dict, section: str = "main") -> list[dict]:
    return [r for r in results["rows"] if r["section"] == section]


def _index(results: dict) -> dict[tuple, dict]:
    return {(r["workload"], r["method"], r["impl"]): r for r in _rows(results)}


def _method_order(results: dict) -> list[str]:
    return list(results["methods"])


# ================================================================ RESULTS.md
BEFORE_AFTER = "BEFORE_AFTER.md"
"""Hand-kept record, in the output folder, of fixes the figures led to and what each changed (A/B runs):
RESULTS.md ends with it, so a rerun of the benchmark keeps the history."""


def markdown(results: dict, plots: list[str] = (), before_after: str = "") -> str:
    images = "\n".join(f"![{name.removesuffix('.png')}]({name})" for name in plots)
    parts = [_header(results), _throughput_tables(results), _tutorial_table(results), images,
             _precision_table(results), _threads_table(results),
             _startup_table(results), _model_parallel_table(results), _pipeline_table(results), _sweep_tables(results),
             _data_tables(results),
             _reading(results), before_after.strip()]
    return "\n\n".join(p for p in parts if p) + "\n"


def _header(results: dict) -> str:
    m, peak = results["machine"], results["peak"]
    reps = results["repetitions"]
    lines = [
        "# paradl_tf benchmark results",
        "",
        f"Mode: **{results['mode']}**, {results['created']}, {results['wall_seconds']:.0f} s. {reps['note']}.",
        *(["", f"Parts measured in this run: {', '.join(results['parts'])} (`paradl-tf bench --parts`); the others "
                "were not run."] if results.get("parts") and len(results["parts"]) < 4 else []),
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


def _throughput_tables(results: dict) -> str:
    if "main" not in results.get("parts", ["main"]):
        return ""
    index, ratio = _index(results), {(r["workload"], r["method"]): r for r in results["ratios"]}
    out = ["## Throughput, steady state (examples/s: median (min-max))",
           "",
           "toolkit = `paradl_tf.prepare(cfg)` then the `model.fit` call of `paradl_tf.train` without validation "
           "(parameter servers, MultiWorkerMirrored: `paradl_tf.train`, which starts the local cluster; only the "
           "training part of each epoch is timed); hand-written = "
           "`paradl_tf/benchmark/reference.py` (plain tf.distribute + Keras: same data, model, optimizer and Keras, with "
           "the input pipeline a user writes: shuffle, batch, prefetch). Steady state: the first epoch of each process (tracing) is not timed. `tk/hw` = toolkit / "
           f"hand-written (target >= {results['targets']['toolkit_over_reference']}); `vs 1 dev` = toolkit / "
           "hand-written one device with no strategy; `plain TF before` = the issue's figures measured with plain "
           "TensorFlow on a 2-core CPU before any toolkit code; `% peak` = achieved training FLOP/s (3 x forward "
           "FLOPs per example x examples/s) over the float32 matmul peak. Ratios are taken round by round (each "
           "timed epoch against the same epoch of the process run in the same round), then min/median/max."]
    skipped = [r for r in _rows(results) if r.get("impl") is None and r["status"] == "skipped"]
    if skipped:
        names = ", ".join(f"{r['workload']}/{r['method']}" for r in skipped)
        out += ["", f"Not run in {results['mode']} mode: {names}."]
    for wname, w in results["workloads"].items():
        if not any(tk or hw for _, tk, hw, _ in _plotted_methods(results, wname)):
            continue
        out += ["", f"### {w['title']}", "",
                f"{w['params']:,} parameters, {w['forward_flops'] / 1e6:,.2f} MFLOP forward per example, "
                f"global batch {w['global_batch_size']}.", "",
                "| method | keras | toolkit examples/s | step ms | hand-written examples/s | tk/hw | vs 1 dev "
                "| target vs 1 dev | plain TF before | % peak |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for method in _method_order(results):
            tk, hw = index.get((wname, method, "toolkit")), index.get((wname, method, "reference"))
            missing = next((r for r in _rows(results) if r["workload"] == wname and r["method"] == method
                            and r.get("impl") is None), None)
            title = results["methods"][method]["title"]
            if missing and missing["status"] == "skipped":
                continue
            if missing:
                target = results_target(results, wname, method)
                out.append(f"| {title} | | {missing['status']}: {missing['why']} | | | | | "
                           f"{f'>= {target}x' if target else ''} | {_plain_tf(wname, method)} | |")
                continue
            if not tk and not hw:
                continue
            r = ratio.get((wname, method), {})
            tk_text = _figure_or_status(tk)
            hw_text = _figure_or_status(hw) if hw else "no reference yet"
            target = r.get("vs_one_device_target")
            out.append(
                f"| {title} | {(tk or hw).get('keras') or '-'} | {tk_text} "
                f"| {fmt((tk or {}).get('step_seconds'), 1e3, 2, spread=False)} | {hw_text} "
                f"| {fmt_ratio(r.get('toolkit_over_reference'), r.get('toolkit_over_reference_target'))} "
                f"| {fmt_ratio(r.get('vs_one_device'), target)} | {f'>= {target}x' if target else ''} "
                f"| {r.get('plain_tf_before') or ''} | {fmt((tk or {}).get('fraction_of_peak'), 100, 1, spread=False)} |")
    return "\n".join(out)


TUTORIAL_NOTE = (
    "tutorial-style = the same workload (data, model, loss, global batch, steps, epochs, optimizer kind and learning "
    "rate, steps per execution, Keras) written as TensorFlow's own tutorials write it (`TUTORIALS` in "
    "`paradl_tf/benchmark/reference.py`), on the same local cluster: parameter servers as "
    "tensorflow.org/tutorials/distribute/parameter_server_training (\"Training with Model.fit\": a `DatasetCreator` "
    "whose `dataset_fn` shuffles, repeats, shards, then batches without drop_remainder and `prefetch(2)`; the legacy "
    "tf_keras optimizer the tutorial advises), MultiWorkerMirrored as "
    "tensorflow.org/tutorials/distribute/multi_worker_with_keras (`shuffle().repeat().batch()`: no prefetch, the "
    "AUTO auto-shard policy). The hand-written side batches (drop_remainder) before it repeats, prefetches "
    "AUTOTUNE, sets the DATA auto-shard policy and uses the new optimizers.")


def _tutorial_table(results: dict) -> str:
    """Toolkit against TensorFlow's tutorial-style code, for the methods that have it (issue 14); nothing when no
    tutorial-style row was measured (tiny mode skips the local clusters)."""
    index, ratio = _index(results), {(r["workload"], r["method"]): r for r in results["ratios"]}
    target = results["targets"].get("toolkit_over_tutorial")
    rows = [(wname, method) for wname in results["workloads"] for method in _method_order(results)
            if (wname, method, "tutorial") in index]
    if not rows:
        return ""
    out = ["## Against TensorFlow's tutorials (examples/s: median (min-max))", "", TUTORIAL_NOTE
           + f" `tk/tut` = toolkit / tutorial-style, round by round (target >= {target}).", "",
           "| workload | method | keras | toolkit examples/s | tutorial-style examples/s | tk/tut |",
           "|---|---|---|---|---|---|"]
    for wname, method in rows:
        tk, tut = index.get((wname, method, "toolkit")), index[(wname, method, "tutorial")]
        r = ratio.get((wname, method), {})
        out.append(f"| {wname} | {results['methods'][method]['title']} | {tut.get('keras') or '-'} "
                   f"| {_figure_or_status(tk)} | {_figure_or_status(tut)} "
                   f"| {fmt_ratio(r.get('toolkit_over_tutorial'), target)} |")
    return "\n".join(out)


def _figure_or_status(row: dict | None) -> str:
    return fmt(row["examples_per_sec"]) if row and row.get("examples_per_sec") else _status(row)


def results_target(results: dict, workload: str, method: str) -> float | None:
    return next((t["target"] for t in results["targets"]["vs_one_device"]
                 if t["workload"] == workload and t["method"] == method), None)


def _plain_tf(workload: str, method: str) -> str:

    return PLAIN_TF_BEFORE.get((method, workload), "")


def _status(row: dict | None) -> str:
    if not row:
        return "-"
    return f"{row['status']}: {row.get('why', '')}".replace("|", "/")


def _section_rows(results: dict, name: str) -> list[dict]:
    return [r for r in results["rows"] if r["section"] == name]


def _section_ratio(results: dict, name: str, row: dict) -> dict | None:
    return next((q for q in results.get("section_ratios", []) if q["section"] == name and
                 (q["workload"], q["method"], q["x"]) == (row["workload"], row["method"], row["x"])), None)


def _precision_table(results: dict) -> str:
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


def _threads_table(results: dict) -> str:
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


def _startup_table(results: dict) -> str:
    if not any(r.get("startup") for r in _rows(results)):
        return ""
    out = ["## Start-up cost and memory (seconds, median over processes)", "",
           "process = interpreter start; import = TensorFlow + Keras; build = strategy, data, model, compile "
           "(toolkit: `wall_seconds - fit_seconds` of its results); first epoch = tracing + one epoch; cluster = "
           "local cluster start before the chief's clock (driver process, tasks up and reachable); wall = the "
           "whole process, teardown included. RSS = peak resident memory of the measuring process (children: "
           "the largest process it waited for, e.g. the cluster driver). impl: toolkit, reference (hand-written) or "
           "tutorial (tutorial-style).", "",
           "| workload | method | impl | process | import | build | first epoch | cluster | wall | peak RSS MiB "
           "| children RSS MiB |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in _rows(results):
        if not r.get("startup"):
            continue
        s = r["startup"]
        cells = [fmt(s.get(k), digits=2, spread=False) for k in
                 ("process_start_seconds", "import_seconds", "build_seconds", "first_epoch_seconds",
                  "cluster_start_seconds", "process_wall_seconds")]
        out.append(f"| {r['workload']} | {r['method']} | {r['impl']} | " + " | ".join(cells)
                   + f" | {fmt(r['peak_rss_bytes'], 1 / MIB, spread=False)} "
                   f"| {fmt(r['children_peak_rss_bytes'], 1 / MIB, spread=False)} |")
    return "\n".join(out)


def _model_parallel_table(results: dict) -> str:
    rows = [r for r in _rows(results) if r.get("parameter_bytes_per_device")]
    if not rows:
        return ""
    out = ["## Model parallel: parameter bytes per device", "",
           "| workload | method | impl | bytes per device |", "|---|---|---|---|"]
    for r in rows:
        per = ", ".join(f"{d.rsplit('/', 1)[-1]}: {b:,}" for d, b in r["parameter_bytes_per_device"].items())
        out.append(f"| {r['workload']} | {r['method']} | {r['impl']} | {per} |")
    reduced = [r for r in _rows(results) if r.get("all_reduce_bytes_per_device") is not None]
    if reduced:
        out += ["", "## All-reduce: gradient bytes per device per step (hybrid: its stage's; Mirrored: the whole model's)",
                "", "| workload | method | bytes per device per step |", "|---|---|---|"]
        out += [f"| {r['workload']} | {r['method']} | {r['all_reduce_bytes_per_device']:,} |" for r in reduced]
    return "\n".join(out)


def _pipeline_table(results: dict) -> str:
    points = results["pipeline"]
    if not points:
        return ""
    out = ["## Pipeline: micro-batches (2 stages; 1 = model parallel without pipelining)", "",
           "| workload | micro-batches | examples/s | status |", "|---|---|---|---|"]
    for p in points:
        out.append(f"| {p['workload']} | {p['microbatches']} | {fmt(p['examples_per_sec'])} | {p['status']} |")
    return "\n".join(out)


def _sweep_tables(results: dict) -> str:
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


def _data_tables(results: dict) -> str:
    """The data section (issue 13): TFRecord shards against the same examples in memory."""
    data = results.get("data")
    if not data:
        return ""
    mode = results["mode"]
    out = [f"## Data from files: TFRecord shards against memory ({mode} mode)", "",
           *([f"**{data['note']}**", ""] if data.get("note") else []),
           "The same examples written as TFRecord shards (`paradl_tf.files.write`, into a temporary folder removed "
           "at the end) and read by `data.kind: tfrecord` with its defaults (shuffle_buffer 10000, cycle_length 4), "
           "against the in-memory source; one device, no strategy. Ratios are files / memory, round by round.", "",
           "### Input pipeline alone (examples/s of `Datasets.train_stream`, no model; both in one process, "
           "interleaved)", "",
           "| workload | batch | in memory | from files | files / memory | reading |", "|---|---|---|---|---|---|"]
    train = {t["workload"]: t for t in data["train"]}
    for q in data["input"]:
        title = results["workloads"].get(q["workload"], {}).get("title", q["workload"])
        if q["status"] != "ok":
            out.append(f"| {title} | | {q['status']}: {q.get('why') or ''} | | | |")
            continue
        t = train.get(q["workload"]) or {}
        step = t.get("memory") and q["files"]["median"] / t["memory"]["median"]
        reading = (f"files feed {step:.0f}x what training on memory consumes: the model is the bottleneck"
                   if step and step >= 2 else f"files feed only {step:.1f}x what training on memory consumes, on "
                   "the same cores: the input is a large part of each step's cost"
                   if step else "")
        out.append(f"| {title} | {q['global_batch_size']} | {fmt(q['memory'])} | {fmt(q['files'])} | "
                   f"{fmt_ratio(q['files_over_memory'])} | {reading} |")
    out += ["", "### Training from files against in memory (examples/s; same model, batch and steps; processes "
            "interleaved)", "", "| workload | in memory | from files | files / memory | reading |",
            "|---|---|---|---|---|"]
    for t in data["train"]:
        title = results["workloads"].get(t["workload"], {}).get("title", t["workload"])
        r = t["files_over_memory"]
        reading = "" if not r else (f"files at {r['median']:.2f} of memory, target {t['target']}: met" if
                                    r["median"] >= t["target"] else f"files at {r['median']:.2f} of memory: "
                                    f"below the {t['target']} target")
        out.append(f"| {title} | {fmt(t['memory'])} | {fmt(t['files'])} | {fmt_ratio(r, t['target'])} | "
                   f"{reading} |")
    m = data["memory"]
    shape = "x".join(str(d) for d in m["image_shape"])
    out += ["", f"### Memory: peak RSS of a training process over big against small shards ({shape} float32 "
            f"images, model {m['model']}, batch {m['global_batch_size']}, {m['steps']} steps: one pass over the big "
            "set; one process each)", "",
            "| shards | examples | on disk | shuffle_buffer | peak RSS | over the small shards |",
            "|---|---|---|---|---|---|"]
    for name, label in (("small", "small"), ("big", "big"), ("big_small_buffer", "big, small set's buffer")):
        row = m.get(name)
        if not row:
            continue
        diff = "" if name == "small" else _mib(m["difference_bytes"] if name == "big" else
                                               m.get("difference_same_buffer_bytes"))
        buffer = "10,000 (default)" if row["shuffle_buffer"] == "default" else f"{row['shuffle_buffer']:,}"
        out.append(f"| {label} | {row['examples']:,} | {_mib(row['bytes'])} | {buffer} | "
                   f"{_mib(row['peak_rss_bytes'] and row['peak_rss_bytes']['median'])} | {diff} |")
    target = m["target_bytes"]
    same = m.get("difference_same_buffer_bytes")
    if m["difference_bytes"] is not None:
        verdict = "under" if m["difference_bytes"] < target else "over"
        out += ["", f"Reading: big - small = {_mib(m['difference_bytes'])}, {verdict} the {_mib(target)} target"
                + (f"; with the same shuffle buffer, {_mib(same)}: memory follows the shuffle buffer (records it "
                   f"holds x record size), not the data's size (streaming). The small set's row passes over its "
                   f"files many times (a new pipeline each pass), which costs memory of its own"
                   if same is not None else "")
                + "."]
    out += ["", "### tf.data service", "", *_service_lines(data.get("service") or {})]
    return "\n".join(out)


def _service_lines(row: dict) -> list[str]:
    """The service row: in-process input against a local service on an input-bound pipeline, and the estimate
    for data workers on other hosts."""
    if row.get("status") != "ok":
        return [f"{row.get('status', 'not measured')}: {row.get('why', '')}"]
    return [f"Pipeline: {row['pipeline']}.", "",
            "| input | examples/s |", "|---|---|",
            f"| in this process | {row['in_process_examples_per_sec']:,.0f} |",
            f"| local tf.data service, {row['data_workers']} data workers | {row['service_examples_per_sec']:,.0f} |",
            f"| through the service without the heavy map (what one consumer can receive) | "
            f"{row['service_light_examples_per_sec']:,.0f} |",
            f"| estimate: the data workers on other hosts | {row['remote_estimate_examples_per_sec']:,.0f} |", "",
            f"Reading: the local service gives {row['service_over_in_process']:.2f} of in-process input (median of "
            f"rounds; its data workers share this machine's cores with the consumer, so it cannot win here). "
            f"On other hosts each data worker brings its own cores: about "
            f"{row['remote_estimate_examples_per_sec'] / row['in_process_examples_per_sec']:.1f}x in-process "
            f"(an estimate: min(data workers x in-process rate, the receive rate))."]


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MIB:,.0f} MiB"


def _reading(results: dict) -> str:
    if results["machine"]["device_type"] != "CPU":
        return ""
    return ("## Reading these figures on a CPU\n\n"
            "The logical CPUs of one machine share the same cores and the same thread pools, so no strategy can "
            "beat one device here: the multi-device figures measure how little each method loses (synchronisation, "
            "all-reduce, per-replica overhead), not speed-up. The toolkit-over-hand-written ratio is the toolkit's "
            "own overhead and should be ~1.00 whatever the machine.")


# ================================================================ console
def console_table(results: dict) -> str:
    index, ratio = _index(results), {(r["workload"], r["method"]): r for r in results["ratios"]}
    lines = [f"{'workload':10} {'method':26} {'toolkit ex/s':>24} {'hand-written ex/s':>24} {'tk/hw':>7} "
             f"{'vs 1dev':>7} {'%peak':>6}"]
    for wname in results["workloads"]:
        for method in _method_order(results):
            tk, hw = index.get((wname, method, "toolkit")), index.get((wname, method, "reference"))
            tut = index.get((wname, method, "tutorial"))
            missing = next((r for r in _rows(results) if r["workload"] == wname and r["method"] == method
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
    skipped = [f"{r['workload']}/{r['method']}" for r in _rows(results) if r.get("impl") is None
               and r["status"] == "skipped"]
    if skipped:
        lines.append(f"not run in {results['mode']} mode: {', '.join(skipped)}")
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
        lines.append(f"data memory: peak RSS big - small shards {_mib(m['difference_bytes'])} (same buffer: "
                     f"{_mib(m.get('difference_same_buffer_bytes'))}; target < {_mib(m['target_bytes'])})")
    peaks = results.get("peaks") or {"float32": results["peak"]}
    lines.append("matmul peak: " + ", ".join(f"{d} {fmt(p and p['flops_per_sec'], 1e-9, 1)}" for d, p in peaks.items())
                 + f" GFLOP/s; {results['repetitions']['note']}")
    return "\n".join(lines)


def _short(s: dict | None) -> str:
    return f"{s['median']:.2f}" if s else "n/a"


# ================================================================ plots
def write_plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for name, draw in (("throughput_per_method.png", _plot_methods), ("scaling_batch.png", _plot_sweep("batch")),
                       ("scaling_width.png", _plot_sweep("width")), ("pipeline_microbatches.png", _plot_pipeline)):
        fig = draw(results, plt)
        if fig is None:
            continue
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        files.append(name)
    return files


def _errorbar(s: dict | None) -> tuple[float, list[float]]:
    if not s:
        return 0.0, [0.0, 0.0]
    return s["median"], [s["median"] - s["min"], s["max"] - s["median"]]


def _plotted_methods(results: dict, wname: str) -> list[tuple[str, dict | None, dict | None, dict | None]]:
    """(method, toolkit row, hand-written row, missing row) for the methods measured or not available here;
    methods this mode skipped are left out."""
    index, out = _index(results), []
    for method in _method_order(results):
        tk, hw = index.get((wname, method, "toolkit")), index.get((wname, method, "reference"))
        missing = next((r for r in _rows(results) if r["workload"] == wname and r["method"] == method
                        and r.get("impl") is None and r["status"] == "not available"), None)
        if tk or hw or missing:
            out.append((method, tk, hw, missing))
    return out


def _plot_methods(results: dict, plt):
    workloads = [w for w in results["workloads"] if any(tk or hw for _, tk, hw, _ in _plotted_methods(results, w))]
    if not workloads:
        return None
    heights = [len(_plotted_methods(results, w)) for w in workloads]
    fig, axes = plt.subplots(len(workloads), 1, figsize=(9, 1.0 + 0.55 * sum(heights) + 0.6 * len(workloads)),
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    ratio = {(r["workload"], r["method"]): r for r in results["ratios"]}
    for ax, wname in zip(axes[:, 0], workloads):
        rows = _plotted_methods(results, wname)
        for y, (method, tk, hw, missing) in enumerate(rows):
            for row, dy, color, label in ((tk, -0.2, "tab:blue", "toolkit"), (hw, 0.2, "tab:gray", "hand-written")):
                if row and row.get("examples_per_sec"):
                    m, err = _errorbar(row["examples_per_sec"])
                    ax.barh(y + dy, m, height=0.38, xerr=[[err[0]], [err[1]]], color=color, capsize=3,
                            label=label if label not in ax.get_legend_handles_labels()[1] else None)
            vs = ratio.get((wname, method), {}).get("vs_one_device")
            if vs and method != "no_strategy":
                ax.text(tk["examples_per_sec"]["max"], y - 0.2, f"  {vs['median']:.2f}x one device", va="center",
                        fontsize=7)
            if missing or not any(r and r.get("examples_per_sec") for r in (tk, hw)):
                ax.text(0, y, f"  {(missing or tk or hw)['status']}", va="center", fontsize=8, color="tab:red")
        ax.set_yticks(range(len(rows)), [results["methods"][m]["title"] for m, *_ in rows], fontsize=8)
        ax.set_ylim(len(rows) - 0.5, -0.5)
        ax.margins(x=0.25)
        ax.set_xlabel("examples/s (median, bars: min-max)", fontsize=8)
        ax.set_title(results["workloads"][wname]["title"], fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    return fig


def _plot_sweep(section: str):
    def draw(results: dict, plt):
        points = [p for p in results["sweeps"][section] if p.get("examples_per_sec")]
        if not points:
            return None
        workloads = list(dict.fromkeys(p["workload"] for p in points))
        fig, axes = plt.subplots(1, len(workloads), figsize=(5.5 * len(workloads), 4), squeeze=False)
        for ax, wname in zip(axes[0], workloads):
            xs_all = set()
            for method, impl in dict.fromkeys((p["method"], p["impl"]) for p in points if p["workload"] == wname):
                curve = [p for p in points if p["workload"] == wname and p["method"] == method and p["impl"] == impl]
                xs = [p["x"] for p in curve]
                xs_all.update(xs)
                ms, errs = zip(*(_errorbar(p["examples_per_sec"]) for p in curve))
                label = "one device (hand-written)" if impl == "reference" else f"{method} (toolkit)"
                ax.errorbar(xs, ms, yerr=list(zip(*errs)), marker="o", capsize=3, label=label)
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(xs_all), [str(x) for x in sorted(xs_all)])
            ax.minorticks_off()
            ax.set_xlabel("global batch size" if section == "batch" else "model width")
            ax.set_ylabel("examples/s (median, bars: min-max)")
            ax.set_title(results["workloads"][wname]["title"], fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        return fig

    return draw


def _plot_pipeline(results: dict, plt):
    points = [p for p in results["pipeline"] if p.get("examples_per_sec")]
    if not points:
        return None
    index = _index(results)
    workloads = list(dict.fromkeys(p["workload"] for p in points))
    fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
    for ax, wname in zip(axes[0], workloads):
        curve = [p for p in points if p["workload"] == wname]
        xs = [p["microbatches"] for p in curve]
        ms, errs = zip(*(_errorbar(p["examples_per_sec"]) for p in curve))
        ax.errorbar(xs, ms, yerr=list(zip(*errs)), marker="o", capsize=3, label="model parallel, 2 stages (toolkit)")
        top = max(p["examples_per_sec"]["max"] for p in curve)
        base = index.get((wname, "no_strategy", "reference"))
        if base and base.get("examples_per_sec"):
            ax.axhline(base["examples_per_sec"]["median"], ls="--", color="tab:gray", label="one device (hand-written)")
            top = max(top, base["examples_per_sec"]["median"])
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.set_ylim(0, top * 1.25)
        ax.set_xlabel("micro-batches per global batch (1: no pipeline)")
        ax.set_ylabel("examples/s (median, bars: min-max)")
        ax.set_title(results["workloads"][wname]["title"], fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return fig


# ================================================================ all of it
def write_all(results: dict, out: Path) -> list[str]:
    """RESULTS.md and the plots into `out`; returns the file names written."""
    plots = write_plots(results, out)
    record = out / BEFORE_AFTER
    (out / "RESULTS.md").write_text(markdown(results, plots, record.read_text() if record.exists() else ""))
    return ["RESULTS.md", *plots]


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "bench/results.json")
    data: dict[str, Any] = json.loads(path.read_text())
    print(", ".join(write_all(data, path.parent)))
