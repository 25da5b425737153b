"""Pools, validate, and crash cleanup of the funclet service."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _funclet_helpers import (
    make_cfg,
    make_snapshot,
    running,
    state_dir,
)
from waiting import async_wait_until, wait_until

from easyfaas import wire
from easyfaas.config import Config

pytestmark = pytest.mark.root

SERVE = """
import asyncio, sys
from easyfaas.config import Config, Paths, Sandbox
from easyfaas.funclet import service
cfg = Config(paths=Paths(state_dir=sys.argv[1]), sandbox=Sandbox(pool_size=1))
asyncio.run(service.run(cfg, asyncio.Event()))
"""


def _run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


async def _status(funclet: wire.Client) -> dict[str, Any]:
    head, _ = await funclet.call("status")
    return head


def test_pool_refills_after_acquire() -> None:
    async def scenario() -> None:
        with state_dir() as st:
            cfg = make_cfg(st, pool_size=1)
            snap = make_snapshot(cfg, {"index.py": "def handler(e, c):\n    return 1\n"})
            async with running(cfg) as funclet:
                cold: dict[str, Any] = {}

                async def pool_full() -> bool:
                    cold.update(await _status(funclet))
                    return bool(cold["pools"]["python3"] == 1)

                await async_wait_until(pool_full, "a full pool", timeout=20)
                before = _cold_python(cold)
                head, _ = await funclet.call("acquire", runtime="python3", memory=64,
                                             code=snap, label="a@1")
                assert head["sandbox"]["id"] in before  # served from the pool
                await async_wait_until(pool_full, "a full pool", timeout=20)
                now = _cold_python(cold)
                assert now and not now & before

    _run(scenario())


def _cold_python(status: dict[str, Any]) -> set[str]:
    return {s["id"] for s in status["sandboxes"]
            if s["state"] == "cold" and s["runtime"] == "python3"}


def test_validate_loads_the_handler_in_a_throwaway_sandbox() -> None:
    async def scenario() -> None:
        with state_dir() as st:
            cfg = make_cfg(st, pool_size=0)
            good = make_snapshot(cfg, {"index.py": "def handler(e, c):\n    return 1\n"})
            bad = make_snapshot(cfg, {"index.py": "import no_such_module\n"})
            fields = {"runtime": "python3", "handler": "index.handler", "env": {},
                      "memory": 64, "timeout": 3.0, "name": "f", "version": 1}
            async with running(cfg) as funclet:
                await funclet.call("validate", code=good, **fields)
                with pytest.raises(wire.RemoteError) as err:
                    await funclet.call("validate", code=bad, **fields)
                assert err.value.error["type"] == "ManifestError"
                assert "no_such_module" in str(err.value)
                assert (await _status(funclet))["sandboxes"] == []

    _run(scenario())


def test_sandboxes_go_with_the_client_that_acquired_them() -> None:
    async def scenario() -> None:
        with state_dir() as st:
            cfg = make_cfg(st, pool_size=0)
            snap = make_snapshot(cfg, {"index.py": "def handler(e, c):\n    return 1\n"})
            async with running(cfg) as funclet:
                owner = wire.Client(str(cfg.socket("funclet")))
                head, _ = await owner.call("acquire", runtime="python3", memory=64,
                                           code=snap, label="a@1")
                leased = head["sandbox"]["id"]
                other, _ = await funclet.call("acquire", runtime="python3", memory=64,
                                              code=snap, label="b@1")

                async def ids() -> set[str]:
                    return {s["id"] for s in (await _status(funclet))["sandboxes"]}

                assert leased in await ids()
                await owner.close()
                await async_wait_until(lambda: _absent(ids, leased), "the lease to end",
                                       timeout=20)
                assert other["sandbox"]["id"] in await ids()

    _run(scenario())


async def _absent(ids: Any, sb_id: str) -> bool:
    return sb_id not in await ids()


def _leftovers(cfg: Config) -> list[str]:
    groups = [str(p) for h in ("memory", "pids", "cpu", "freezer")
              for p in Path("/sys/fs/cgroup", h, cfg.instance_id).glob("sb-*")]
    mounts = [line for line in Path("/proc/self/mountinfo").read_text().splitlines()
              if str(cfg.run_dir) in line]
    return groups + mounts


def test_restart_after_kill_9_cleans_up_leftovers() -> None:
    with state_dir() as st:
        cfg = make_cfg(st, pool_size=1)
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "engine")}
        proc = subprocess.Popen([sys.executable, "-c", SERVE, str(st)], env=env)
        try:
            procs = Path("/sys/fs/cgroup/pids", cfg.instance_id)
            wait_until(lambda: [p for p in procs.glob("sb-*/cgroup.procs") if p.read_text()],
                       "a pooled sandbox of the first run", timeout=20)
            old_pids = [int(p) for f in procs.glob("sb-*/cgroup.procs")
                        for p in f.read_text().split()]
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert _leftovers(cfg) and old_pids
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

        async def restart() -> None:
            async with running(make_cfg(st, pool_size=0)):
                assert not [g for g in _leftovers(cfg) if "/sb" in g]  # store view, template
                assert not list((cfg.run_dir / "sb").iterdir())
                await async_wait_until(lambda: not [p for p in old_pids if _alive(p)],
                                       "old sandbox processes to be gone")
            assert not _leftovers(cfg)

        _run(restart())


def _alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
