"""Funclet pieces without root: zygote framing, readiness, cgroup backends on fake trees."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from easyfaas.errors import SandboxError
from easyfaas.funclet import zygote
from easyfaas.funclet.cgroups.base import MIB, read_keyed
from easyfaas.funclet.cgroups.v1 import HIERARCHIES, V1Backend
from easyfaas.funclet.cgroups.v2 import V2Backend
from easyfaas.funclet.spawner import _frame, wait_ready


def test_zygote_reads_a_frame_with_its_fd() -> None:
    a, b = socket.socketpair()
    r, w = os.pipe()
    with a, b:
        socket.send_fds(a, [_frame({"id": 7, "op": "spawn", "plan": [{"op": "x"}]})], [w])
        req, fds = zygote.read_request(b)
        assert req == {"id": 7, "op": "spawn", "plan": [{"op": "x"}]} and len(fds) == 1
        os.write(fds[0], b"!")
        assert os.read(r, 1) == b"!"
        zygote.send_reply(b, {"id": 7, "ok": True, "pid": 42})
        head = a.recv(8)
        assert head[4:] == len(b'{"id": 7, "ok": true, "pid": 42}').to_bytes(4, "big")
    for fd in (r, w, *fds):
        os.close(fd)


@pytest.mark.parametrize(
    "written, error",
    [(b"R", None), (b"setup failed at 'mount': EPERM", "setup failed"), (b"", "exited before")],
)
def test_wait_ready(written: bytes, error: str | None) -> None:
    r, w = os.pipe()
    os.write(w, written)
    os.close(w)
    if error is None:
        asyncio.run(wait_ready(r, 2))
    else:
        with pytest.raises(SandboxError, match=error):
            asyncio.run(wait_ready(r, 2))


def test_wait_ready_times_out() -> None:
    r, w = os.pipe()
    with pytest.raises(SandboxError, match="not ready"):
        asyncio.run(wait_ready(r, 0.05))
    os.close(w)


def _fake_v1(tmp_path: Path, memsw: bool = True) -> V1Backend:
    for h in HIERARCHIES:
        (tmp_path / h).mkdir()
        (tmp_path / h / "cgroup.procs").write_text("")
    backend = V1Backend.open(tmp_path, "inst", pids_max=9, cpu_weight=100)
    group = tmp_path / "memory" / "inst" / "sb"
    group.mkdir(parents=True)
    (group / "memory.limit_in_bytes").write_text(str(1 << 62))
    if memsw:
        (group / "memory.memsw.limit_in_bytes").write_text(str(1 << 62))
    return backend


def test_v1_writes_limits_and_cpu_shares(tmp_path: Path) -> None:
    backend = _fake_v1(tmp_path)
    backend.create("sb", 64)
    g = {h: tmp_path / h / "inst" / "sb" for h in HIERARCHIES}
    assert (g["memory"] / "memory.limit_in_bytes").read_text() == str(64 * MIB)
    assert (g["memory"] / "memory.memsw.limit_in_bytes").read_text() == str(64 * MIB)
    assert (g["pids"] / "pids.max").read_text() == "9"
    assert (g["cpu"] / "cpu.shares").read_text() == "512"  # 64 MiB = half of 128: half of 1024
    # tasks, not cgroup.procs: the single-threaded child joins without the global lock.
    assert backend.procs_files("sb") == [str(g[h] / "tasks") for h in HIERARCHIES]
    assert backend.groups() == ["sb"]


def test_v1_refuses_missing_hierarchies(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="memory, pids, cpu, freezer"):
        V1Backend.open(tmp_path, "inst", 9, 100)


def test_v2_usable_needs_memory_and_pids(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io\n")
    assert not V2Backend.usable(tmp_path)
    (tmp_path / "cgroup.controllers").write_text("cpu io memory pids\n")
    assert V2Backend.usable(tmp_path)


def test_cpu_weight_is_proportional_and_bounded(tmp_path: Path) -> None:
    backend = V2Backend(tmp_path, "inst", 9, 100)
    assert [backend.cpu_weight(m) for m in (1, 128, 1024, 10**6)] == [1, 100, 800, 10000]


def test_read_keyed(tmp_path: Path) -> None:
    (tmp_path / "oom").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert read_keyed(tmp_path / "oom")["oom_kill"] == 3
