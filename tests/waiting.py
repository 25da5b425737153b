"""Waiting in tests for something another process, thread or task does: poll a condition until
it holds and fail, naming it, when it does not in time.

Polling rather than sleeping: a wait ends as soon as its condition holds, the interval only sets
how often it looks, and the timeout only how long a broken build takes to fail.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

INTERVAL = 0.02  # seconds between looks
TIMEOUT = 10.0


def wait_until(cond: Callable[[], T], what: str = "the condition", *,
               timeout: float = TIMEOUT) -> T:
    """``cond()``'s first truthy value; ``AssertionError`` naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(INTERVAL)
    return value


async def async_wait_until(cond: Callable[[], T | Awaitable[T]], what: str = "the condition",
                           *, timeout: float = TIMEOUT) -> T:
    """The same inside an event loop, which keeps running while it waits; ``cond`` may be a
    coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]  # not an awaitable any more
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(INTERVAL)
