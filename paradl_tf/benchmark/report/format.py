"""Formatting for the report: figures as 'median (min-max)', ratios against targets, rows by section."""

from __future__ import annotations

MIB = 1 << 20


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


def fmt_interval(interval: dict | None) -> str:
    """'0.950-1.020 (93%)': a median's confidence interval; '-' with too few rounds for one."""
    if not interval:
        return "-"
    return f"{interval['low']:.3f}-{interval['high']:.3f} ({interval['coverage']:.0%})"


def rows_of(results: dict, section: str = "main") -> list[dict]:
    return [r for r in results["rows"] if r["section"] == section]


def index_of(results: dict) -> dict[tuple, dict]:
    return {(r["workload"], r["method"], r["impl"]): r for r in rows_of(results)}


def method_order(results: dict) -> list[str]:
    return list(results["methods"])


def figure_or_status(row: dict | None) -> str:
    return fmt(row["examples_per_sec"]) if row and row.get("examples_per_sec") else row_status(row)


def row_status(row: dict | None) -> str:
    if not row:
        return "-"
    return f"{row['status']}: {row.get('why', '')}".replace("|", "/")


def mib(n: float | None) -> str:
    return "-" if n is None else f"{n / MIB:,.0f} MiB"


def plotted_methods(results: dict, wname: str) -> list[tuple[str, dict | None, dict | None, dict | None]]:
    """(method, toolkit row, hand-written row, missing row) for the methods measured or not available here;
    methods this mode skipped are left out."""
    index, out = index_of(results), []
    for method in method_order(results):
        tk, hw = index.get((wname, method, "toolkit")), index.get((wname, method, "reference"))
        missing = next((r for r in rows_of(results) if r["workload"] == wname and r["method"] == method
                        and r.get("impl") is None and r["status"] == "not available"), None)
        if tk or hw or missing:
            out.append((method, tk, hw, missing))
    return out
