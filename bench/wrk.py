"""Load generation with Debian's ``wrk`` (keep-alive connections), pinned to its own CPU."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

SCRIPT = Path(__file__).with_name("wrk_report.lua")


@dataclass(frozen=True)
class Load:
    """What one wrk run measured."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int


def run(url: str, connections: int, seconds: int, cpus: str | None,
        headers: tuple[str, ...] = ()) -> Load:
    """``connections`` keep-alive connections for ``seconds``; any failed request is an error."""
    threads = min(connections, 2)
    argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
            "-s", str(SCRIPT), url, "--", "POST", *headers]
    if cpus is not None:
        argv = ["taskset", "-c", cpus, *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
    if proc.returncode != 0:
        output = (proc.stderr or proc.stdout).strip()[-300:]
        raise RuntimeError(f"wrk exited with {proc.returncode}: {output}")
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    if not summary["requests"]:
        raise RuntimeError(f"wrk against {url}: no request completed within {seconds}s")
    if summary["errors"]:
        raise RuntimeError(f"wrk against {url}: {summary['errors']} failed requests "
                           f"of {summary['requests']}")
    return Load(rps=summary["requests"] / (summary["duration_us"] / 1e6),
                p50_ms=summary["p50_us"] / 1000, p99_ms=summary["p99_us"] / 1000,
                requests=summary["requests"])
