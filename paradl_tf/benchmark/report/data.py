"""The data part's tables in RESULTS.md: input alone, training and peak memory from files against memory."""

from __future__ import annotations

from paradl_tf.benchmark.report.format import fmt, fmt_ratio, mib


def data_tables(results: dict) -> str:
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
        diff = "" if name == "small" else mib(m["difference_bytes"] if name == "big" else
                                              m.get("difference_same_buffer_bytes"))
        buffer = "10,000 (default)" if row["shuffle_buffer"] == "default" else f"{row['shuffle_buffer']:,}"
        out.append(f"| {label} | {row['examples']:,} | {mib(row['bytes'])} | {buffer} | "
                   f"{mib(row['peak_rss_bytes'] and row['peak_rss_bytes']['median'])} | {diff} |")
    target = m["target_bytes"]
    same = m.get("difference_same_buffer_bytes")
    if m["difference_bytes"] is not None:
        verdict = "under" if m["difference_bytes"] < target else "over"
        out += ["", f"Reading: big - small = {mib(m['difference_bytes'])}, {verdict} the {mib(target)} target"
                + (f"; with the same shuffle buffer, {mib(same)}: memory follows the shuffle buffer (records it "
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
