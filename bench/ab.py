"""A/B of engine source trees: where each spends its CPU per warm call, in alternating rounds.

    .venv/bin/python -m bench.ab [--rounds N] [--seconds S] NAME=TREE NAME=TREE ...

Each TREE is a checkout of this repository (``git worktree add /tmp/a <rev>``); its engine and
runtimes are the ones run. Each round starts one engine per tree in turn (the order flips every
round, so a drift of the machine falls on both), deploys the bench's handlers and runs ``wrk``
at c=32 for each handler through the HTTP trigger and the invoke API. Around each run it reads
the CPU time and context switches of every engine process from ``/proc``, grouped by component
(the sandboxes' processes as ``runners``), and divides by the requests served. It prints each
run and the medians, and writes ``OUT/ab.json``. This is the tool behind the "rounds" of
docs/performance.md; ``make bench`` stays the one that compares the engine with its baselines.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

from bench import engine, measure, procs, wrk
from bench.run import MAIN_CONFIG

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("httptrigger", "controller", "runners")
PATHS = ("trigger", "invoke")


@dataclass
class Run:
    round: int
    tree: str
    path: str
    handler: str
    rps: float
    p99_ms: float
    cpu_us: dict[str, float]  # per request, by component
    sleeps: dict[str, float]  # voluntary context switches per request
    preempted: dict[str, float]  # involuntary context switches per request


Usage = dict[str, tuple[float, int, int]]  # component -> (CPU seconds, voluntary, involuntary)


def usage(eng: engine.Engine) -> Usage:
    """CPU time and context switches so far of the engine's processes, by component."""
    in_sandboxes = engine.sandbox_pids(eng.runtimes()["funclet"])
    totals: dict[str, list[float]] = {c: [0.0, 0, 0] for c in COMPONENTS}
    for proc in procs.tree(eng.pid):
        # ``easyfaas up`` names each component's process ef-<component> (supervisor.py).
        name = "runners" if proc.pid in in_sandboxes else proc.name().removeprefix("ef-")
        if name not in totals:
            continue  # the supervisor, funclet and stubs: not on a warm call's path
        try:
            cpu, switches = proc.cpu_times(), proc.num_ctx_switches()
        except psutil.NoSuchProcess:
            continue
        t = totals[name]
        t[0] += cpu.user + cpu.system
        t[1] += switches.voluntary
        t[2] += switches.involuntary
    return {c: (t[0], int(t[1]), int(t[2])) for c, t in totals.items()}


def measure_tree(name: str, tree: Path, round_: int, seconds: int, plan: measure.Plan,
                 log: Path) -> list[Run]:
    """One engine from ``tree``: every handler on both paths, one wrk run each."""
    env = {"PYTHONPATH": str(tree / "engine")}
    runs = []
    with engine.running(MAIN_CONFIG, plan.server_cpus, str(log), env) as eng:
        for handler in measure.HANDLERS:
            eng.deploy(handler, handler)
        for path in PATHS:
            for handler in measure.HANDLERS:
                url = eng.url(handler) if path == "trigger" else eng.invoke_url(handler)
                wrk.run(url, 32, 1, plan.load_cpus)  # scale out before measuring
                procs.wait_quiet(plan.server_cpus)
                before = usage(eng)
                load = wrk.run(url, 32, seconds, plan.load_cpus)
                after = usage(eng)
                n = load.requests
                runs.append(Run(round_, name, path, handler, round(load.rps, 1), load.p99_ms,
                                _per_request(before, after, n, 0, 1e6),
                                _per_request(before, after, n, 1, 1.0),
                                _per_request(before, after, n, 2, 1.0)))
                print(_line(runs[-1]), flush=True)
    return runs


def _per_request(before: Usage, after: Usage, requests: int, field: int,
                 scale: float) -> dict[str, float]:
    return {c: round((after[c][field] - before[c][field]) / requests * scale, 2)
            for c in COMPONENTS}


def _line(r: Run) -> str:
    cpu = " ".join(f"{c} {v:.1f}" for c, v in r.cpu_us.items())
    sleeps = " ".join(f"{v:.2f}" for v in r.sleeps.values())
    return (f"round {r.round} {r.tree:>8} {r.path:7} {r.handler:6} {r.rps:8.0f} req/s"
            f"  CPU µs/req: {cpu}  sleeps/req: {sleeps}")


def summary(runs: list[Run], trees: list[str]) -> list[str]:
    lines = []
    for path in PATHS:
        for handler in measure.HANDLERS:
            line = f"{path:7} {handler:6}"
            for tree in trees:
                mine = [r for r in runs if (r.tree, r.path, r.handler) == (tree, path, handler)]
                rps = [r.rps for r in mine]
                cpu = {c: statistics.median(r.cpu_us[c] for r in mine) for c in COMPONENTS}
                line += (f" | {tree}: {statistics.median(rps):7.0f} req/s ({min(rps):.0f}–"
                         f"{max(rps):.0f}), CPU µs/req "
                         + " ".join(f"{c} {v:.0f}" for c, v in cpu.items()))
            lines.append(line)
    return lines


def _tree_arg(text: str) -> tuple[str, Path]:
    name, sep, path = text.partition("=")
    tree = Path(path).resolve()
    if not sep or not name or not (tree / "engine" / "easyfaas").is_dir():
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=TREE, TREE a checkout of "
                                         "this repository")
    return name, tree


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of at least 1")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.ab", description=__doc__.split("\n")[0])
    parser.add_argument("trees", nargs="+", type=_tree_arg, metavar="NAME=TREE")
    parser.add_argument("--rounds", type=_positive, default=4)
    parser.add_argument("--seconds", type=_positive, default=4, help="of each wrk run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args(argv)
    names = [name for name, _ in args.trees]
    if len(set(names)) != len(names):
        parser.error("each tree needs a name of its own")
    if os.geteuid() != 0:
        print("bench.ab: the engine needs root (namespaces, cgroups)", file=sys.stderr)
        return 2
    procs.stop_cleanly_on_signals()
    plan = measure.Plan.make(quick=False, cores=os.cpu_count() or 1)
    (args.out / "logs").mkdir(parents=True, exist_ok=True)
    runs: list[Run] = []
    try:
        for round_ in range(args.rounds):
            order = args.trees if round_ % 2 == 0 else args.trees[::-1]
            for name, tree in order:
                runs += measure_tree(name, tree, round_, args.seconds, plan,
                                     args.out / "logs" / f"ab-{name}.log")
    except KeyboardInterrupt:
        print("bench.ab: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    print("\n" + "\n".join(summary(runs, names)))
    result = {"trees": {name: str(tree) for name, tree in args.trees},
              "components": COMPONENTS, "runs": [asdict(r) for r in runs]}
    (args.out / "ab.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nbench.ab: wrote {args.out / 'ab.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
