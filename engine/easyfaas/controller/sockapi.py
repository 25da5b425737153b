"""``controller.sock``: the internal fast path the httptrigger (and CLI) use to invoke.

Ops as in docs/internals.md: ``ping``, ``register``, ``invoke``, ``routes``. Platform errors are
raised and travel back as ``ok: false`` with the errors.py type name (``wire.serve_connection``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .. import wire
from ..errors import InvalidParameter
from .invoke import checked_event

if TYPE_CHECKING:
    from .service import Controller

log = logging.getLogger("easyfaas.controller")


class SocketAPI:
    def __init__(self, ctl: Controller):
        self.ctl = ctl
        # Connections that said "register"; healthz counts the ones still open.
        self._triggers: set[wire.Connection] = set()
        self._conns: set[wire.Connection] = set()

    def trigger_registered(self) -> bool:
        self._triggers = {w for w in self._triggers if not w.is_closing()}
        return bool(self._triggers)

    async def handle(self, header: wire.Header, payload: bytes,
                     writer: wire.Connection) -> tuple[dict[str, Any], bytes]:
        self._conns.add(writer)
        op = header.get("op")
        if op == "invoke":
            return await self._invoke(header, payload)
        if op == "ping":
            return {}, b""
        if op == "register":
            self._triggers.add(writer)
            log.info("trigger registered component=%s", header.get("component"))
            return {}, b""
        if op == "routes":
            return {"routes": self.ctl.registry.routes()}, b""
        raise InvalidParameter(f"unknown op {op!r}")

    async def _invoke(self, header: wire.Header, payload: bytes) -> tuple[dict[str, Any], bytes]:
        name = header.get("function")
        if not isinstance(name, str) or not name:
            raise InvalidParameter("invoke needs 'function'")
        result = await self.ctl.invoker.call(name, header.get("qualifier"),
                                             checked_event(payload), header.get("request_id"))
        return {
            "function_error": result.function_error,
            "log": result.log_tail() if header.get("log_tail") else None,
            "exectime_ms": result.exectime_ms,
            "request_id": result.request_id,
        }, result.body

    def close(self) -> None:
        """Hang up on every client (the server itself is closed by the caller)."""
        for writer in self._conns:
            writer.close()
        self._conns.clear()
        self._triggers.clear()
