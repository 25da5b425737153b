"""Acknowledged async invocations survive ``kill -9`` of the controller and complete exactly once
(at least once only for the ones that were running at the kill)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from _controller_helpers import fakes
from waiting import async_wait_until

from easyfaas import wire

pytestmark = pytest.mark.root

PROC = Path(__file__).with_name("_controller_proc.py")
WORKERS = 2


async def start(overrides: dict[str, Any], root: Path) -> tuple[asyncio.subprocess.Process, str]:
    addr_file = root / "run" / "api.addr"
    addr_file.unlink(missing_ok=True)
    with (root / "controller.log").open("ab") as err:
        proc = await asyncio.create_subprocess_exec(sys.executable, str(PROC),
                                                    json.dumps(overrides), stderr=err)
    await async_wait_until(lambda: proc.returncode is not None or addr_file.exists(),
                           "the controller to listen", timeout=15)
    url = "http://" + addr_file.read_text().strip()

    async def healthy() -> bool:
        return (await asyncio.to_thread(fakes.http, "GET", url + "/healthz"))[0] == 200
    await async_wait_until(healthy, "the controller healthy", timeout=15)
    return proc, url


async def statuses(url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for inv_id in ids:
        _, _, body = await asyncio.to_thread(fakes.http, "GET", f"{url}/v1/invocations/{inv_id}")
        out[inv_id] = json.loads(body)
    return out


@fakes.run
async def test_kill_9_and_restart_completes_every_acknowledged_invocation() -> None:
    root = fakes.short_dir()
    cfg = fakes.make_config(root, **{"async": {"workers": WORKERS, "backoff_s": 0.05}})
    overrides = {"paths": {"state_dir": cfg.paths.state_dir, "code_dir": cfg.paths.code_dir,
                           "run_dir": cfg.paths.run_dir},
                 "api": {"listen": "127.0.0.1:0"}, "http": {"listen": ""},
                 "async": {"workers": WORKERS, "backoff_s": 0.05}}
    cfg.run_dir.mkdir(parents=True)
    stubs, funclet = fakes.FakeStubs([fakes.record("f")]), fakes.FakeFunclet(root)
    servers = [await wire.start_server(str(cfg.socket("stubs")), stubs.handle),
               await wire.start_server(str(cfg.socket("funclet")), funclet.handle,
                                        on_close=funclet.release)]
    procs: list[asyncio.subprocess.Process] = []
    try:
        proc, url = await start(overrides, root)
        procs.append(proc)
        ids = []
        for n in range(12):
            status, _, body = await asyncio.to_thread(
                fakes.http, "POST", f"{url}/v1/functions/f/invocations",
                json.dumps({"n": n, "sleep": 0.1}).encode(), {"X-easyfaas-Invoke-Type": "event"})
            assert status == 202
            ids.append(json.loads(body)["invocationId"])

        async def some_done() -> bool:
            done = [s for s in (await statuses(url, ids)).values() if s["status"] == "succeeded"]
            return len(done) >= 2
        await async_wait_until(some_done, "two calls to succeed")
        before = await statuses(url, ids)
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

        proc, url = await start(overrides, root)
        procs.append(proc)

        async def all_done() -> bool:
            return all(s["status"] == "succeeded" for s in (await statuses(url, ids)).values())
        await async_wait_until(all_done, "every call to succeed", timeout=20)
        after = await statuses(url, ids)
        runs = Counter(e["n"] for e in funclet.events)
        for n, inv_id in enumerate(ids):
            assert runs[n] >= 1
            assert runs[n] <= after[inv_id]["attempts"]
            if before[inv_id]["status"] == "succeeded":
                assert runs[n] == 1 and after[inv_id] == before[inv_id]
        assert sum(runs.values()) - len(ids) <= WORKERS  # only calls running at the kill rerun
        # (The killed controller's sandboxes are the funclet's to reclaim: its lease test.)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 15) == 0
        assert funclet.live() == []
        assert not cfg.socket("controller").exists()
    finally:
        for p in procs:
            if p.returncode is None:
                p.kill()
                await p.wait()
        for server in servers:
            server.close()
        for runner in funclet.runners.values():
            runner.kill()
        shutil.rmtree(root)
        assert not os.path.exists(root)
