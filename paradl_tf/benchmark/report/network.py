"""The network part's tables and plots: sync against async on emulated hosts, each row beside its model."""

from __future__ import annotations

from paradl_tf.benchmark.report.format import fmt

TITLES = {"multi_worker_mirrored_2": "MultiWorkerMirrored (2 workers)", "parameter_server": "parameter servers (2+1)"}


def network_tables(results: dict) -> str:
    net = results.get("network")
    if not net:
        return ""
    out = [f"## Sync against async on emulated hosts ({results['mode']} mode)", ""]
    if net["status"] != "ok":
        return "\n".join(out + [f"Not measured: {net['why']}."])
    out += [
        "Each task on its own emulated host (`cluster.hosts`: a network namespace on a private bridge; a link's "
        "bandwidth by `tc tbf`, a host's CPU share by a cgroup quota). `model` = the cost model "
        "(`paradl_tf/runs/communication.py`, docs/sync-or-async.md) with the compute of a step taken from the "
        "unshaped run; `meas/model` marked ok within "
        f"±{net['tolerance']:.0%}, OUTSIDE beyond; `to acc` = training seconds (validation excluded, first "
        "epoch's tracing included) to the first epoch at the validation accuracy target "
        f"({', '.join(f'{w} {t}' for w, t in net['val_targets'].items())}), `-` if never reached. "
        f"Hybrid: not measured: {net['hybrid']}.{_processes(net.get('plan'))}", "",
        "### Every link at one bandwidth", "",
        "| workload | method | links | examples/s | step ms | model examples/s | meas/model | val acc | to acc s "
        "| model |", "|---|---|---|---|---|---|---|---|---|---|"]
    out += [_row(p, p["x"]) for p in net["links"]]
    if net["stragglers"]:
        out += ["", "### One worker slowed s times (s measured: its own step time against an unslowed worker's)",
                "", _calibration(net), "",
                "| workload | method | slowed by | setting | s measured | examples/s | step ms | model examples/s "
                "| meas/model | val acc | to acc s | model |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        out += [_row(p, f"{p['by']} | {_setting(p)} | {p['s']:.2f} (target {p['target_s']:g})")
                for p in net["stragglers"]]
    out += ["", "### `plan --link`: predicted communication share of a step against the measured one", "",
            "measured = 1 - unshaped step / step at this link; plan's compute is `plan --link --compute=cluster`'s: "
            "the row's config's cluster trained briefly on loopback (a parameter-server worker's step: the "
            "cluster's time per step times P).", "",
            "| workload | method | link | plan's compute ms | plan's communication ms | predicted share "
            "| measured share | within ±25% of measured |", "|---|---|---|---|---|---|---|---|"]
    for c in net["plan_check"]:
        out.append(f"| {c['workload']} | {TITLES[c['method']]} | {c['link']} | {_ms(c['plan_compute_seconds'])} "
                   f"| {_ms(c['predicted_communication_seconds'])} | {_pct(c['predicted_share'])} "
                   f"| {_pct(c['measured_share'])} | {_ok(c['within'], 'no unshaped run or plan')} |")
    return "\n".join(out)


def _processes(plan: dict | None) -> str:
    """What a row's figures are taken over (the main table's processes per figure are its own)."""
    if not plan:
        return ""
    return (f" Each row: {plan['reps']} process(es), {plan['epochs']} epochs of {plan['steps']} steps, the first "
            f"epoch not timed.")


def _row(p: dict, what: str) -> str:
    m = p["model"]
    if p.get("status") not in ("ok", None) and not p.get("examples_per_sec"):
        return f"| {p['workload']} | {TITLES[p['method']]} | {what} | {p['status']}: {(p.get('why') or '')[:200]} |"
    ratio = p["measured_over_model"]
    model = f"{m['examples_per_sec']:,.0f}" if m.get("applies") else "-"
    agrees = f"{ratio:.2f} {_ok(p['within'], '')}" if ratio else "-"
    return (f"| {p['workload']} | {TITLES[p['method']]} | {what} | {fmt(p['examples_per_sec'])} "
            f"| {fmt(p['step_seconds'], 1e3, 1, spread=False)} | {model} | {agrees} "
            f"| {fmt(p['val_accuracy'], digits=3, spread=False)} "
            f"| {fmt(p['seconds_to_target'], digits=1, spread=False)} "
            f"| {m.get('formula') or m.get('why')} |")


