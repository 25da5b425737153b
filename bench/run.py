"""``make bench``: the engine and its baselines, side by side, in one run on this machine.

    .venv/bin/python -m bench.run [--quick] [--out DIR]    measure; write DIR/latest.{json,png}
    .venv/bin/python -m bench.run --write-docs [--out DIR]   fill docs/performance.md's table

Every figure is the median of several runs with min/max; a system that fails is recorded with
its error. Everything started here is stopped again, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import baselines, chart, engine, engine_figures, measure, procs, report, stats
from bench.measure import Plan
from bench.stats import Figures

ROOT = Path(__file__).resolve().parent.parent
# A round of the interleaved HTTP runs takes longer than the default 60 s idle timeout: with it,
# the sandboxes scaled out for one c=32 run were gone by the next, which then began with cold
# starts. A user's steady load never idles a function that long; the bench's rounds do.
MAIN_CONFIG = (f"[sandbox]\npool_size = {engine_figures.POOL_SIZE}\n"
               "[scheduler]\nidle_timeout_s = 600\n")
# A tiny idle timeout makes every measured call of a known function find no warm sandbox.
COLD_CONFIG = "[sandbox]\npool_size = {pool}\n[scheduler]\nidle_timeout_s = 0.2\n"


def _step(figs: Figures, keys: list[str], fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return fn(figs, *args)
    except Exception as e:  # a failed measurement is a result: record it, go on with the rest
        figs.fail(keys, e)
        return None


def _system_keys(system: str) -> list[str]:
    return [k for h in measure.HANDLERS for k in measure.http_keys(system, h)]


def _engine_main(figs: Figures, plan: Plan, logs: Path) -> dict[str, Any]:
    """Everything measured on one engine with the default pool, the baselines' HTTP figures
    interleaved with the engine's. Returns the engine's idle processes, and the isolation of
    the sandboxes that served the warm calls."""
    record: dict[str, Any] = {"engine_idle_processes": None}
    http_keys = [k for system in report.ENGINE for k in _system_keys(system)]
    code_dir, deploy, enqueue = ("engine.cold_start.code_dir_ms", "engine.deploy_to_serving_ms",
                                 "engine.async.enqueue_rps")
    keys = [*engine_figures.MEMORY_KEYS, code_dir, deploy, *http_keys, enqueue]
    warm_measured = False
    try:
        with engine.running(MAIN_CONFIG, plan.server_cpus, str(logs / "engine.log")) as eng:
            record["engine_idle_processes"] = _step(
                figs, engine_figures.MEMORY_KEYS, engine_figures.memory, eng, plan)
            _step(figs, [code_dir], engine_figures.code_dir_cold_start, eng, plan)
            _step(figs, [deploy], engine_figures.deploy_to_serving, eng, plan)
            targets = _step(figs, http_keys, engine_figures.warm_targets, eng, plan) or []
            _warm(figs, plan, logs, targets)
            warm_measured = True
            record["isolation"] = _isolation(eng)
            # Last: the queued events keep the engine busy after the measurement.
            _step(figs, [enqueue], engine_figures.async_enqueue, eng, plan)
    except Exception as e:
        figs.fail([k for k in keys if k not in figs.values], e)
        record.setdefault("isolation", {"error": f"{type(e).__name__}: {e}", "intact": False})
        if not warm_measured:
            _warm(figs, plan, logs, [])  # the baselines still get measured
    return record


def _isolation(eng: engine.Engine) -> dict[str, Any]:
    try:
        return engine_figures.warm_isolation(eng)
    except Exception as e:  # not shown intact: recorded as such, like a failed figure
        return {"error": f"{type(e).__name__}: {e}", "intact": False}


def _warm(figs: Figures, plan: Plan, logs: Path, engine_targets: list[measure.Target]) -> None:
    """The HTTP figures of the engine's targets and of every baseline, in one interleaved pass."""
    with contextlib.ExitStack() as stack:
        targets = list(engine_targets)
        for name, system in baselines.SYSTEMS.items():
            try:
                targets += stack.enter_context(system(figs, plan, str(logs / f"{name}.log")))
            except Exception as e:
                figs.fail(_system_keys(name), e)
        measure.http_targets(figs, targets, plan)


def _engine_cold(figs: Figures, plan: Plan, logs: Path, pool: int, key: str) -> None:
    try:
        with engine.running(COLD_CONFIG.format(pool=pool), plan.server_cpus,
                            str(logs / f"engine-pool{pool}.log")) as eng:
            _step(figs, [key], engine_figures.known_cold_start, eng, plan, key, pool)
    except Exception as e:
        if key not in figs.values:
            figs.fail([key], e)


def measure_all(plan: Plan, mode: str, logs: Path) -> dict[str, Any]:
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    machine = stats.machine()
    switch_at_start = stats.switch_round_trip_us(plan.server_cpus)
    figs = Figures()
    engine_record = _engine_main(figs, plan, logs)
    # Right before the cold starts it is compared with, so both fall in the same spell of this
    # VM (measured first, a run had it in a quick spell and the cold starts in a slow one).
    baselines.interpreter(figs, plan)
    _engine_cold(figs, plan, logs, engine_figures.POOL_SIZE, "engine.cold_start.pool_ms")
    _engine_cold(figs, plan, logs, 0, "engine.cold_start.empty_pool_ms")
    machine["switch_round_trip_us"] = {"start": switch_at_start,
                                       "end": stats.switch_round_trip_us(plan.server_cpus)}
    return {"mode": mode, "started_at": started,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": machine, "plan": dataclasses.asdict(plan), "figures": figs.values,
            "ratios": report.evaluate(figs.values, engine_record["isolation"]),
            **engine_record,
            "notes": {"engine.memory.sandboxes_per_gib": "derived: 1024 MiB / sandbox PSS",
                      "engine.async.enqueue_rps": "202s per second; each after its SQLite "
                                                  "commit (WAL, synchronous=FULL)"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (under a minute)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--write-docs", action="store_true",
                        help="render the table in DOCS from OUT/latest.json, measure nothing")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "performance.md")
    args = parser.parse_args(argv)
    if args.write_docs:
        result = json.loads((args.out / "latest.json").read_text())
        report.write_docs(args.docs, result)
        print(f"bench: wrote the table of {args.out / 'latest.json'} into {args.docs}")
        return 0
    if os.geteuid() != 0:
        print("bench: the engine needs root (namespaces, cgroups)", file=sys.stderr)
        return 2
    procs.stop_cleanly_on_signals()
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        result = measure_all(Plan.make(args.quick, os.cpu_count() or 1),
                             "quick" if args.quick else "full", logs)
    except KeyboardInterrupt:
        print("bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    (args.out / "latest.json").write_text(json.dumps(result, indent=1) + "\n")
    chart.write(args.out / "latest.png", result["figures"])
    print(report.tables(result))
    print(f"\nbench: wrote {args.out / 'latest.json'} and {args.out / 'latest.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
