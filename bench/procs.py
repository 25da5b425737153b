"""Processes the harness starts, always stopped again (also on Ctrl-C), and small HTTP helpers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil

STOP_TIMEOUT = 30.0


def free_port() -> int:
    """A currently free local port (the baselines cannot report a port-0 bind back)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pinned(argv: list[str], cpus: str | None) -> list[str]:
    return argv if cpus is None else ["taskset", "-c", cpus, *argv]


@contextmanager
def started(argv: list[str], env: dict[str, str] | None = None,
            log: str = os.devnull) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``argv`` in its own session; on leaving, SIGTERM it, then SIGKILL its whole group."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, env={**os.environ, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield proc
    finally:
        stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    try:
        # Stragglers of the group (workers, forked calls) go too.
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def tree(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants."""
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_cleanly_on_signals() -> None:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt``, so the context managers above stop what
    was started; also when running in the background, where SIGINT is ignored."""
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)


def wait_until(cond: Callable[[], Any], what: str, timeout: float = 30.0,
               interval: float = 0.005) -> Any:
    """Poll ``cond`` until it returns something truthy; ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while not (result := cond()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return result


def _cpu_ticks(cpus: set[int] | None) -> list[list[int]]:
    """The user .. steal jiffies of each of ``cpus`` (None: all) from /proc/stat."""
    out = []
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if not name.startswith("cpu") or name == "cpu":
                continue
            if cpus is None or int(name[3:]) in cpus:
                out.append([int(x) for x in fields[:8]])  # guest time is in user
    return out


def _cpu_times(cpus: set[int] | None) -> tuple[int, int]:
    """(idle, total) jiffies of ``cpus`` (None: all)."""
    ticks = _cpu_ticks(cpus)
    return sum(t[3] + t[4] for t in ticks), sum(sum(t) for t in ticks)


def stolen_ms(cpus: set[int] | None) -> float:
    """Milliseconds the hypervisor has kept ``cpus`` (None: all) from running while they had
    work ("steal" in /proc/stat, counted since boot in whole jiffies; 0 on bare metal)."""
    return sum(t[7] for t in _cpu_ticks(cpus)) * 1000 / os.sysconf("SC_CLK_TCK")


def cpu_set(cpus: str | None) -> set[int] | None:
    """``"0"``, ``"1-3"``, ``"0,2"`` (taskset's syntax) as a set; None stays None (all)."""
    if cpus is None:
        return None
    out: set[int] = set()
    for part in cpus.split(","):
        low, _, high = part.partition("-")
        out.update(range(int(low), int(high or low) + 1))
    return out


def wait_quiet(cpus: str | None, idle: float = 0.9, window: float = 0.1,
               timeout: float = 5.0) -> None:
    """Wait until ``cpus`` were at least ``idle`` idle over one ``window``, so that work left
    over from the previous measurement (a fork server's processes finishing after their client
    left) does not fall into the next one; gives up after ``timeout`` (a busy machine is then
    measured as it is)."""
    which = cpu_set(cpus)
    deadline = time.monotonic() + timeout
    while True:
        idle0, total0 = _cpu_times(which)
        time.sleep(window)
        idle1, total1 = _cpu_times(which)
        quiet = total1 > total0 and (idle1 - idle0) / (total1 - total0) >= idle
        if quiet or time.monotonic() > deadline:
            return


def request(url: str, method: str = "POST", body: bytes | None = b"{}",
            headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, body if method != "GET" else None, headers or {},
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        return 0, b""


def answers(url: str, expect: bytes = b"") -> bool:
    """True once ``url`` returns 200 with ``expect`` in the body."""
    status, body = request(url)
    return status == 200 and expect in body
