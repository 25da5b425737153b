"""Prometheus text metrics, kept in plain dicts (no client library: the set is small and fixed)."""

from __future__ import annotations

import bisect
from collections import Counter
from dataclasses import dataclass, field

# Seconds; spans a warm call (sub-millisecond) to a slow cold start.
BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
           30.0)


@dataclass
class Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds

    def lines(self, name: str, labels: str) -> list[str]:
        out, running = [], 0
        for bound, n in zip(BUCKETS, self.counts, strict=False):
            running += n
            out.append(f'{name}_bucket{{{labels},le="{bound}"}} {running}')
        running += self.counts[-1]
        out.append(f'{name}_bucket{{{labels},le="+Inf"}} {running}')
        out.append(f"{name}_sum{{{labels}}} {self.total:.6f}")
        out.append(f"{name}_count{{{labels}}} {running}")
        return out


class Metrics:
    """Counters the controller bumps on the hot path (dict updates only)."""

    def __init__(self) -> None:
        self.invocations: Counter[tuple[str, str]] = Counter()
        self.cold_starts: Counter[str] = Counter()
        self.stages: dict[tuple[str, str], Histogram] = {}

    def count(self, function: str, outcome: str) -> None:
        self.invocations[(function, outcome)] += 1

    def observe(self, stage: str, function: str, seconds: float) -> None:
        hist = self.stages.get((stage, function))
        if hist is None:
            hist = self.stages[(stage, function)] = Histogram()
        hist.observe(seconds)

    def render(self, sandboxes: dict[str, int], queue_depth: dict[str, int],
               cpu_caps: dict[str, tuple[float, int | None]]) -> str:
        """The exposition text; gauges are passed in because other objects own that state."""
        out = ["# TYPE easyfaas_invocations_total counter"]
        for (fn, outcome), n in sorted(self.invocations.items()):
            out.append(f'easyfaas_invocations_total{{function="{fn}",outcome="{outcome}"}} {n}')
        out.append("# TYPE easyfaas_cold_starts_total counter")
        for fn, n in sorted(self.cold_starts.items()):
            out.append(f'easyfaas_cold_starts_total{{function="{fn}"}} {n}')
        out.append("# TYPE easyfaas_stage_seconds histogram")
        for (stage, fn), hist in sorted(self.stages.items()):
            out.extend(hist.lines("easyfaas_stage_seconds", f'stage="{stage}",function="{fn}"'))
        out.append("# TYPE easyfaas_sandboxes gauge")
        for state, n in sorted(sandboxes.items()):
            out.append(f'easyfaas_sandboxes{{state="{state}"}} {n}')
        out.append("# TYPE easyfaas_async_queue_depth gauge")
        for status, n in sorted(queue_depth.items()):
            out.append(f'easyfaas_async_queue_depth{{status="{status}"}} {n}')
        out.append("# TYPE easyfaas_function_cpu_share gauge")
        for fn, (share, _) in sorted(cpu_caps.items()):
            out.append(f'easyfaas_function_cpu_share{{function="{fn}"}} {share:.3f}')
        out.append("# TYPE easyfaas_function_cpu_instance_cap gauge")
        for fn, (_, cap) in sorted(cpu_caps.items()):
            if cap is not None:
                out.append(f'easyfaas_function_cpu_instance_cap{{function="{fn}"}} {cap}')
        return "\n".join(out) + "\n"
