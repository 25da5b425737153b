"""Fixtures for the funclet integration tests: a real service on a short tmp run dir."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from waiting import async_wait_until

from easyfaas import wire
from easyfaas.config import Config, Paths, Sandbox
from easyfaas.funclet import mounts, service


@contextlib.contextmanager
def state_dir() -> Iterator[Path]:
    # Short path: runner.sock lives below it and unix socket paths are limited to 107 bytes.
    path = Path(tempfile.mkdtemp(prefix="ef", dir="/tmp"))
    try:
        yield path
    finally:
        # Even after a failed test: never rmtree through a mount (it could reach the store).
        mounts.unmount_under(path)
        shutil.rmtree(path, ignore_errors=True)


def make_cfg(state: Path, pool_size: int = 1, **sandbox: Any) -> Config:
    return Config(
        paths=Paths(state_dir=str(state), code_dir=str(state / "code")),
        sandbox=Sandbox(pool_size=pool_size, **sandbox),
    )


def make_snapshot(cfg: Config, files: dict[str, str]) -> str:
    """A code snapshot in the store, as stubs would make it."""
    digest = hashlib.sha256(repr(sorted(files.items())).encode()).hexdigest()
    snap = cfg.store_dir / digest
    snap.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (snap / name).write_text(text)
    return str(snap)


async def _until_serving(client: wire.Client, task: asyncio.Task[None]) -> None:
    # A stale socket from a killed run may exist: only an answered ping means "serving".
    async def serving() -> bool:
        if task.done():
            task.result()
            raise AssertionError("funclet stopped before serving")
        try:
            await client.call("ping")
        except OSError:
            return False
        return True

    await async_wait_until(serving, "the funclet to serve", timeout=20)


@contextlib.asynccontextmanager
async def running(cfg: Config) -> AsyncIterator[wire.Client]:
    """The real funclet service in this event loop, and a client of its socket."""
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(cfg, stop))
    client = wire.Client(str(cfg.socket("funclet")))
    try:
        await _until_serving(client, task)
        yield client
    finally:
        await client.close()
        stop.set()
        await asyncio.wait_for(task, 30)


async def load(sandbox: dict[str, Any], handler: str = "index.handler",
               runtime: str = "python3", memory: int = 128) -> wire.Client:
    runner = wire.Client(sandbox["socket"])
    function = {"name": "t", "version": 1, "handler": handler, "memory": memory,
                "timeout": 10.0, "env": {}, "runtime": runtime}
    await runner.call("load", function=function)
    return runner


async def invoke(runner: wire.Client, event: bytes = b"{}") -> tuple[dict[str, Any], bytes]:
    return await runner.call_raw(
        {"op": "invoke", "request_id": "r1", "deadline_ms": int(time.time() * 1000) + 20000},
        event,
    )
