"""The main table's tables in RESULTS.md: throughput and ratios, tutorials, start-up and memory, model parallel."""

from __future__ import annotations

from paradl_tf.benchmark.report.format import (MIB, figure_or_status, fmt, fmt_interval, fmt_ratio, index_of,
                                               method_order, plotted_methods, rows_of)

# Measured with plain TensorFlow on a 2-core CPU before any toolkit code (issue 7): the figures to beat.
PLAIN_TF_BEFORE = {("mirrored_4", "mlp"): "0.33x", ("mirrored_4", "cnn"): "1.00x",
                   ("multi_worker_mirrored_2", "mlp"): "0.12x", ("multi_worker_mirrored_2", "cnn"): "0.63x",
                   ("parameter_server", "mlp"): "0.18-0.38x", ("parameter_server", "cnn"): "0.74-0.85x"}


def throughput_tables(results: dict) -> str:
    if "main" not in results.get("parts", ["main"]):
        return ""
    index, ratio = index_of(results), {(r["workload"], r["method"]): r for r in results["ratios"]}
    out = ["## Throughput, steady state (examples/s: median (min-max))",
           "",
           "toolkit = `paradl_tf.prepare(cfg)` then the `model.fit` call of `paradl_tf.train` without validation "
           "(parameter servers, MultiWorkerMirrored: `paradl_tf.train`, which starts the local cluster; only the "
           "training part of each epoch is timed); hand-written = "
           "`paradl_tf/benchmark/reference/` (plain tf.distribute + Keras: same data, model, optimizer and Keras, with "
           "the input pipeline a user writes: shuffle, batch, prefetch). Steady state: the first epoch of each process (tracing) is not timed. `tk/hw` = toolkit / "
           f"hand-written (target >= {results['targets']['toolkit_over_reference']}); `vs 1 dev` = toolkit / "
           "hand-written one device with no strategy; `plain TF before` = the issue's figures measured with plain "
           "TensorFlow on a 2-core CPU before any toolkit code; `% peak` = achieved training FLOP/s (3 x forward "
           "FLOPs per example x examples/s) over the float32 matmul peak. Ratios are taken round by round (each "
           "timed epoch against the same epoch of the process run in the same round), then min/median/max."]
    skipped = [r for r in rows_of(results) if r.get("impl") is None and r["status"] == "skipped"]
    if skipped:
        names = ", ".join(f"{r['workload']}/{r['method']}" for r in skipped)
        out += ["", f"Not run in {results['mode']} mode: {names}."]
    for wname, w in results["workloads"].items():
        if not any(tk or hw for _, tk, hw, _ in plotted_methods(results, wname)):
            continue
        out += ["", f"### {w['title']}", "",
                f"{w['params']:,} parameters, {w['forward_flops'] / 1e6:,.2f} MFLOP forward per example, "
                f"global batch {w['global_batch_size']}.", "",
                "| method | keras | toolkit examples/s | step ms | hand-written examples/s | tk/hw | vs 1 dev "
                "| target vs 1 dev | plain TF before | % peak |",
                "|---|---|---|---|---|---|---|---|---|---|"]
        for method in method_order(results):
            tk, hw = index.get((wname, method, "toolkit")), index.get((wname, method, "reference"))
            missing = next((r for r in rows_of(results) if r["workload"] == wname and r["method"] == method
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
            tk_text = figure_or_status(tk)
            hw_text = figure_or_status(hw) if hw else "no reference yet"
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
    "`paradl_tf/benchmark/reference/`), on the same local cluster: parameter servers as "
    "tensorflow.org/tutorials/distribute/parameter_server_training (\"Training with Model.fit\": a `DatasetCreator` "
    "whose `dataset_fn` shuffles, repeats, shards, then batches without drop_remainder and `prefetch(2)`; the legacy "
    "tf_keras optimizer the tutorial advises), MultiWorkerMirrored as "
    "tensorflow.org/tutorials/distribute/multi_worker_with_keras (`shuffle().repeat().batch()`: no prefetch, the "
    "AUTO auto-shard policy). The hand-written side batches (drop_remainder) before it repeats, prefetches "
    "AUTOTUNE, sets the DATA auto-shard policy and uses the new optimizers.")


def tutorial_table(results: dict) -> str:
    """Toolkit against TensorFlow's tutorial-style code, for the methods that have it (issue 14); nothing when no
    tutorial-style row was measured (tiny mode skips the local clusters)."""
    index, ratio = index_of(results), {(r["workload"], r["method"]): r for r in results["ratios"]}
    target = results["targets"].get("toolkit_over_tutorial")
    rows = [(wname, method) for wname in results["workloads"] for method in method_order(results)
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
                   f"| {figure_or_status(tk)} | {figure_or_status(tut)} "
                   f"| {fmt_ratio(r.get('toolkit_over_tutorial'), target)} |")
    return "\n".join(out)


def tutorials_side_by_side_table(results: dict) -> str:
    """The tutorials part: both sides at the same time, each pinned to its own half of the CPUs, round by round;
    its skip or unavailability in one line; nothing when the part was not run."""
    entry = results.get("tutorials")
    if not entry:
        return ""
    title = "## Against TensorFlow's tutorials, side by side"
    if entry["status"] != "ok":
        return f"{title}\n\n{entry['status']}: {entry['why']}"
    target = entry["target"]
    first, second = (",".join(map(str, half)) for half in entry["cpus"])
    out = [title, "", f"The toolkit and the tutorial-style code (above) at the same time, each with every process it "
           f"starts pinned to its own half of the CPUs ({first} | {second}), the halves swapped every round, and the "
           f"side whose cluster reached its timed epochs sooner in the last round started that much later; "
           f"{entry['plan']['epochs']} epochs per process, the first untimed. `tk/tut` = toolkit / tutorial-style, "
           f"round by round, over the epochs both sides trained together: median (min-max) (target >= {target}). "
           "`interval`: where the true median lies, with the confidence given, from the rounds' order statistics "
           "(no assumption on their spread); a target inside it is not told apart from the median by these rounds. "
           "`all epochs`: the same over every timed epoch, together or not. `by half`: the median ratio with the "
           "toolkit on the first half, then on the second.", "",
           "| workload | method | rounds | tk/tut | interval | rounds >= target | all epochs | by half "
           "| ratios, round by round |",
           "|---|---|---|---|---|---|---|---|---|"]
    for row in entry["rows"]:
        halves = " / ".join("-" if x is None else f"{x:.3f}" for x in row["by_half"].values())
        rounds = ", ".join(f"{r['ratio']:.3f}" if "ratio" in r else "skipped" if "skipped" in r else "failed"
                           for r in row["rounds"])
        out.append(f"| {row['workload']} | {results['methods'][row['method']]['title']} | {row['rounds_measured']} "
                   f"| {fmt_ratio(row['toolkit_over_tutorial'], target)} | {fmt_interval(row.get('median_interval'))} "
                   f"| {row['rounds_at_or_above_target']} of {row['rounds_measured']} | {fmt_ratio(row['all_epochs'])} "
                   f"| {halves} | {rounds} |")
    return "\n".join(out)


def results_target(results: dict, workload: str, method: str) -> float | None:
    return next((t["target"] for t in results["targets"]["vs_one_device"]
                 if t["workload"] == workload and t["method"] == method), None)


def _plain_tf(workload: str, method: str) -> str:

    return PLAIN_TF_BEFORE.get((method, workload), "")


def startup_table(results: dict) -> str:
    if not any(r.get("startup") for r in rows_of(results)):
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
    for r in rows_of(results):
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


def model_parallel_table(results: dict) -> str:
    rows = [r for r in rows_of(results) if r.get("parameter_bytes_per_device")]
    if not rows:
        return ""
    out = ["## Model parallel: parameter bytes per device", "",
           "| workload | method | impl | bytes per device |", "|---|---|---|---|"]
    for r in rows:
        per = ", ".join(f"{d.rsplit('/', 1)[-1]}: {b:,}" for d, b in r["parameter_bytes_per_device"].items())
        out.append(f"| {r['workload']} | {r['method']} | {r['impl']} | {per} |")
    reduced = [r for r in rows_of(results) if r.get("all_reduce_bytes_per_device") is not None]
    if reduced:
        out += ["", "## All-reduce: gradient bytes per device per step (hybrid: its stage's; Mirrored: the whole model's)",
                "", "| workload | method | bytes per device per step |", "|---|---|---|"]
        out += [f"| {r['workload']} | {r['method']} | {r['all_reduce_bytes_per_device']:,} |" for r in reduced]
    return "\n".join(out)


def pipeline_table(results: dict) -> str:
    points = results["pipeline"]
    if not points:
        return ""
    out = ["## Pipeline: micro-batches (2 stages; 1 = model parallel without pipelining)", "",
           "| workload | micro-batches | examples/s | status |", "|---|---|---|---|"]
    for p in points:
        out.append(f"| {p['workload']} | {p['microbatches']} | {fmt(p['examples_per_sec'])} | {p['status']} |")
    return "\n".join(out)
