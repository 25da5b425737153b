"""The controller's view of one sandbox: its identity, its load, and its runner connection."""

from __future__ import annotations

import time
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from .. import wire
from ..errors import EasyFaaSError
from .registry import Target


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
    # Set when a newer version went live: finish the calls in flight, take no new ones.
    retired: bool = False
    # Set once the scheduler dropped it; a dropped sandbox is never handed out again.
    dropped: bool = False

    @property
    def state(self) -> str:
        return "busy" if self.inflight else "warm"

    def has_room(self) -> bool:
        return not (self.retired or self.dropped) and self.inflight < self.target.concurrency

    def idle_seconds(self, now: float) -> float:
        return 0.0 if self.inflight else now - self.last_used

    async def load(self, timeout: float) -> str:
        """Import the handler in the runner; ``FunctionFailed`` if it does not load."""
        header, _ = await self.client.call_raw(
            {"op": "load", "function": self.target.load_spec()}, timeout=timeout)
        if not header.get("ok"):
            raise FunctionFailed(header.get("error") or {}, str(header.get("log") or ""))
        return str(header.get("log") or "")

    def invoke(self, request_id: str, payload: bytes,
               timeout: float) -> Coroutine[Any, Any, tuple[wire.Header, bytes]]:
        """One runner round trip (to await). Raises ``TimeoutError`` or ``ConnectionError``.

        Returns the wire call itself rather than awaiting it: one coroutine less on every
        call's path, each resumed on the way in and out."""
        deadline_ms = int((time.time() + timeout) * 1000)
        return self.client.call_raw({"op": "invoke", "request_id": request_id,
                                     "deadline_ms": deadline_ms}, payload, timeout)

    def describe(self, now: float) -> dict[str, Any]:
        return {"id": self.id, "function": self.target.name, "version": self.target.version,
                "state": self.state, "inflight": self.inflight, "memory": self.memory,
                "idle_seconds": round(self.idle_seconds(now), 3)}
