"""The durable async queue's state machine on a real SQLite file, with a scripted invoker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from _controller_fakes import record
from waiting import async_wait_until

from easyfaas.config import Async
from easyfaas.controller.asyncq import AsyncQueue
from easyfaas.controller.invoke import CallResult
from easyfaas.controller.queuedb import QueueDB
from easyfaas.controller.registry import Registry
from easyfaas.errors import FunctionNotFound, InvocationNotFound, TooManyRequests


class ScriptedInvoker:
    """Answers calls from a script: "ok", "error" (function error) or "busy" (429)."""

    def __init__(self, script: list[str]):
        self.registry = Registry("/nonexistent")
        self.registry.functions = {"fn": record("fn")}
        self.script = script
        self.calls: list[tuple[str, bytes, str | None]] = []

    async def call(self, name: str, qualifier: str | None, payload: bytes,
                   request_id: str | None = None) -> CallResult:
        self.registry.resolve(name, qualifier)
        self.calls.append((name, payload, request_id))
        step = self.script.pop(0) if self.script else "ok"
        if step == "busy":
            raise TooManyRequests("no capacity")
        if step == "error":
            return CallResult(str(request_id), 1, b'{"errorMessage":"boom","errorType":"E"}',
                              "Unhandled", "", 1.0)
        return CallResult(str(request_id), 1, b'{"echo":' + payload + b"}", None, "", 1.0)


@asynccontextmanager
async def queue(path: Path, invoker: Any, **cfg: Any) -> AsyncIterator[AsyncQueue]:
    q = AsyncQueue(path, Async(**{"backoff_s": 0.01, **cfg}), invoker)
    await q.open()
    stop = asyncio.Event()
    workers = asyncio.ensure_future(q.run(stop))
    try:
        yield q
    finally:
        stop.set()
        await workers
        await q.close()


async def terminal(q: AsyncQueue, inv_id: str) -> dict[str, Any]:
    async def done() -> bool:
        return (await q.status(inv_id))["status"] in ("succeeded", "failed", "expired")
    await async_wait_until(done)
    return await q.status(inv_id)


def test_enqueued_call_runs_once_and_succeeds(tmp_path: Path) -> None:
    async def body() -> None:
        inv = ScriptedInvoker([])
        async with queue(tmp_path / "q.db", inv) as q:
            inv_id = await q.enqueue("fn", "$LATEST", b'{"n":1}', None)
            st = await terminal(q, inv_id)
        assert st["status"] == "succeeded" and st["result"] == {"echo": {"n": 1}}
        assert st["attempts"] == 1 and st["error"] is None and st["function"] == "fn"
        assert inv.calls == [("fn", b'{"n":1}', inv_id)]
    asyncio.run(body())


def test_function_errors_are_retried_then_dead_lettered(tmp_path: Path) -> None:
    async def body() -> None:
        inv = ScriptedInvoker(["error"] * 5)
        async with queue(tmp_path / "q.db", inv, retries=2) as q:
            st = await terminal(q, await q.enqueue("fn", "$LATEST", b"{}", None))
        assert st["status"] == "failed" and st["attempts"] == 3
        assert st["error"] == {"errorMessage": "boom", "errorType": "E"}
        assert len(inv.calls) == 3
    asyncio.run(body())


def test_retry_can_succeed_and_platform_errors_count_as_attempts(tmp_path: Path) -> None:
    async def body() -> None:
        inv = ScriptedInvoker(["busy", "error", "ok"])
        async with queue(tmp_path / "q.db", inv, retries=2) as q:
            st = await terminal(q, await q.enqueue("fn", "$LATEST", b"{}", None))
        assert st["status"] == "succeeded" and st["attempts"] == 3
    asyncio.run(body())


def test_backoff_is_exponential(tmp_path: Path) -> None:
    db = QueueDB(tmp_path / "q.db")
    inv_id, _ = db.enqueue("fn", "$LATEST", b"{}", None, now=100.0)
    db.claim(100.0, 3600)
    db.retry(inv_id, 101.0, "{}", 100.0)
    assert db.claim(100.5, 3600) is None  # not due yet
    assert db.next_due() == 101.0
    assert db.claim(101.0, 3600)["attempts"] == 2
    db.close()


def test_idempotency_key_returns_the_same_invocation(tmp_path: Path) -> None:
    async def body() -> None:
        inv = ScriptedInvoker([])
        async with queue(tmp_path / "q.db", inv) as q:
            first = await q.enqueue("fn", "$LATEST", b"{}", "key-1")
            again = await q.enqueue("fn", "$LATEST", b"{}", "key-1")
            other = await q.enqueue("fn", "$LATEST", b"{}", "key-2")
            await terminal(q, first)
            await terminal(q, other)
        assert first == again != other
        assert len(inv.calls) == 2
    asyncio.run(body())


def test_old_events_expire_without_running(tmp_path: Path) -> None:
    db = QueueDB(tmp_path / "q.db")
    inv_id, _ = db.enqueue("fn", "$LATEST", b"{}", None, now=100.0)
    assert db.claim(100.0 + 61, max_age_s=60) is None
    row = db.get(inv_id)
    assert row is not None and row["status"] == "expired" and row["attempts"] == 0
    db.close()


def test_running_calls_are_requeued_after_a_crash(tmp_path: Path) -> None:
    db = QueueDB(tmp_path / "q.db")
    now = time.time()
    running, _ = db.enqueue("fn", "$LATEST", b"{}", None, now=now)
    done, _ = db.enqueue("fn", "$LATEST", b"{}", None, now=now)
    db.claim(now, 3600)
    db.claim(now, 3600)
    db.finish(done, "succeeded", b"1", None, now)
    db.close()  # the process "dies" with one call running

    async def body() -> None:
        inv = ScriptedInvoker([])
        async with queue(tmp_path / "q.db", inv) as q:
            st = await terminal(q, running)
            assert (await q.status(done))["status"] == "succeeded"
        assert st["status"] == "succeeded" and st["attempts"] == 2
        assert [c[2] for c in inv.calls] == [running]
    asyncio.run(body())


def test_unknown_function_is_refused_at_enqueue(tmp_path: Path) -> None:
    async def body() -> None:
        async with queue(tmp_path / "q.db", ScriptedInvoker([])) as q:
            with pytest.raises(FunctionNotFound):
                await q.enqueue("nope", "$LATEST", b"{}", None)
            with pytest.raises(InvocationNotFound):
                await q.status("no-such-id")
            assert await q.depth() == {"queued": 0, "running": 0}
    asyncio.run(body())


def test_finish_refuses_a_non_terminal_state(tmp_path: Path) -> None:
    db = QueueDB(tmp_path / "q.db")
    inv_id, _ = db.enqueue("fn", "$LATEST", b"{}", None, now=1.0)
    with pytest.raises(ValueError):
        db.finish(inv_id, "queued", None, None, 2.0)
    db.close()
