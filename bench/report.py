"""What a run produces: ratios and targets, the summary table, the chart and the docs table."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Any

from bench.measure import HANDLERS

SYSTEMS = ("engine_http", "engine_invoke", "floor", "sanic", "functions_framework", "fork")
ENGINE = ("engine_http", "engine_invoke")
# (name, numerator, denominator, op, bound): the targets, all from the same run.
Check = tuple[str, str, str | None, str, float | None]


def checks() -> list[Check]:
    out: list[Check] = []
    for h in HANDLERS:
        for e in ENGINE:
            p50, p99, rps = f"{e}.{h}.c1.p50_ms", f"{e}.{h}.c1.p99_ms", f"{e}.{h}.c32.rps"
            out += [(f"{e}.{h}.p50_vs_functions_framework", p50,
                     f"functions_framework.{h}.c1.p50_ms", "<=", 1.0),
                    (f"{e}.{h}.p50_vs_sanic", p50, f"sanic.{h}.c1.p50_ms", "<=", 3.0),
                    (f"{e}.{h}.p99_vs_p50", p99, p50, "<=", 3.0),
                    # No target: how much of the tail is beyond the machine's own (the floor's).
                    (f"{e}.{h}.p99_vs_floor_p99", p99, f"floor.{h}.c1.p99_ms", "", None),
                    (f"{e}.{h}.c32_rps_vs_sanic", rps, f"sanic.{h}.c32.rps", ">=", 0.4),
                    (f"{e}.{h}.c32_rps_vs_functions_framework", rps,
                     f"functions_framework.{h}.c32.rps", ">=", 2.0)]
    # No target: how far this machine's own tail is from p99 <= 3x p50 in this run.
    out += [(f"floor.{h}.p99_vs_p50", f"floor.{h}.c1.p99_ms", f"floor.{h}.c1.p50_ms", "", None)
            for h in HANDLERS]
    python = "interpreter.python3_c_pass_ms"
    return out + [
        ("cold_start.pool_vs_python3", "engine.cold_start.pool_ms", python, "<=", 0.5),
        ("cold_start.empty_pool_vs_python3", "engine.cold_start.empty_pool_ms", python, "<=", 1.5),
        ("cold_start.code_dir_vs_python3", "engine.cold_start.code_dir_ms", python, "", None),
        ("deploy_to_serving_ms", "engine.deploy_to_serving_ms", None, "<=", 200.0),
        ("idle_pss_mib", "engine.memory.idle_pss_mib", None, "<=", 90.0),
        ("sandbox_private_mib", "engine.memory.sandbox_private_mib", None, "<=", 4.0),
        ("sandboxes_per_gib", "engine.memory.sandboxes_per_gib", None, ">=", 150.0)]


def evaluate(figures: dict[str, dict[str, Any]],
             isolation: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every check as ``{"value", "of", "target", "met"}``; ``value`` is null if a figure failed.
    Last, that the measured sandboxes kept their isolation (``bench/isolation.py``): its value
    is how many passed every check, out of how many were checked."""
    ops = {"<=": operator.le, ">=": operator.ge}
    results = {}
    for name, num, den, op, bound in checks():
        a = figures.get(num, {}).get("median")
        b = figures.get(den, {}).get("median") if den else 1.0
        value = round(a / b, 3) if a is not None and b else None
        met = None if value is None or bound is None else ops[op](value, bound)
        results[name] = {"value": value, "of": [num, den], "kind": "ratio" if den else "absolute",
                         "target": f"{op} {bound:g}" if bound is not None else None, "met": met}
    checked = isolation.get("sandboxes", [])
    passed = sum(all(sb["checks"].values()) for sb in checked)
    results["isolation.measured_sandboxes_intact"] = {
        "value": float(passed) if "error" not in isolation else None, "of": ["isolation"],
        "kind": "count", "target": f"= {len(checked)}", "met": bool(isolation["intact"])}
    return results


def _cell(fig: dict[str, Any] | None) -> str:
    if fig is None:
        return "—"
    if "error" in fig:
        return "error"
    return f"{fig['median']:g} ({fig['min']:g}–{fig['max']:g})"


def tables(result: dict[str, Any]) -> str:
    """Markdown tables of one result: systems side by side, engine figures, checks."""
    figs = result["figures"]
    lines = ["| system | handler | p50 ms (c=1) | p99 ms (c=1) | host steal ms (c=1) "
             "| req/s (c=32) | p99 ms (c=32) |", "|---|---|---|---|---|---|---|"]
    for system in SYSTEMS:
        for h in HANDLERS:
            cells = [_cell(figs.get(f"{system}.{h}.{k}"))
                     for k in ("c1.p50_ms", "c1.p99_ms", "c1.steal_ms", "c32.rps", "c32.p99_ms")]
            lines.append(f"| {system} | {h} | " + " | ".join(cells) + " |")
    lines += ["", "| figure | median (min–max) | unit |", "|---|---|---|"]
    for key, fig in figs.items():
        if key.split(".")[0] in ("engine", "interpreter"):
            lines.append(f"| {key} | {_cell(fig)} | {fig.get('unit', '')} |")
    lines += ["", "| check | value | target | met |", "|---|---|---|---|"]
    for name, c in result["ratios"].items():
        value = "error" if c["value"] is None else f"{c['value']:g}"
        met = {True: "yes", False: "no", None: "—"}[c["met"]]
        lines.append(f"| {name} | {value} | {c['target'] or '—'} | {met} |")
    errors = {f["error"] for f in figs.values() if "error" in f}
    return "\n".join(lines + [""] + [f"error: {e}" for e in sorted(errors)])


BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def write_docs(doc: Path, result: dict[str, Any]) -> None:
    """Replace the generated section of ``doc`` with the tables of ``result``."""
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise ValueError(f"{doc} has no {BEGIN} … {END} section to fill")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    m = result["machine"]
    facts = (f"Measured {result['finished_at']} ({result['mode']} mode) on {m['cpu_model']}, "
             f"{m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, load average "
             f"{m['load_average_at_start'][0]:.2f} at start.")
    switch = m.get("switch_round_trip_us")  # not in results from before it was measured
    if switch:
        facts += (f" A switch between two processes on the measured CPU took {switch['start']} µs"
                  f" per round trip at the start and {switch['end']} µs at the end.")
    doc.write_text(f"{head}{BEGIN}\n{facts}\n\n{tables(result)}\n{END}{tail}")
