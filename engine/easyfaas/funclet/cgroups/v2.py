"""cgroup v2 (unified): one dir per sandbox under ``<root>/<instance_id>``.

Refuses to run where the root lacks the memory or pids controller (e.g. the nearly empty
``/sys/fs/cgroup/unified`` of a hybrid host): sandboxes without limits are not an option.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import SandboxError
from .base import MIB, Backend, Stats, kill_procs, read_int, read_keyed, rmdir, write

REQUIRED = ("memory", "pids")
WANTED = ("memory", "pids", "cpu")


def _controllers(path: Path) -> set[str]:
    try:
        return set((path / "cgroup.controllers").read_text().split())
    except OSError:
        return set()


class V2Backend(Backend):
    name = "cgroupv2"

    def __init__(self, root: Path, instance_id: str, pids_max: int, cpu_weight_per_128mb: int):
        super().__init__(instance_id, pids_max, cpu_weight_per_128mb)
        self.root = root
        self.base = root / instance_id

    @staticmethod
    def usable(root: Path) -> bool:
        return all(c in _controllers(root) for c in REQUIRED)

    @classmethod
    def open(cls, root: Path, instance_id: str, pids_max: int, cpu_weight: int) -> V2Backend:
        if not cls.usable(root):
            have = " ".join(sorted(_controllers(root))) or "none"
            raise SandboxError(
                f"cgroup v2 at {root} lacks the {' and '.join(REQUIRED)} controllers "
                f"(available: {have}); refusing to run sandboxes without limits"
            )
        backend = cls(root, instance_id, pids_max, cpu_weight)
        backend.base.mkdir(exist_ok=True)
        enable = [c for c in WANTED if c in _controllers(root)]
        write(root / "cgroup.subtree_control", " ".join("+" + c for c in enable))
        write(backend.base / "cgroup.subtree_control", " ".join("+" + c for c in enable))
        return backend

    def procs_files(self, group: str) -> list[str]:
        return [str(self.base / group / "cgroup.procs")]

    def make_group(self, group: str) -> Path:
        path = self.base / group
        path.mkdir(parents=True, exist_ok=True)
        return path

    def create(self, group: str, memory_mb: int) -> None:
        path = self.make_group(group)
        self.set_memory(group, memory_mb)
        write(path / "memory.swap.max", "0")
        write(path / "pids.max", str(self.pids_max))
        if (path / "cpu.weight").exists():
            write(path / "cpu.weight", str(self.cpu_weight(memory_mb)))

    def set_memory(self, group: str, memory_mb: int) -> None:
        write(self.base / group / "memory.max", str(memory_mb * MIB))

    def kill(self, group: str) -> None:
        path = self.base / group
        if not path.exists():
            return
        if not (path / "cgroup.kill").exists():
            raise SandboxError(f"{path}: kernel has no cgroup.kill")
        write(path / "cgroup.kill", "1")
        kill_procs(path / "cgroup.procs")

    def remove(self, group: str) -> None:
        rmdir(self.base / group)

    def remove_root(self) -> None:
        rmdir(self.base)

    def stats(self, group: str) -> Stats:
        path = self.base / group
        if not path.exists():
            return Stats(0, 0, None, 0)
        peak = path / "memory.peak"
        return Stats(
            oom_kills=read_keyed(path / "memory.events").get("oom_kill", 0),
            memory_current=read_int(path / "memory.current"),
            memory_peak=read_int(peak) if peak.exists() else None,
            pids=read_int(path / "pids.current"),
        )

    def groups(self) -> list[str]:
        if not self.base.is_dir():
            return []
        return sorted(p.name for p in self.base.iterdir() if p.is_dir())
