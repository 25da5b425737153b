"""Durable async invocations: enqueue (acknowledged only once committed), workers that run them
through the same ``Invoker`` as sync calls, retries with exponential backoff, dead letters.

Every database call runs on one dedicated thread (``_db``): the event loop never blocks on
``fsync`` and SQLite sees exactly one writer.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ..config import Async
from ..errors import (
    EasyFaaSError,
    FunctionNotFound,
    InvalidParameter,
    InvocationNotFound,
    ServiceUnavailable,
)
from .invoke import Invoker
from .queuedb import QueueDB

log = logging.getLogger("easyfaas.controller")

T = TypeVar("T")
# Longest a worker sleeps without looking at the table. New rows wake the workers directly and
# a retry's due time sets their timer, so this is only a safety net (a wall clock stepped back
# under a waiting retry). At 1 s, four idle workers querying the table woke an idle controller
# ~11 times a second (measured: context switches of its main thread).
POLL_S = 30.0


class AsyncQueue:
    def __init__(self, path: Path, cfg: Async, invoker: Invoker):
        self.cfg = cfg
        self.invoker = invoker
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="queue-db")
        self._db_path = path
        self.store: QueueDB | None = None
        self._wakeup = asyncio.Event()

    @property
    def _q(self) -> QueueDB:
        if self.store is None:
            raise ServiceUnavailable("the async queue is not open")
        return self.store

    async def _db(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        self.store = await self._db(QueueDB, self._db_path)
        recovered = await self._db(self.store.recover, time.time())
        if recovered:
            log.warning("requeued %d async invocations that were running at the last stop",
                        recovered)

    async def close(self) -> None:
        if self.store is not None:
            await self._db(self.store.close)
        self._executor.shutdown(wait=True)

    async def enqueue(self, function: str, qualifier: str, payload: bytes,
                      idempotency_key: str | None) -> str:
        """Durably store a call and return its invocation id."""
        self.invoker.registry.resolve(function, qualifier)  # unknown function: refuse now
        inv_id, created = await self._db(self._q.enqueue, function, qualifier, payload,
                                         idempotency_key, time.time())
        if created:
            log.info("queued fn=%s inv=%s", function, inv_id)
            self._wakeup.set()
        return inv_id

    async def status(self, inv_id: str) -> dict[str, Any]:
        row = await self._db(self._q.get, inv_id)
        if row is None:
            raise InvocationNotFound(f"Invocation not found: {inv_id}")
        return {
            "invocationId": row["id"],
            "function": row["function"],
            "status": row["status"],
            "result": None if row["result"] is None else orjson.loads(row["result"]),
            "error": None if row["error"] is None else orjson.loads(row["error"]),
            "attempts": row["attempts"],
            "createdAt": _iso(row["created_at"]),
            "updatedAt": _iso(row["updated_at"]),
        }

    async def depth(self) -> dict[str, int]:
        return await self._db(self._q.depth)

    async def run(self, stop: asyncio.Event) -> None:
        """Run ``cfg.workers`` workers until ``stop``."""
        await asyncio.gather(*(self._worker(stop) for _ in range(self.cfg.workers)))

    async def _worker(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._wakeup.clear()
            try:
                row = await self._db(self._q.claim, time.time(), self.cfg.max_age_s)
                if row is not None:
                    await self._attempt(row)
                    continue
                due = await self._db(self._q.next_due)
            except (sqlite3.Error, OSError) as e:
                # The row (if any) stays "running" and is requeued at the next start.
                log.error("async queue database error: %s", e)
                due = None
            wait = POLL_S if due is None else min(POLL_S, max(due - time.time(), 0.01))
            waiters = [asyncio.ensure_future(e.wait()) for e in (self._wakeup, stop)]
            await asyncio.wait(waiters, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            for w in waiters:
                w.cancel()

    async def _attempt(self, row: dict[str, Any]) -> None:
        inv_id, name, attempt = row["id"], row["function"], row["attempts"]
        try:
            result = await self.invoker.call(name, row["qualifier"], row["payload"], inv_id)
        except (FunctionNotFound, InvalidParameter) as e:
            # Retrying cannot help: the function (or version) is gone.
            await self._settle(inv_id, name, "failed", None, _platform_error(e))
            return
        except EasyFaaSError as e:
            error: bytes = _platform_error(e)
        else:
            if result.function_error is None:
                await self._settle(inv_id, name, "succeeded", result.body, None)
                return
            error = result.body
        if attempt > self.cfg.retries:
            await self._settle(inv_id, name, "failed", None, error)
            return
        delay = self.cfg.backoff_s * 2 ** (attempt - 1)
        log.info("retry fn=%s inv=%s attempt=%d in %.1fs", name, inv_id, attempt, delay)
        await self._db(self._q.retry, inv_id, time.time() + delay, error.decode(), time.time())
        self._wakeup.set()

    async def _settle(self, inv_id: str, name: str, status: str, result: bytes | None,
                      error: bytes | None) -> None:
        log.info("async done fn=%s inv=%s status=%s", name, inv_id, status)
        await self._db(self._q.finish, inv_id, status, result,
                       None if error is None else error.decode(), time.time())


def _platform_error(e: EasyFaaSError) -> bytes:
    return orjson.dumps({"errorType": type(e).__name__, "errorMessage": str(e)})


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
