"""cgroup v1: separate memory, pids, cpu and freezer hierarchies, one dir per sandbox in each."""

from __future__ import annotations

from pathlib import Path

from ...errors import SandboxError
from .base import (
    MIB,
    Backend,
    Stats,
    kill_procs,
    procs,
    read_int,
    read_keyed,
    rmdir,
    sigkill,
    write,
)

HIERARCHIES = ("memory", "pids", "cpu", "freezer")


class V1Backend(Backend):
    name = "cgroupv1"

    def __init__(self, root: Path, instance_id: str, pids_max: int, cpu_weight_per_128mb: int):
        super().__init__(instance_id, pids_max, cpu_weight_per_128mb)
        self.root = root

    @classmethod
    def open(cls, root: Path, instance_id: str, pids_max: int, cpu_weight: int) -> V1Backend:
        missing = [h for h in HIERARCHIES if not (root / h / "cgroup.procs").exists()]
        if missing:
            raise SandboxError(f"cgroup v1 hierarchies missing under {root}: {', '.join(missing)}")
        return cls(root, instance_id, pids_max, cpu_weight)

    def _dir(self, hierarchy: str, group: str = "") -> Path:
        base = self.root / hierarchy / self.instance_id
        return base / group if group else base

    def procs_files(self, group: str) -> list[str]:
        # ``tasks``, not ``cgroup.procs``: the still single-threaded child joins faster (nsinit).
        return [str(self._dir(h, group) / "tasks") for h in HIERARCHIES]

    def create(self, group: str, memory_mb: int) -> None:
        for h in HIERARCHIES:
            self._dir(h, group).mkdir(parents=True, exist_ok=True)
        self.set_memory(group, memory_mb)
        write(self._dir("pids", group) / "pids.max", str(self.pids_max))
        # v1 shares: 1024 is the default like v2's weight 100.
        shares = max(2, self.cpu_weight(memory_mb) * 1024 // 100)
        write(self._dir("cpu", group) / "cpu.shares", str(shares))

    def set_memory(self, group: str, memory_mb: int) -> None:
        mem = self._dir("memory", group)
        limit, memsw = mem / "memory.limit_in_bytes", mem / "memory.memsw.limit_in_bytes"
        value = str(memory_mb * MIB)
        if not memsw.exists():  # kernel without swap accounting: there is no swap to limit
            write(limit, value)
            return
        # memsw must stay >= limit at every moment: order the two writes by direction.
        if memory_mb * MIB > read_int(limit):
            write(memsw, value)
            write(limit, value)
        else:
            write(limit, value)
            write(memsw, value)

    def kill(self, group: str) -> None:
        freezer = self._dir("freezer", group)
        if not freezer.exists():
            return
        # Frozen tasks cannot fork while we kill them; SIGKILL still lands on thaw.
        write(freezer / "freezer.state", "FROZEN")
        for h in HIERARCHIES:
            for pid in procs(self._dir(h, group) / "cgroup.procs"):
                sigkill(pid)
        write(freezer / "freezer.state", "THAWED")
        for h in HIERARCHIES:
            kill_procs(self._dir(h, group) / "cgroup.procs")

    def remove(self, group: str) -> None:
        for h in HIERARCHIES:
            rmdir(self._dir(h, group))

    def remove_root(self) -> None:
        for h in HIERARCHIES:
            rmdir(self._dir(h))

    def stats(self, group: str) -> Stats:
        mem, pids = self._dir("memory", group), self._dir("pids", group)
        if not mem.exists():
            return Stats(0, 0, None, 0)
        return Stats(
            oom_kills=read_keyed(mem / "memory.oom_control").get("oom_kill", 0),
            memory_current=read_int(mem / "memory.usage_in_bytes"),
            memory_peak=read_int(mem / "memory.max_usage_in_bytes"),
            pids=read_int(pids / "pids.current") if pids.exists() else 0,
        )

    def groups(self) -> list[str]:
        found: set[str] = set()
        for h in HIERARCHIES:
            base = self._dir(h)
            if base.is_dir():
                found.update(p.name for p in base.iterdir() if p.is_dir())
        return sorted(found)
