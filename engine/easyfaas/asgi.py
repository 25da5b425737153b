"""Serve an ASGI application (the controller's sanic app) behind the engine's ``http1`` layer.

The controller answers its invoke route on ``http1`` itself and passes every other API request
to its sanic app through here. ``http1`` hands over whole requests, and every answer of the API
is whole too, so a request is one ``http.request`` message and its response is collected from
the ``http.response.*`` messages before it goes out. The app gets the ASGI lifespan events, as
from any ASGI server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

from .http1 import HttpResponse, Request, client_error

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Application = Callable[[Message, Receive, Send], Awaitable[None]]

_ASGI = {"version": "3.0", "spec_version": "2.3"}


class AsgiApp:
    """One ASGI application: ``startup``, then call it with requests, then ``shutdown``."""

    def __init__(self, app: Application):
        self.app = app
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._lifespan: asyncio.Future[None] | None = None

    async def startup(self) -> None:
        scope = {"type": "lifespan", "asgi": _ASGI}
        self._lifespan = asyncio.ensure_future(
            self.app(scope, self._to_app.get, self._from_app.put))
        await self._lifespan_event("startup")

    async def shutdown(self) -> None:
        if self._lifespan is not None and not self._lifespan.done():
            await self._lifespan_event("shutdown")
            await self._lifespan

    async def _lifespan_event(self, event: str) -> None:
        assert self._lifespan is not None
        await self._to_app.put({"type": f"lifespan.{event}"})
        answer = asyncio.ensure_future(self._from_app.get())
        waits: list[asyncio.Future[Any]] = [answer, self._lifespan]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            self._lifespan.result()  # raises what ended the app's lifespan early
            raise RuntimeError(f"the ASGI app ended its lifespan before {event} completed")
        message = answer.result()
        if message["type"] != f"lifespan.{event}.complete":
            raise RuntimeError(f"ASGI app {event} failed: {message.get('message', '')}")

    async def __call__(self, request: Request) -> HttpResponse:
        scope = {
            "type": "http", "asgi": _ASGI, "http_version": "1.1", "scheme": "http",
            "method": request.method, "path": unquote(request.path),
            "raw_path": request.path.encode("ascii"),
            "query_string": request.query.encode("ascii"), "root_path": "",
            "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in request.headers],
            "client": (request.client_ip, 0), "server": None,
        }
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            # Nothing more will come: wait like a server waits for the client to go away
            # (http1 cancels this request's task then).
            await asyncio.get_running_loop().create_future()
            raise AssertionError("unreachable")

        start: Message = {}
        body: list[bytes] = []

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        await self.app(scope, receive, send)
        if not start:
            return client_error(500, "the API answered nothing")
        headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in start.get("headers", [])]
        return HttpResponse(int(start["status"]), headers, b"".join(body))