def _calibration(net: dict) -> str:
    points = [q for c in net["calibration"].values() for q in c.get("points", [])]
    text = ", ".join(f"{q['by']} {_setting(q)}: s {q['s']:.2f}" if q["s"] else f"{q['by']} {_setting(q)}: failed"
                     for q in points)
    bases = ", ".join(f"{w} {c['unslowed_step_seconds'] * 1e3:.1f} ms" for w, c in net["calibration"].items()
                      if c.get("unslowed_step_seconds"))
    return ("Calibration: a one-worker parameter-server cluster (its steps wait for nobody), its worker's host slowed; "
            f"unslowed step {bases}; measured {text}. Each target s takes the setting whose s is nearest; the models "
            "use the measured s.")


def _setting(p: dict) -> str:
    return f"{p['setting']:g} cores" if p["by"] == "cpu" else f"{p['setting']:g} Mbit"


def _ok(within: bool | None, missing: str) -> str:
    return missing if within is None else "ok" if within else "OUTSIDE"


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{x * 1e3:.2f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.0%}"


# ================================================================ plots
def plot_network(results: dict, plt):
    """Throughput against bandwidth, against the straggler's s (the models' curves through the unslowed points), and
    validation accuracy against training time; None when the part did not measure."""
    net = results.get("network")
    if not net or net["status"] != "ok" or not net["links"]:
        return None
    fig, (bw, st, acc) = plt.subplots(1, 3, figsize=(14, 3.8))
    draw_bandwidth(bw, net)
    draw_stragglers(st, net)
    draw_accuracy(acc, net)
    return fig


def _series(points: list[dict]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for p in points:
        if p.get("examples_per_sec"):
            out.setdefault((p["workload"], p["method"]), []).append(p)
    return out


def draw_bandwidth(ax, net: dict) -> None:
    for i, ((w, m), ps) in enumerate(_series(net["links"]).items()):
        shaped = sorted((p for p in ps if p["bandwidth_mbit"]), key=lambda p: p["bandwidth_mbit"])
        ax.plot([p["bandwidth_mbit"] for p in shaped], [p["examples_per_sec"]["median"] for p in shaped], "o",
                color=f"C{i}", label=f"{w} {TITLES[m]}")
        modelled = [p for p in shaped if p["model"].get("applies")]
        ax.plot([p["bandwidth_mbit"] for p in modelled], [p["model"]["examples_per_sec"] for p in modelled], "--",
                color=f"C{i}", linewidth=1)
    ax.set(xscale="log", yscale="log", xlabel="every link, Mbit/s", ylabel="examples/s",
           title="throughput against bandwidth (dashed: model)")
    ax.legend(fontsize=7)


def draw_stragglers(ax, net: dict) -> None:
    unslowed = {(p["workload"], p["method"]): p["examples_per_sec"]["median"] for p in net["links"]
                if p["bandwidth_mbit"] is None and p.get("examples_per_sec")}
    for i, ((w, m), ps) in enumerate(_series(net["stragglers"]).items()):
        base = unslowed.get((w, m))
        if not base:
            continue
        for by, marker in (("cpu", "o"), ("link", "s")):
            mine = [p for p in ps if p["by"] == by]
            ax.plot([1] + [p["s"] for p in mine], [1] + [p["examples_per_sec"]["median"] / base for p in mine],
                    marker, color=f"C{i}", label=f"{w} {TITLES[m]}, by {by}")
    s = [1 + k * 0.1 for k in range(0, 61)]
    ax.plot(s, [1 / x for x in s], "k--", linewidth=1, label="sync model 1/s")
    ax.plot(s, [(1 + 1 / x) / 2 for x in s], "k:", linewidth=1, label="async model (P-1+1/s)/P, P=2")
    ax.set(xlabel="s, the slow worker's measured slowdown", ylabel="throughput / unslowed",
           title="throughput against one straggler", ylim=(0, 1.3))
    ax.legend(fontsize=7)


def draw_accuracy(ax, net: dict) -> None:
    rows = [p for p in net["links"] if p["bandwidth_mbit"] is None] or net["links"]
    for i, p in enumerate(q for q in rows if q.get("accuracy_curves")):
        curve = p["accuracy_curves"][0]
        ax.plot(curve["seconds"], curve["val_accuracy"], "o-", color=f"C{i}", markersize=3,
                label=f"{p['workload']} {TITLES[p['method']]} ({p['x']})")
    for t in sorted(set(net["val_targets"].values())):
        ax.axhline(t, color="gray", linestyle="--", linewidth=1)
    ax.set(xlabel="training seconds", ylabel="validation accuracy", ylim=(0, 1),
           title="accuracy against time")
    ax.legend(fontsize=7)
