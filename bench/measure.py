"""The HTTP figures every system gets: latency at concurrency 1, throughput and p99 at 32."""

from __future__ import annotations

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
            f"{prefix}.c32.p99_ms"]


def http_system(figs: Figures, system: str, urls: dict[str, str], plan: Plan,
                headers: tuple[str, ...] = ()) -> None:
    """Measure one system serving each handler at its URL; a failure is recorded per handler."""
    for handler, url in urls.items():
        try:
            _one_handler(figs, system, handler, url, plan, headers)
        except Exception as e:  # any failure of a system is a recorded result, not a crash
            figs.fail(http_keys(system, handler), e)


def _one_handler(figs: Figures, system: str, handler: str, url: str, plan: Plan,
                 headers: tuple[str, ...]) -> None:
    procs.wait_until(lambda: procs.answers(url), f"{system} serving {url}")
    # Warm-up: c=32 so a scaling system has its instances before the first measured run.
    wrk.run(url, 32, 1, plan.load_cpus, headers)
    c1 = [wrk.run(url, 1, plan.seconds, plan.load_cpus, headers) for _ in range(plan.runs)]
    c32 = [wrk.run(url, 32, plan.seconds, plan.load_cpus, headers) for _ in range(plan.runs)]
    p50, p99, rps, p99_32 = http_keys(system, handler)
    figs.add(p50, [r.p50_ms for r in c1], "ms")
    figs.add(p99, [r.p99_ms for r in c1], "ms")
    figs.add(rps, [r.rps for r in c32], "req/s")
    figs.add(p99_32, [r.p99_ms for r in c32], "ms")
