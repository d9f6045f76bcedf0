"""Markdown from results.json: every row of a run, or the README's performance table.

The README's table is printed from results.json (`bench.py --table`) rather than typed,
so every figure it quotes comes from one file; the header says when that file holds
sections of different runs or a --quick run, which the README should not quote.
"""

from __future__ import annotations

import math

from benchmarks.bench_common import DATA_LEGEND

COLUMNS = ("what", "workload", "measured [min, max]", "baseline (same run) [min, max]",
           "ratio", "repeats")
UNITLESS = {"accuracy"}


def _num(value: float) -> str:
    if not math.isfinite(value):
        return str(value)
    # Three significant digits, trailing zeros kept: a ratio of 1.00 is not a ratio of 1.
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:#.3g}".rstrip(".")


def _figure(fig: dict, unit: str) -> str:
    unit = "" if unit in UNITLESS else f" {unit}"
    counts = all(float(fig[k]).is_integer() for k in ("median", "min", "max"))
    num = (lambda v: str(int(v))) if counts else _num  # epochs and trials are counts
    if fig["n"] == 1:
        return f"{num(fig['median'])}{unit}"
    return f"{num(fig['median'])}{unit} [{num(fig['min'])}, {num(fig['max'])}]"


def _ratio(row: dict) -> str:
    r = row["ratio"]
    if r is None or not math.isfinite(r):
        return "-"
    if row["style"] == "percent":
        return f"{r * 100:.1f}%"
    if row["style"] == "speed" and r > 0:
        return f"{_num(1 / r)}x faster" if r < 1 else f"{_num(r)}x slower"
    return f"{_num(r)}x"


def _cells(row: dict) -> list[str]:
    base = row["baseline"]
    repeats = str(row["measured"]["n"]) + (f" / {base['n']}" if base else "")
    what = row["what"] + (f" ({row['note']})" if row.get("note") else "")
    return [what, row["workload"], _figure(row["measured"], row["unit"]),
            f"{base['what']}: {_figure(base, row['unit'])}" if base else "-", _ratio(row),
            repeats]


def _table(rows: list[dict]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return lines + ["| " + " | ".join(_cells(row)) + " |" for row in rows]


def _ordered(results: dict) -> list[tuple[str, dict]]:
    return sorted(results["sections"].items(), key=lambda kv: int(kv[0].split(".")[0]))


def provenance(results: dict) -> list[str]:
    """Why these figures are not one full run's, if they are not: one line per reason."""
    sections = _ordered(results)
    runs = {s["run"] for _, s in sections}
    problems = []
    if len(runs) > 1:
        problems.append("sections come from different runs: " + "; ".join(
            f"{name} ({s['run']})" for name, s in sections))
    quick = [name for name, s in sections if s["quick"]]
    if quick:
        problems.append("--quick (smoke) figures: " + ", ".join(quick))
    return problems


def header(results: dict) -> list[str]:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    runs = sorted({s["run"] for s in results["sections"].values()})
    lines = [f"Measured {', '.join(runs)} on {m['cores']} cores ({m['cpu']}), Python "
             f"{m['python']}, {versions}. Each figure is the median of its repeats, with "
             "[min, max]; repeats counts them (measured / baseline), every ratio is of "
             "two medians of the same run. Data: " + DATA_LEGEND + "."]
    lines += [f"**Not one full run: {p}.**" for p in provenance(results)]
    return lines


def readme_table(results: dict) -> str:
    """The README's performance table: the rows marked for it, in section order."""
    rows = [row for _, s in _ordered(results) for row in s["rows"] if row["readme"]]
    return "\n".join([*header(results), "", *_table(rows)])


def details(results: dict) -> str:
    """Every row of every section, one table per section."""
    lines = header(results)
    for name, s in _ordered(results):
        lines += ["", f"### {name} ({s['seconds']:.0f} s)", "", *_table(s["rows"])]
    return "\n".join(lines)
