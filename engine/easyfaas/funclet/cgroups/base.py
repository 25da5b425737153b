"""The cgroup backend interface, shared helpers, and ``detect``.

Two ways for a sandbox to enter its cgroup fit this interface: cgroupfs backends (v1, v2) name
``procs_files`` that the child writes itself (``0``) into before it unshares; a backend that must
attach from the outside (a systemd transient scope started with ``PIDs=``) returns no files and
the parent attaches the child while it waits. Every group lives under the instance's own
directory (``cfg.instance_id``) so side-by-side engines, and crash cleanup, never mix.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

from systemd import daemon

from ...config import Config
from ...errors import ConfigError, SandboxError

MIB = 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Stats:
    oom_kills: int
    memory_current: int
    memory_peak: int | None
    pids: int


class Backend(ABC):
    name: str
    # True when the child cannot join by itself: it reports its pid and waits for ``attach``.
    attaches = False

    def __init__(self, instance_id: str, pids_max: int, cpu_weight_per_128mb: int):
        self.instance_id = instance_id
        self.pids_max = pids_max
        self.cpu_weight_per_128mb = cpu_weight_per_128mb

    def cpu_weight(self, memory_mb: int) -> int:
        """cgroup v2 weight (1..10000) in proportion to memory."""
        return max(1, min(10000, memory_mb * self.cpu_weight_per_128mb // 128))

    @abstractmethod
    def procs_files(self, group: str) -> list[str]:
        """Files the sandbox child writes itself (``0``) into to join ``group``."""

    def scope_suffix(self, group: str) -> str:
        """For ``attaches`` backends: how the child's /proc/self/cgroup line must end."""
        raise SandboxError(f"{self.name} does not attach sandboxes from outside")

    def attach(self, group: str, pid: int) -> None:
        """For ``attaches`` backends: put ``pid`` (waiting) into ``group`` with its limits."""
        raise SandboxError(f"{self.name} does not attach sandboxes from outside")

    @abstractmethod
    def create(self, group: str, memory_mb: int) -> None:
        """Make the group with every limit set; raise ``SandboxError`` if any cannot be."""

    @abstractmethod
    def set_memory(self, group: str, memory_mb: int) -> None: ...

    @abstractmethod
    def kill(self, group: str) -> None:
        """Kill every process in the group and wait until it is empty."""

    @abstractmethod
    def remove(self, group: str) -> None:
        """Remove the (empty) group; no error if it is already gone."""

    @abstractmethod
    def stats(self, group: str) -> Stats: ...

    @abstractmethod
    def remove_root(self) -> None:
        """Remove the instance's own directory once every group is gone."""

    @abstractmethod
    def groups(self) -> list[str]:
        """Groups of this instance that exist now (crash cleanup finds leftovers here)."""


def write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise SandboxError(f"cannot set {path} = {value}: {e.strerror or e}") from e


def read_int(path: Path) -> int:
    return int(path.read_text().split()[0])


def read_keyed(path: Path) -> dict[str, int]:
    """``key value`` lines (memory.events, memory.oom_control)."""
    out = {}
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        out[key] = int(value)
    return out


def procs(path: Path) -> list[int]:
    try:
        return [int(p) for p in path.read_text().split()]
    except FileNotFoundError:
        return []


def sigkill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def kill_procs(procs_file: Path, timeout: float = 5.0) -> None:
    """SIGKILL every pid listed until the list stays empty (new forks are caught next round)."""
    deadline = time.monotonic() + timeout
    while pids := procs(procs_file):
        for pid in pids:
            sigkill(pid)
        if time.monotonic() > deadline:
            raise SandboxError(f"processes {pids} in {procs_file.parent} survive SIGKILL")
        time.sleep(0.005)  # the kernel needs a moment to tear the killed tasks down


def rmdir(path: Path, timeout: float = 5.0) -> None:
    """Remove a cgroup dir; EBUSY while dying tasks still leave it is retried briefly."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError as e:
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise SandboxError(f"cannot remove cgroup {path}: {e.strerror}") from e
        time.sleep(0.005)


def detect(cfg: Config) -> Backend:
    """The backend ``cfg.sandbox.cgroup_backend`` asks for ("auto": systemd scopes when systemd
    is PID 1, else v2 when it has the memory and pids controllers, else v1). Refuses rather than
    run sandboxes without limits."""
    from .v1 import V1Backend
    from .v2 import V2Backend

    sb = cfg.sandbox
    args = (cfg.instance_id, sb.pids_max, sb.cpu_weight_per_128mb)
    choice = sb.cgroup_backend
    # sd_booted() rather than the systemd backend's own check: importing that module loads the
    # D-Bus client (2.5 MiB PSS in the funclet), which only the systemd backend needs.
    if choice == "systemd" or (choice == "auto" and daemon.booted()):
        from .systemd import ScopeBackend

        return ScopeBackend.open(*args)
    if choice == "cgroupv2" or (choice == "auto" and V2Backend.usable(CGROUP_ROOT)):
        return V2Backend.open(CGROUP_ROOT, *args)
    if choice in ("cgroupv1", "auto"):
        return V1Backend.open(CGROUP_ROOT, *args)
    raise ConfigError(
        f"sandbox.cgroup_backend = {choice!r} is not available here "
        "(use auto, systemd, cgroupv1, cgroupv2)"
    )
