"""The cgroup backends against the host's real cgroupfs (v1 hierarchies, the bare v2 mount)."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from _funclet_helpers import make_cfg, state_dir
from waiting import wait_until

from easyfaas.errors import SandboxError
from easyfaas.funclet.cgroups.base import MIB, detect
from easyfaas.funclet.cgroups.v1 import HIERARCHIES, V1Backend
from easyfaas.funclet.cgroups.v2 import V2Backend

pytestmark = pytest.mark.root

ROOT = Path("/sys/fs/cgroup")
UNIFIED = ROOT / "unified"


def _instance() -> str:
    return "easyfaas-test-" + secrets.token_hex(4)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "60"])
    yield proc
    proc.kill()
    proc.wait()


def test_detect_picks_v1_on_this_host() -> None:
    with state_dir() as st:
        assert detect(make_cfg(st)).name == "cgroupv1"
        with pytest.raises(SandboxError, match="lacks the memory and pids controllers"):
            detect(make_cfg(st, cgroup_backend="cgroupv2"))


def test_v1_limits_resize_kill_remove(sleeper: subprocess.Popen[bytes]) -> None:
    backend = V1Backend.open(ROOT, _instance(), pids_max=7, cpu_weight=100)
    try:
        backend.create("sb-a", 256)
        mem = ROOT / "memory" / backend.instance_id / "sb-a"
        assert int((mem / "memory.limit_in_bytes").read_text()) == 256 * MIB
        assert int((mem / "memory.memsw.limit_in_bytes").read_text()) == 256 * MIB
        assert (ROOT / "pids" / backend.instance_id / "sb-a" / "pids.max").read_text() == "7\n"
        assert (ROOT / "cpu" / backend.instance_id / "sb-a" / "cpu.shares").read_text() == "2048\n"
        backend.set_memory("sb-a", 64)  # down: limit first, then memsw
        backend.set_memory("sb-a", 512)  # up: memsw first, then limit
        assert int((mem / "memory.limit_in_bytes").read_text()) == 512 * MIB
        for procs in backend.procs_files("sb-a"):
            Path(procs).write_text(str(sleeper.pid))
        assert backend.stats("sb-a").pids == 1 and backend.groups() == ["sb-a"]
        backend.kill("sb-a")
        assert sleeper.wait(5) == -9
        backend.remove("sb-a")
        assert backend.groups() == [] and not mem.exists()
    finally:
        for group in backend.groups():
            backend.kill(group)
            backend.remove(group)
        backend.remove_root()
    assert not any((ROOT / h / backend.instance_id).exists() for h in HIERARCHIES)


def test_v2_refuses_without_controllers() -> None:
    with pytest.raises(SandboxError, match="refusing to run sandboxes without limits"):
        V2Backend.open(UNIFIED, _instance(), 64, 100)
    assert not V2Backend.usable(UNIFIED)


def test_v2_group_create_kill_remove(sleeper: subprocess.Popen[bytes]) -> None:
    backend = V2Backend(UNIFIED, _instance(), 64, 100)
    try:
        group = backend.make_group("sb-b")
        with pytest.raises(SandboxError, match="memory.max"):
            backend.create("sb-b", 64)  # no memory controller here: fails closed
        Path(backend.procs_files("sb-b")[0]).write_text(str(sleeper.pid))
        wait_until(lambda: str(sleeper.pid) in (group / "cgroup.procs").read_text(), "join",
                   timeout=5)
        backend.kill("sb-b")
        assert sleeper.wait(5) == -9
        backend.remove("sb-b")
        assert not group.exists() and backend.groups() == []
    finally:
        backend.kill("sb-b")
        backend.remove("sb-b")
        backend.remove_root()
    assert not backend.base.exists()
