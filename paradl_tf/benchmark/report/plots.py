"""The report's PNG plots (matplotlib, Agg): throughput per method, scaling curves, the pipeline curve."""

from __future__ import annotations

from pathlib import Path

from paradl_tf.benchmark.report.format import index_of, plotted_methods
from paradl_tf.benchmark.report.network import plot_network


def write_plots(results: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    for name, draw in (("throughput_per_method.png", _plot_methods), ("scaling_batch.png", _plot_sweep("batch")),
                       ("scaling_width.png", _plot_sweep("width")), ("pipeline_microbatches.png", _plot_pipeline),
                       ("network_sync_async.png", plot_network)):
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


def _plot_methods(results: dict, plt):
    workloads = [w for w in results["workloads"] if any(tk or hw for _, tk, hw, _ in plotted_methods(results, w))]
    if not workloads:
        return None
    heights = [len(plotted_methods(results, w)) for w in workloads]
    fig, axes = plt.subplots(len(workloads), 1, figsize=(9, 1.0 + 0.55 * sum(heights) + 0.6 * len(workloads)),
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    ratio = {(r["workload"], r["method"]): r for r in results["ratios"]}
    for ax, wname in zip(axes[:, 0], workloads):
        rows = plotted_methods(results, wname)
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
    index = index_of(results)
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
