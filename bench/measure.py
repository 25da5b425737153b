"""The HTTP figures every system gets: latency at concurrency 1, throughput and p99 at 32."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from bench import procs, wrk
from bench.stats import Figures

HANDLERS = ("hello", "primes")


@dataclass(frozen=True)
class Plan:
    """How long and how often to measure (``--quick`` shrinks it, every figure stays)."""

    runs: int
    seconds: int
    cold_runs: int
    interpreter_runs: int
    idle_sandboxes: int
    server_cpus: str | None
    load_cpus: str | None

    @classmethod
    def make(cls, quick: bool, cores: int) -> Plan:
        # Two or more cores: the load generator gets its own CPU, everything measured shares cpu 0.
        server, load = ("0", f"1-{cores - 1}") if cores >= 2 else (None, None)
        if quick:
            return cls(runs=1, seconds=1, cold_runs=2, interpreter_runs=5, idle_sandboxes=3,
                       server_cpus=server, load_cpus=load)
        return cls(runs=3, seconds=5, cold_runs=5, interpreter_runs=20, idle_sandboxes=10,
                   server_cpus=server, load_cpus=load)


def http_keys(system: str, handler: str) -> list[str]:
    prefix = f"{system}.{handler}"
    return [f"{prefix}.c1.p50_ms", f"{prefix}.c1.p99_ms", f"{prefix}.c32.rps",
            f"{prefix}.c32.p99_ms", f"{prefix}.c1.steal_ms"]


@dataclass(frozen=True)
class Target:
    """One handler of one system, at its URL."""

    system: str
    handler: str
    url: str


def http_targets(figs: Figures, targets: list[Target], plan: Plan) -> None:
    """Measure every target, interleaved: each round runs c=1 and then c=32 against every target
    in turn. This machine has slow spells lasting minutes; measured one system after another,
    such a spell fell on whichever system was being measured and moved its ratios by 30 %.
    Each run starts once the server CPU is quiet: the previous run's leftovers (the fork
    baseline's processes) would otherwise land in its first, c=1 figures.

    Each c=1 run also records how long the hypervisor kept the measured CPUs (the server's
    and the load generator's) from running ("steal"): a host preemption of a millisecond or
    more lands in that run's tail whatever the system, so a reader can tell a p99 that is the
    system's from one that is the host's.

    A target that fails is recorded as failed and left out of the later rounds.
    """
    measured = procs.cpu_set(plan.server_cpus)
    if measured is not None:
        measured |= procs.cpu_set(plan.load_cpus) or set()
    live: list[Target] = []
    for t in targets:
        try:
            procs.wait_until(functools.partial(procs.answers, t.url),
                             f"{t.system} serving {t.url}")
            # Warm-up: c=32 so a scaling system has its instances before the first measured run.
            wrk.run(t.url, 32, 1, plan.load_cpus)
            live.append(t)
        except Exception as e:  # any failure of a system is a recorded result, not a crash
            figs.fail(http_keys(t.system, t.handler), e)
    c1: dict[Target, list[wrk.Load]] = {t: [] for t in live}
    c32: dict[Target, list[wrk.Load]] = {t: [] for t in live}
    stolen: dict[Target, list[float]] = {t: [] for t in live}
    for _ in range(plan.runs):
        for t in list(live):
            try:
                procs.wait_quiet(plan.server_cpus)
                before = procs.stolen_ms(measured)
                c1[t].append(wrk.run(t.url, 1, plan.seconds, plan.load_cpus))
                stolen[t].append(procs.stolen_ms(measured) - before)
                procs.wait_quiet(plan.server_cpus)
                c32[t].append(wrk.run(t.url, 32, plan.seconds, plan.load_cpus))
            except Exception as e:
                figs.fail(http_keys(t.system, t.handler), e)
                live.remove(t)
    for t in live:
        p50, p99, rps, p99_32, steal = http_keys(t.system, t.handler)
        figs.add(p50, [r.p50_ms for r in c1[t]], "ms")
        figs.add(p99, [r.p99_ms for r in c1[t]], "ms")
        figs.add(rps, [r.rps for r in c32[t]], "req/s")
        figs.add(p99_32, [r.p99_ms for r in c32[t]], "ms")
        figs.add(steal, stolen[t], "ms")
