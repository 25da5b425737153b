"""HTTP/1.1 for the engine's data paths: httptools (Node's llhttp) parses, this module frames.

The HTTP layer is most of a warm call's cost in the trigger and in the invoke API. Under sanic
the trigger took 140-160 µs of CPU per request on the bench machine (sanic's own request and
response machinery ~105 of them); on httptools with one asyncio protocol per connection it takes
50-60 µs, mapping and controller hop included (docs/performance.md). httptools is the parser
sanic itself imports. The trigger serves everything with one handler; the controller serves its
invoke route here and hands every other API request to its sanic app (``asgi.py``), where
routing, JSON bodies and error pages earn their cost.

Per connection: requests are answered one at a time and in order (pipelined ones wait their turn;
reading pauses once ``MAX_QUEUED`` are waiting); keep-alive unless the client or HTTP/1.0 says
otherwise; bodies by Content-Length or chunked, at most ``MAX_BODY`` unless the server is given
another limit (413); request line and
headers at most ``MAX_HEAD`` (431); the request line and headers must arrive within
``REQUEST_TIMEOUT_S``, and then the body must not stall for that long (408); an idle connection
closes after ``KEEP_ALIVE_TIMEOUT_S``; anything unparsable is a 400
and the connection closes. An ``Upgrade`` is ignored (the request is served over HTTP/1.1, as RFC
9110 allows). A response gets its own Content-Length and Connection headers: framing headers from
the handler are dropped, header names that are not HTTP tokens are dropped, and CR, LF and NUL
are stripped from values.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, cast
from urllib.parse import parse_qsl

import httptools
import orjson

from .listening import address, bind
from .wire import FlowControlled

log = logging.getLogger("easyfaas.http")

MAX_HEAD = 16 * 1024  # request line + headers
MAX_BODY = 32 * 1024 * 1024  # base64 in the event stays under the engine's 64 MiB frames
REQUEST_TIMEOUT_S = 60.0  # for the request line and headers; then between pieces of the body
KEEP_ALIVE_TIMEOUT_S = 120.0  # an idle connection between requests
MAX_QUEUED = 8  # pipelined requests read ahead before reading pauses
STOP_GRACE_S = 5.0  # on shutdown, for the answers in flight

_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FRAMING = frozenset({"content-length", "transfer-encoding", "connection"})
_CLEAN = str.maketrans("", "", "\r\n\x00")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(slots=True)
class Request:
    method: str
    path: str  # as sent: percent-escapes are kept
    query: str
    headers: list[tuple[str, str]]  # names in lower case, in the order sent
    body: bytes
    client_ip: str

    def query_args(self) -> list[tuple[str, str]]:
        if not self.query:
            return []
        return parse_qsl(self.query, keep_blank_values=True, errors="replace")

    def header(self, name: str) -> str | None:
        """The last value of header ``name`` (lower case), or None."""
        for key, value in reversed(self.headers):
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""


Handler = Callable[[Request], Awaitable[HttpResponse]]


def json_response(status: int, value: Any,
                  headers: list[tuple[str, str]] | None = None) -> HttpResponse:
    return HttpResponse(status, [("content-type", "application/json"), *(headers or [])],
                        orjson.dumps(value))


def error_response(status: int, code: str, message: str, kind: str) -> HttpResponse:
    """An error in the engine's JSON shape (``EasyFaaSError.to_api``)."""
    return json_response(status, {"Code": code, "Message": message, "Cause": "",
                                  "Status": status, "Type": kind})


def client_error(status: int, message: str) -> HttpResponse:
    """A request the HTTP layer refused (malformed, too big, too slow), or a handler's failure
    (500)."""
    phrase = HTTPStatus(status).phrase.title().replace(" ", "").replace("-", "")
    return error_response(status, f"{phrase}Exception", message,
                          "Server" if status >= 500 else "User")


