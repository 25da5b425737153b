"""One call end to end: resolve → take a sandbox → one runner round trip → result.

Whatever happens to the function (error, timeout, crash, OOM) the platform still "ran" it: the
caller gets a ``CallResult`` with ``function_error`` set. Only platform problems (unknown
function, no capacity, funclet down) raise ``EasyFaaSError``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .. import funclog
from ..errors import InvalidRequestContent
from ..requestid import RequestIds
from .metrics import Metrics
from .registry import Registry, Target
from .sandboxes import CallNotStarted, FunctionFailed, Sandbox
from .scheduler import Scheduler

log = logging.getLogger("easyfaas.controller")

LOG_TAIL_BYTES = 4096
_OUTCOMES = {"TimeoutError": "timeout", "Runtime.OutOfMemory": "oom",
             "Runtime.ExitError": "crash"}


@dataclass
class CallResult:
    request_id: str
    version: int
    body: bytes
    function_error: str | None
    log: str
    exectime_ms: float
    error_type: str | None = None

    @property
    def outcome(self) -> str:
        """The metrics label: ok, error (the function's own), timeout, oom or crash."""
        if self.error_type is None:
            return "ok"
        return _OUTCOMES.get(self.error_type, "error")

    def log_tail(self) -> str:
        raw = self.log.encode("utf-8", "replace")[-LOG_TAIL_BYTES:]
        return raw.decode("utf-8", "ignore")


def checked_event(payload: bytes) -> bytes:
    """The event to send: empty means ``{}``; anything that is not JSON is refused."""
    if not payload.strip():
        return b"{}"
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError as e:
        raise InvalidRequestContent(f"Could not parse request body into json: {e}") from e
    return payload


class Invoker:
    def __init__(self, registry: Registry, scheduler: Scheduler, metrics: Metrics,
                 logs: FunctionLogWriter):
        self.registry = registry
        self.scheduler = scheduler
        self.metrics = metrics
        self.logs = logs
        self.ids = RequestIds()  # made here, in the controller process, after the fork

    async def call(self, name: str, qualifier: str | None, payload: bytes,
                   request_id: str | None = None) -> CallResult:
        """Run one call; raises only platform errors (see the module docstring)."""
        request_id = request_id or self.ids.new()
        target = self.registry.resolve(name, qualifier)
        started = time.monotonic()
        behind = True
        while True:
            try:
                sb = await self.scheduler.acquire(target, behind=behind)
            except FunctionFailed as e:
                result = _failed(request_id, target, e.error, e.log, started)
                break
            try:
                result = await self._run(sb, target, request_id, payload, started)
                break
            except CallNotStarted:
                # It waited behind a call that failed and took the sandbox with it; it never
                # ran, so it goes again, this time without waiting behind another call.
                behind = False
        self.metrics.count(name, result.outcome)
        self.logs.record(target, result)
        return result

    async def _run(self, sb: Sandbox, target: Target, request_id: str, payload: bytes,
                   started: float) -> CallResult:
        invoke_start = time.monotonic()
        call, turn = sb.invoke(request_id, payload, target.timeout)
        try:
            header, body = await call
        except TimeoutError:
            await self.scheduler.kill(sb, f"inv={request_id} timed out")
            message = f"{request_id} Task timed out after {target.timeout:.2f} seconds"
            return _failed(request_id, target, {"errorMessage": message,
                                                "errorType": "TimeoutError"}, "", started)
        except (ConnectionError, OSError) as e:
            return await self._crashed(sb, target, request_id, started, e)
        except asyncio.CancelledError:
            # The caller left. A call still waiting behind others gives up its turn; one that
            # runs may go on running in there.
            waiting = turn is not None and turn.cancel()
            self.scheduler.abandon(sb, f"inv={request_id} abandoned by its caller",
                                   running=not waiting)
            raise
        self.scheduler.observe(target.name, header)
        self.scheduler.release(sb)
        self.metrics.observe("invoke", target.name, time.monotonic() - invoke_start)
        call_log = str(header.get("log") or "")
        if not header.get("ok"):
            return _failed(request_id, target, header.get("error") or {}, call_log, started)
        return CallResult(request_id, target.version, body, None, call_log, _ms_since(started))

    async def _crashed(self, sb: Sandbox, target: Target, request_id: str, started: float,
                       cause: BaseException) -> CallResult:
        outcome = await self.scheduler.kill(sb, f"inv={request_id} runner connection lost")
        if outcome.get("oom"):
            error = {"errorType": "Runtime.OutOfMemory",
                     "errorMessage": f"{request_id} function ran out of memory "
                                     f"(limit {target.memory} MB)"}
        else:
            error = {"errorType": "Runtime.ExitError",
                     "errorMessage": f"{request_id} the runtime exited unexpectedly"}
        log.warning("fn=%s ver=%s sb=%s inv=%s %s (%s; funclet: %s)", target.name,
                    target.version, sb.id, request_id, error["errorType"], cause,
                    outcome.get("reason"))
        return _failed(request_id, target, error, "", started)


def _ms_since(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 3)


def _failed(request_id: str, target: Target, error: Mapping[str, Any], call_log: str,
            started: float) -> CallResult:
    error_type = str(error.get("errorType", "Runtime.Unknown"))
    body = orjson.dumps({"errorMessage": str(error.get("errorMessage", "")),
                         "errorType": error_type})
    return CallResult(request_id, target.version, body, "Unhandled", call_log, _ms_since(started),
                      error_type)


class FunctionLogWriter:
    """Writes START/log/END/REPORT records to the function logs right after the answers of an
    event-loop turn have gone out, one append per function per turn.

    In the loop rather than on a thread: a thread hop per call cost more than the call itself
    under load (docs/performance.md), while an ``O_APPEND`` write of a few records lands in the
    page cache. A record is on disk before the next turn, so a crash loses none of them.
    """

    def __init__(self, state_dir: Path):
        self._files = funclog.Appender(state_dir)
        self._records: list[tuple[str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def record(self, target: Target, result: CallResult) -> None:
        rid = result.request_id
        call_log = result.log if not result.log or result.log.endswith("\n") else result.log + "\n"
        text = (f"START RequestId: {rid} Version: {target.version}\n{call_log}"
                f"END RequestId: {rid}\n"
                f"REPORT RequestId: {rid} Duration: {result.exectime_ms:.2f} ms "
                f"Memory Size: {target.memory} MB\n")
        if not self._records:
            if self._loop is None:  # kept: get_running_loop() is a getpid() syscall per call
                self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self.flush)
        self._records.append((target.name, text))

    def flush(self) -> None:
        batch, self._records = self._records, []
        self._write(batch)

    def close(self) -> None:
        self.flush()
        self._files.close()

    def _write(self, batch: list[tuple[str, str]]) -> None:
        by_fn: dict[str, list[str]] = {}
        for name, text in batch:
            by_fn.setdefault(name, []).append(text)
        for name, texts in by_fn.items():
            try:
                self._files.append(name, "".join(texts))
            except OSError as e:
                log.error("cannot write the function log fn=%s: %s", name, e)
