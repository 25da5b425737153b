"""Figures as medians of several runs (with min/max so noisy runs show), and machine facts."""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

Figure = dict[str, Any]


def summarize(runs: list[float], unit: str) -> Figure:
    """``{"median", "min", "max", "runs", "unit"}`` of the runs, rounded for reading."""
    return {"median": round(statistics.median(runs), 3), "min": round(min(runs), 3),
            "max": round(max(runs), 3), "runs": [round(r, 3) for r in runs], "unit": unit}


def timed_ms(fn: Callable[[], object]) -> float:
    """Wall-clock milliseconds of one call."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


class Figures:
    """Every figure of one benchmark run, keyed ``system.handler.what`` (flat, for tables)."""

    def __init__(self) -> None:
        self.values: dict[str, Figure] = {}

    def add(self, key: str, runs: list[float], unit: str) -> None:
        self.values[key] = summarize(runs, unit)

    def fail(self, keys: list[str], error: BaseException) -> None:
        """Record why these figures could not be measured (never drop them silently)."""
        message = f"{type(error).__name__}: {error}"
        for key in keys:
            self.values[key] = {"error": message}

    def median(self, key: str) -> float | None:
        return self.values.get(key, {}).get("median")


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"cpu_model": model, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": sys.version.split()[0], "load_average_at_start": list(os.getloadavg()),
            "memory_total_mib": _mem_total_mib()}


def switch_round_trip_us(cpus: str | None, rounds: int = 20_000) -> float:
    """How fast the machine switches between processes right now: microseconds per round trip
    of one byte between two Python processes on the first of ``cpus`` (the idea of ``perf bench
    sched pipe``). This VM has slow spells lasting minutes that move every figure; measured at
    the start and the end of a run, this says which spell the run fell in."""
    there, here = os.pipe(), os.pipe()  # (read, write) to the child, from the child
    saved = os.sched_getaffinity(0)
    if cpus is not None:
        os.sched_setaffinity(0, {int(cpus.split(",")[0].split("-")[0])})
    try:
        pid = os.fork()
        if pid == 0:  # only reads and writes until it exits, whatever threads the parent has
            try:
                for _ in range(rounds):
                    os.read(there[0], 1)
                    os.write(here[1], b".")
            finally:
                os._exit(0)
        start = time.perf_counter()
        for _ in range(rounds):
            os.write(there[1], b".")
            os.read(here[0], 1)
        elapsed = time.perf_counter() - start
        os.waitpid(pid, 0)
    finally:
        os.sched_setaffinity(0, saved)
        for fd in (*there, *here):
            os.close(fd)
    return round(elapsed / rounds * 1e6, 2)


def _mem_total_mib() -> int:
    with open("/proc/meminfo") as f:
        return int(f.readline().split()[1]) // 1024