class _Refused(Exception):
    """A request this layer answers itself (4xx) before closing the connection."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


# Header names seen in answers: whether each may be sent. Bounded, since a function's proxy
# response may name its headers as it likes; the engine's own few are checked once.
_NAME_ALLOWED: dict[str, bool] = {}


def _allowed(name: str) -> bool:
    allowed = _NAME_ALLOWED.get(name)
    if allowed is None:
        allowed = bool(_TOKEN.fullmatch(name)) and name.lower() not in _FRAMING
        if len(_NAME_ALLOWED) < 256:
            _NAME_ALLOWED[name] = allowed
    return allowed


def encode_response(resp: HttpResponse, keep_alive: bool, head_only: bool) -> list[bytes]:
    """The bytes of one response: status line and headers, then the body (if it has one)."""
    status = resp.status
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
    for name, value in resp.headers:
        if not _allowed(name):
            continue
        lines.append(f"{name}: {value.translate(_CLEAN)}\r\n".encode("utf-8", "surrogateescape"))
    bodiless = status < 200 or status in (204, 304)
    if not bodiless:
        lines.append(b"content-length: %d\r\n" % len(resp.body))
    lines.append(b"connection: keep-alive\r\n\r\n" if keep_alive else b"connection: close\r\n\r\n")
    head = b"".join(lines)
    if bodiless or head_only or not resp.body:
        return [head]
    return [head, resp.body]


class _Connection(FlowControlled):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, handler: Handler, connections: set[_Connection], max_body: int,
                 run_to_end: bool):
        super().__init__()
        self.handler = handler
        self.max_body = max_body
        self.run_to_end = run_to_end
        self.connections = connections
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self.queue: deque[tuple[Request, bool, bool]] = deque()  # (request, keep_alive, HEAD)
        self.task: asyncio.Task[None] | None = None  # the answer being made
        # Loop time by which more must arrive (None while answering), and the one timer that
        # enforces it, which fires at ``timer_at`` (see ``_arm``).
        self.deadline: float | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        self.closing = False
        self.last = False  # the server is stopping: the answer in flight is the last one
        self.paused = False
        # The request being parsed.
        self._partial = False
        self._began = 0.0  # loop time of the request's first byte
        self._url = b""
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []
        self._head_size = 0  # from the parser's callbacks
        self._head_bytes = 0  # as received, while the head is incomplete
        self._in_head = False
        self._completed = 0  # requests completed in the chunk being fed
        self._body_size = 0
        self._keep_alive = True

    # -- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = peer[0] if isinstance(peer, tuple) else ""
        self.connections.add(self)
        self._arm(KEEP_ALIVE_TIMEOUT_S)

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        head_before = self._in_head
        self._completed = 0
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            # The request before the upgrade is queued; serve on over HTTP/1.1.
            self.parser = httptools.HttpRequestParser(self)
            self.data_received(data[e.args[0]:])
            return
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _Refused):
                self._refuse(cause.status, str(cause))
            else:
                log.exception("http: parser callback failed", exc_info=cause)
                self._refuse(500, "internal error")
        except httptools.HttpParserError as e:
            self._refuse(400, f"malformed request: {e}")
        if self._in_head and not self.closing and (head_before or not self._completed):
            # httptools holds a header back until it is complete, so its callbacks cannot see
            # an endless one: count what arrives while the head is incomplete. (A chunk that
            # also completed other requests is not counted; one chunk is at most 256 KiB.)
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._refuse(431, f"request line and headers over {MAX_HEAD} bytes")
        if self._partial and self.task is None and not self.closing:
            self._wait_for_more()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.connections.discard(self)
        self._disarm()
        self.queue.clear()
        if self.task is not None and self.run_to_end:
            # Nobody reads the answer any more, but the work goes on: hold the task, whose
            # only other holders may be the futures it waits for.
            _unanswered.add(self.task)
            self.task.add_done_callback(_unanswered.discard)
        elif self.task is not None:
            self.task.cancel()  # the caller is gone: stop waiting for its answer
        self._release_writers()

    # -- httptools callbacks --------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._partial = True
        self._began = self.loop.time()
        self._in_head = True
        self._head_bytes = 0
        self._url = b""
        self._headers = []
        self._body = []
        self._head_size = 0
        self._body_size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._grow_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._grow_head(len(name) + len(value))
        self._headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._keep_alive = self.parser.should_keep_alive()
        expect = False
        for name, value in self._headers:
            if name == "content-length" and value.isdigit() and int(value) > self.max_body:
                raise _Refused(413, f"request body over {self.max_body} bytes")
            expect = expect or (name == "expect" and value.lower() == "100-continue")
        if expect and self.task is None and not self.queue:
            # Only when nothing is answered before it: a 100 must not land inside an answer.
            self._write([_CONTINUE])

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self.max_body:
            raise _Refused(413, f"request body over {self.max_body} bytes")
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._partial = False
        self._completed += 1
        method = self.parser.get_method().decode("ascii")
        url = self._url
        if not url.isascii():
            raise _Refused(400, "the URL may only contain US-ASCII characters")
        try:
            parsed = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise _Refused(400, "malformed URL") from None
        request = Request(
            method=method,
            path=(parsed.path or b"/").decode("ascii"),
            query=(parsed.query or b"").decode("ascii"),
            headers=self._headers,
            body=b"".join(self._body),
            client_ip=self.client_ip,
        )
        self.queue.append((request, self._keep_alive, method == "HEAD"))
        if len(self.queue) >= MAX_QUEUED and not self.paused and self.transport is not None:
            self.paused = True
            self.transport.pause_reading()
        if self.task is None:
            self._next()

    # -- answering ------------------------------------------------------------------------------

    def _next(self) -> None:
        """Answer the next queued request, or wait for one."""
        if self.closing:
            return
        if not self.queue:
            if self.paused and self.transport is not None:
                self.paused = False
                self.transport.resume_reading()
            self._wait_for_more()
            return
        self.deadline = None  # answering: no deadline until the next wait
        request, keep_alive, head_only = self.queue.popleft()
        self.task = self.loop.create_task(self._answer(request, keep_alive, head_only))

    async def _answer(self, request: Request, keep_alive: bool, head_only: bool) -> None:
        try:
            resp = await self.handler(request)
        except Exception:  # noqa: BLE001 - a bug answers this request, not the connection
            log.exception("http: handler failed for %s %s", request.method, request.path)
            resp = client_error(500, "internal error")
        self.task = None
        if self.closing:
            return
        keep_alive = keep_alive and not self.last
        self._write(encode_response(resp, keep_alive, head_only))
        if not keep_alive:
            self._close()
            return
        await self.drain()  # a slow reader: no next answer until this one has gone
        self._next()

    def _refuse(self, status: int, message: str) -> None:
        """Answer a request this layer cannot take, then close: the stream is out of step."""
        if self.closing:
            return
        log.info("http: %d for %s: %s", status, self.client_ip, message)
        if self.task is None and not self.queue:
            self._write(encode_response(client_error(status, message), False, False))
        self._close()

    def _write(self, data: list[bytes]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(data)

    def _close(self) -> None:
        self.closing = True
        self.queue.clear()
        self._disarm()
        if self.transport is not None:
            self.transport.close()

    def stop(self) -> None:
        """Close now if idle; otherwise finish the answer in flight, then close."""
        self.last = True
        self.queue.clear()
        if self.task is None:
            self._close()

    # -- timeouts -------------------------------------------------------------------------------

    def _wait_for_more(self) -> None:
        """Nothing to answer: time the wait for the next request, or for the rest of this one.

        Set once a read is parsed rather than per parser event, so a request that arrives whole
        costs no timer of its own."""
        if not self._partial:
            self._arm(KEEP_ALIVE_TIMEOUT_S)
        elif self._in_head:  # one deadline from the head's first byte: no drip-feeding it
            self._arm(self._began + REQUEST_TIMEOUT_S - self.loop.time())
        else:  # a body may take long on a slow link, as long as it keeps coming
            self._arm(REQUEST_TIMEOUT_S)

    def _arm(self, seconds: float) -> None:
        """Expect more within ``seconds``. The timer moves only when that is sooner than it
        fires; otherwise it fires, finds the later deadline and sets itself again. A timer made
        and cancelled per request cost ~2 µs of the trigger's ~50 (uvloop)."""
        self.deadline = deadline = self.loop.time() + seconds
        if self.timer is None or deadline < self.timer_at:
            self._set_timer(deadline)

    def _set_timer(self, at: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = at
        self.timer = self.loop.call_at(at, self._expired)

    def _disarm(self) -> None:
        self.deadline = None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _expired(self) -> None:
        self.timer = None
        if self.deadline is None:
            return  # answering: the next wait sets the timer again
        if self.loop.time() < self.deadline:
            self._set_timer(self.deadline)
            return
        if self._partial:
            self._refuse(408, "the request did not arrive in time")
        else:
            self._close()

    def _grow_head(self, size: int) -> None:
        self._head_size += size
        if self._head_size > MAX_HEAD:
            raise _Refused(431, f"request line and headers over {MAX_HEAD} bytes")


# Answers whose client hung up, made to their end on a ``run_to_end`` server.
_unanswered: set[asyncio.Task[None]] = set()


@asynccontextmanager
async def serving(handler: Handler, listen: str, max_body: int | None = None,
                  run_to_end: bool = False) -> AsyncIterator[str]:
    """Serve ``handler`` on ``listen`` for the duration of the block; yields the bound address.
    Request bodies may be up to ``max_body`` bytes (default ``MAX_BODY``). A client that hangs
    up cancels the handling of its request, unless ``run_to_end``: then the handler finishes and
    its answer is dropped.

    On leaving: stop accepting, close idle connections, give answers in flight ``STOP_GRACE_S``.
    """
    sock: socket.socket = bind(listen)
    connections: set[_Connection] = set()
    loop = asyncio.get_running_loop()
    limit = MAX_BODY if max_body is None else max_body
    server = await loop.create_server(
        lambda: _Connection(handler, connections, limit, run_to_end), sock=sock)
    try:
        yield address(sock)
    finally:
        server.close()
        busy = [c.task for c in connections if c.task is not None]
        for conn in list(connections):
            conn.stop()
        if busy:
            await asyncio.wait(busy, timeout=STOP_GRACE_S)
        for conn in list(connections):
            conn._close()
        await server.wait_closed()
