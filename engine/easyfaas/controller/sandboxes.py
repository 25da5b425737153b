"""The controller's view of one sandbox: its identity, its load, and its runner connection."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from .. import wire
from ..errors import EasyFaaSError
from .kept import KeptAnswers
from .registry import Target

Answer = tuple[wire.Header, bytes]  # a runner's answer frame


class CallNotStarted(Exception):
    """A call sent behind another in a sandbox never ran: the call ahead of it failed and took
    the sandbox with it. Safe to send again elsewhere."""


class FunctionFailed(EasyFaaSError):
    """The function itself failed before a result (e.g. its handler did not load).

    Not a platform error: the API answers 200 + ``X-easyfaas-Function-Error``.
    """

    def __init__(self, error: dict[str, Any], log: str = ""):
        super().__init__(str(error.get("errorMessage", "function failed")))
        self.error = {"errorMessage": str(error.get("errorMessage", "")),
                      "errorType": str(error.get("errorType", "Runtime.Unknown"))}
        self.log = log


@dataclass(eq=False)
class Sandbox:
    """A warm sandbox bound to exactly one ``Target`` (it never serves another)."""

    id: str
    target: Target
    memory: int
    client: wire.Client
    inflight: int = 0
    last_used: float = field(default_factory=time.monotonic)
    # Why it takes no new calls but finishes those in flight (a newer version went live, ...).
    retired: str = ""
    # Set once the scheduler dropped it; a dropped sandbox is never handed out again.
    dropped: bool = False
    # Its runner answers one call at a time in the order sent (it says so when it loads), so a
    # call may be sent while the one before still runs: it waits in the runner's socket.
    in_order: bool = False
    # Calls sent to the runner and not answered yet; with ``in_order``, the first is running.
    sent: int = 0
    # One per call waiting behind the running one, in the order sent: told when that call
    # starts (the runner answered the one before). Cancelled: that call's caller left before it.
    _turns: deque[asyncio.Future[None]] = field(default_factory=deque, init=False, repr=False)
    # Called if a call whose caller left (nobody waits for its answer) runs past the function's
    # timeout (``hold_to_timeout``): the calls behind it would otherwise never start.
    on_overrun: Callable[[Sandbox], None] | None = None
    # The funclet could not destroy it: its runner may still run the calls in its socket.
    fate_unknown: bool = False
    # Its runner's record of the answers it kept back (python3), read when its connection ends.
    kept: KeptAnswers | None = None
    _orphan_timer: asyncio.TimerHandle | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        # Every answer counts, also one whose caller has left: the runner has then started the
        # next call in its socket, whoever still waits for it.
        self.client.on_answer = self._answered
        if self.kept is not None:
            self.client.recover = self.kept.read
        # Kept, not looked up per call: get_running_loop() is a getpid() syscall each time.
        self._loop = asyncio.get_running_loop()

    @property
    def state(self) -> str:
        return "busy" if self.inflight else "warm"

    def has_room(self) -> bool:
        return not (self.retired or self.dropped) and self.inflight < self.target.concurrency

    def idle_seconds(self, now: float) -> float:
        return 0.0 if self.inflight else now - self.last_used

    async def load(self, timeout: float) -> str:
        """Import the handler in the runner; ``FunctionFailed`` if it does not load."""
        request: wire.Header = {"op": "load", "function": self.target.load_spec()}
        if self.kept is not None:
            request["keep_answers"] = True
        header, _ = await self.client.call_raw(request, timeout=timeout)
        if not header.get("ok"):
            raise FunctionFailed(header.get("error") or {}, str(header.get("log") or ""))
        self.in_order = header.get("in_order") is True
        return str(header.get("log") or "")

    async def close(self) -> None:
        """Close its runner connection (the calls in flight fail), then its record."""
        await self.client.close()
        if self.kept is not None:
            self.kept.close()

    def invoke(self, request_id: str, payload: bytes,
               timeout: float) -> tuple[Coroutine[Any, Any, Answer], asyncio.Future[None] | None]:
        """One runner round trip (to await), and for a call sent behind others its turn: the
        future told when it starts. The round trip raises ``TimeoutError`` or
        ``ConnectionError``, and ``CallNotStarted`` for a call sent behind one that failed.

        Returns the wire call itself rather than awaiting it: one coroutine less on every
        call's path, each resumed on the way in and out."""
        self.sent += 1
        if self.sent > 1 and self.in_order:  # else the calls run side by side (concurrency > 1)
            turn: asyncio.Future[None] = self._loop.create_future()
            self._turns.append(turn)
            return self._invoke_behind(request_id, payload, timeout, turn), turn
        deadline_ms = int((time.time() + timeout) * 1000)
        return self.client.call_raw({"op": "invoke", "request_id": request_id,
                                     "deadline_ms": deadline_ms}, payload, timeout), None

    def _answered(self) -> None:
        """The runner answered a call (``load``'s answer comes before any is sent): the next
        call sent behind it, if any, is running now."""
        if not self.sent:
            return
        self.sent -= 1
        if self._orphan_timer is not None:  # that was the answer nobody waits for
            self._orphan_timer.cancel()
            self._orphan_timer = None
        if self._turns:
            turn = self._turns.popleft()
            if turn.cancelled():
                self.hold_to_timeout()
            else:
                turn.set_result(None)

    def hold_to_timeout(self) -> None:
        """The running call's caller has left (it left while the call waited, or while it ran):
        nobody waits for its answer, but the calls behind it wait for it to end. Hold it to the
        function's timeout from now, as its caller's invoker would have; its answer cancels
        this."""
        self._orphan_timer = self._loop.call_later(self.target.timeout, self._overran)

    def _overran(self) -> None:
        self._orphan_timer = None
        if self.on_overrun is not None and not self.dropped:
            self.on_overrun(self)

    async def _invoke_behind(self, request_id: str, payload: bytes, timeout: float,
                             turn: asyncio.Future[None]) -> Answer:
        """Send now, so the runner finds the call when it answers the one before. Its timeout
        runs from when it starts; no ``deadline_ms`` either: the runner counts the function's
        timeout from when it starts the call."""
        try:
            return await self.client.call_raw({"op": "invoke", "request_id": request_id},
                                              payload, timeout, start=turn)
        except (ConnectionError, OSError) as e:
            # It never ran (its own timeout starts with it), and will not where it was sent.
            if not turn.done() and not self.fate_unknown:
                raise CallNotStarted(f"{self.id}: a call ahead failed") from e
            raise

    def describe(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "function": self.target.name, "version": self.target.version,
                "state": self.state, "inflight": self.inflight, "memory": self.memory,
                "idle_seconds": round(self.idle_seconds(now), 3)}
