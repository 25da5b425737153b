"""Framing for the engine's internal unix sockets.

Every message is one frame:

    u32 total length | u32 header length | header (JSON object) | payload (raw bytes)

The header is small JSON; the payload (an event or a result) travels as raw bytes so it is never
escaped into a JSON string. Requests carry ``"id"`` and ``"op"``; responses echo ``"id"`` and carry
``"ok"``. One connection may carry many requests at once (responses can come back out of order).
The runners inside sandboxes speak the same framing with the stdlib ``json`` module.
"""

from __future__ import annotations

import asyncio
import heapq
import struct
from collections.abc import Callable
from typing import Any, cast

import orjson

MAX_FRAME = 64 * 1024 * 1024  # 64 MiB: payloads above this are refused, not buffered
_HEAD = struct.Struct(">II")

Header = dict[str, Any]


class WireError(Exception):
    """The peer sent something that is not a frame, or went away mid-frame."""


def encode(header: Header, payload: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return _HEAD.pack(len(head) + len(payload) + 4, len(head)) + head + payload


async def read_frame(reader: asyncio.StreamReader) -> tuple[Header, bytes] | None:
    """Read one frame; ``None`` on a clean end of stream between frames."""
    try:
        prefix = await reader.readexactly(8)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise WireError("connection closed mid-frame") from e
    total, head_len = _HEAD.unpack(prefix)
    if total > MAX_FRAME or head_len > total - 4:
        raise WireError(f"bad frame lengths total={total} header={head_len}")
    try:
        body = await reader.readexactly(total - 4)
    except asyncio.IncompleteReadError as e:
        raise WireError("connection closed mid-frame") from e
    try:
        header = orjson.loads(body[:head_len])
    except orjson.JSONDecodeError as e:
        raise WireError(f"bad frame header: {e}") from e
    if not isinstance(header, dict):
        raise WireError("frame header is not an object")
    return header, body[head_len:]


class RemoteError(Exception):
    """The peer answered a request with ``ok: false``."""

    def __init__(self, error: dict[str, Any]):
        self.error = error
        super().__init__(error.get("message") or error.get("errorMessage") or str(error))


class FrameBuffer:
    """Splits a byte stream into frames as it arrives."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[Header, bytes]]:
        """The frames completed by ``data``; raises ``WireError`` on a malformed one."""
        buf = self._buf
        buf += data
        frames = []
        pos = 0
        while len(buf) - pos >= 8:
            total, head_len = _HEAD.unpack_from(buf, pos)
            if total > MAX_FRAME or head_len > total - 4:
                raise WireError(f"bad frame lengths total={total} header={head_len}")
            end = pos + 4 + total
            if len(buf) < end:
                break
            try:
                header = orjson.loads(buf[pos + 8:pos + 8 + head_len])
            except orjson.JSONDecodeError as e:
                raise WireError(f"bad frame header: {e}") from e
            if not isinstance(header, dict):
                raise WireError("frame header is not an object")
            frames.append((header, bytes(buf[pos + 8 + head_len:end])))
            pos = end
        if pos:
            del buf[:pos]
        return frames

    @property
    def partial(self) -> bool:
        return bool(self._buf)


class FlowControlled(asyncio.Protocol):
    """A protocol whose writers can wait while the transport holds more than its high-water mark
    (big payloads, slow readers): ``await drain()``."""

    def __init__(self) -> None:
        # Kept, not looked up per call: get_running_loop() is a getpid() syscall each time.
        self.loop = asyncio.get_running_loop()
        self._can_write: asyncio.Future[None] | None = None

    def pause_writing(self) -> None:
        self._can_write = self.loop.create_future()

    def resume_writing(self) -> None:
        self._release_writers()
        self._can_write = None

    def _release_writers(self) -> None:
        if self._can_write is not None and not self._can_write.done():
            self._can_write.set_result(None)

    async def drain(self) -> None:
        if self._can_write is not None:
            await asyncio.shield(self._can_write)


class _ClientProtocol(FlowControlled):
    """The transport side of a ``Client``: frames in, matched to pending calls by id.

    A protocol rather than streams: on the request path every await and task counts.
    """

    def __init__(self, client: Client):
        super().__init__()
        self.client = client
        self.path = client.path
        self.pending = client._pending
        self.on_answer = client.on_answer
        self.frames = FrameBuffer()
        self.transport: asyncio.Transport | None = None
        self.lost: asyncio.Future[None] = self.loop.create_future()
        # The highest id answered here; the ids up to it at first were sent on other connections.
        self.last_id = client.issued
        # Ids whose answers were taken from the peer's record (``recover``) before they came.
        self.recovered: set[int] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not subclasses

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.frames.feed(data)
        except WireError as e:
            self._fail(ConnectionError(f"{self.path}: {e}"))
            return
        recovered = self.recovered
        for header, payload in frames:
            rid = header.get("id")
            if type(rid) is not int:
                continue  # an answer to nothing sent here
            if recovered and rid in recovered:
                recovered.discard(rid)
                continue
            if rid > self.last_id:
                self.last_id = rid
            self._answer(rid, header, payload)

    def _answer(self, rid: int, header: Header, payload: bytes) -> None:
        if self.on_answer is not None:
            self.on_answer()
        fut = self.pending.pop(rid, None)
        if fut is not None and not fut.done():
            fut.set_result((header, payload))

    def recover(self) -> None:
        """Take the answers the peer recorded but has not sent (``Client.recover``): those of
        calls sent here after the last one answered, in the order they were answered."""
        if self.client.recover is None:
            return
        for header, payload in self.client.recover():
            rid = header.get("id")
            if type(rid) is int and self.last_id < rid <= self.client.issued:
                self.last_id = rid
                self.recovered.add(rid)
                self._answer(rid, header, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(ConnectionError(f"{self.path}: {exc or 'connection closed'}"))
        if not self.lost.done():
            self.lost.set_result(None)

    def _fail(self, error: BaseException) -> None:
        self.recover()
        if self.transport is not None:
            self.transport.close()
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(error)
        self.pending.clear()
        self._release_writers()  # the call then fails with its future


class Client:
    """A persistent, multiplexed connection to one of the engine's unix sockets.

    ``call`` may be used concurrently; responses are matched to requests by id. If the
    connection drops, every pending call fails with ``ConnectionError`` and the next call
    reconnects.
    """

    def __init__(self, path: str):
        self.path = path
        self._protocol: _ClientProtocol | None = None
        self._pending: dict[int, asyncio.Future[tuple[Header, bytes]]] = {}
        self.issued = 0  # the id of the latest call; ids count up from 1
        self._lock = asyncio.Lock()
        # Calls with a timeout, earliest first: (loop-time deadline, id, future). One timer
        # serves them all, set for the earliest and set again when it fires; a timer made and
        # cancelled per call cost ~2.3 µs (uvloop), as much as the rest of sending the call.
        self._deadlines: list[tuple[float, int, asyncio.Future[tuple[Header, bytes]]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        # Connections made so far: a caller that introduces itself on a connection (the
        # trigger's ``register``) compares it to notice a reconnect.
        self.connects = 0
        # Told of every answer that arrives, also one whose caller has left (set before the
        # first call): a peer that answers in order has then started the next request.
        self.on_answer: Callable[[], None] | None = None
        # The answers a peer that answers in order kept back rather than sent (a runner:
        # docs/internals.md), should it die first or a call seem late: read when the connection
        # is lost or closed, and before a call times out (set before the first call).
        self.recover: Callable[[], list[tuple[Header, bytes]]] | None = None

    @property
    def connected(self) -> bool:
        p = self._protocol
        return p is not None and p.transport is not None and not p.transport.is_closing()

    async def _connect(self) -> _ClientProtocol:
        async with self._lock:
            if not self.connected:
                # A fresh pending map per connection: a late answer on a dead one is dropped.
                self._pending = {}
                _, protocol = await asyncio.get_running_loop().create_unix_connection(
                    lambda: _ClientProtocol(self), self.path)
                self._protocol = protocol
                self.connects += 1
            assert self._protocol is not None
            return self._protocol

    async def call_raw(self, header: Header, payload: bytes = b"", timeout: float | None = None,
                       start: asyncio.Future[None] | None = None) -> tuple[Header, bytes]:
        """Send a request and return the response frame, whatever its ``ok``.

        ``timeout`` (seconds) raises ``TimeoutError``; the late answer is dropped. It runs from
        now, or with ``start`` from when that future is done (a request the peer holds until it
        has answered an earlier one)."""
        protocol = self._protocol if self.connected else await self._connect()
        assert protocol is not None and protocol.transport is not None
        loop = protocol.loop
        rid = self.issued = self.issued + 1
        fut: asyncio.Future[tuple[Header, bytes]] = loop.create_future()
        pending = protocol.pending
        pending[rid] = fut
        if timeout is not None:
            if start is None:
                self._add_deadline(loop, loop.time() + timeout, rid, fut)
            else:
                limit = timeout

                def started(_: asyncio.Future[None]) -> None:
                    if not fut.done():
                        self._add_deadline(loop, loop.time() + limit, rid, fut)
                start.add_done_callback(started)
        try:
            protocol.transport.write(encode({**header, "id": rid}, payload))
            await protocol.drain()
            return await fut
        finally:
            pending.pop(rid, None)
            if not fut.done():  # left before its answer (cancelled while sending): no timeout
                fut.cancel()
            deadlines = self._deadlines
            while deadlines and deadlines[0][2].done():  # this call, and any before it
                heapq.heappop(deadlines)

    def _add_deadline(self, loop: asyncio.AbstractEventLoop, deadline: float, rid: int,
                      fut: asyncio.Future[tuple[Header, bytes]]) -> None:
        heapq.heappush(self._deadlines, (deadline, rid, fut))
        if self._timer is None or deadline < self._timer_at:
            self._set_timer(loop, deadline)

    def _set_timer(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = loop.call_at(at, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the calls whose time is up with ``TimeoutError``; set the timer for the next."""
        self._timer = None
        deadlines = self._deadlines
        now = loop.time()
        if self._protocol is not None and self.connected:
            self._protocol.recover()  # an answer kept back is not late
        while deadlines and (deadlines[0][0] <= now or deadlines[0][2].done()):
            fut = heapq.heappop(deadlines)[2]
            if not fut.done():
                fut.set_exception(TimeoutError())
        if deadlines:
            self._set_timer(loop, deadlines[0][0])

    async def call(self, op: str, payload: bytes = b"", **fields: Any) -> tuple[Header, bytes]:
        """Send ``op`` and return the response; raise ``RemoteError`` on ``ok: false``."""
        header, body = await self.call_raw({"op": op, **fields}, payload)
        if not header.get("ok"):
            raise RemoteError(header.get("error") or {"message": "unknown error"})
        return header, body

    async def wait_lost(self) -> None:
        """Return once the current connection is gone (at once if there is none)."""
        protocol = self._protocol
        if protocol is not None and self.connected:
            await asyncio.shield(protocol.lost)

    async def close(self) -> None:
        """Close the connection; the calls in flight fail with ``ConnectionError``, once the
        answers the peer recorded are taken (``recover``): the owner of the record may close
        it after this."""
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.recover()
            self._protocol.transport.close()
        if self._timer is not None:  # a dropped sandbox's client is not kept alive by it
            self._timer.cancel()
            self._timer = None


class Connection:
    """One served connection, as a handler sees it: a key for per-connection state (leases,
    subscriptions) and a way to write frames of its own (``watch``)."""

    def __init__(self, transport: asyncio.Transport):
        self.transport = transport

    def write(self, data: bytes) -> None:
        self.transport.write(data)

    def is_closing(self) -> bool:
        return self.transport.is_closing()

    def close(self) -> None:
        self.transport.close()


Handler = Any  # async (header, payload, conn: Connection) -> (header, payload) | None
OnClose = Any  # async (conn: Connection) -> None


class _ServerProtocol(asyncio.Protocol):
    """Serves requests from one connection, each in its own task, until the peer closes.

    ``handle(header, payload, conn)`` returns the response ``(header, payload)``; the ``id`` is
    filled in here. An exception becomes ``ok: false`` with its message, so one bad request never
    takes the connection down. A handler that streams (``watch``) writes frames itself and
    returns ``None``.
    """

    def __init__(self, handle: Handler, on_close: OnClose):
        self.handle = handle
        self.on_close = on_close
        self.frames = FrameBuffer()
        self.tasks: set[asyncio.Task[None]] = set()
        self.conn: Connection | None = None
        self.loop = asyncio.get_running_loop()  # kept: a lookup per frame costs a syscall

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.conn = Connection(cast(asyncio.Transport, transport))

    def data_received(self, data: bytes) -> None:
        assert self.conn is not None
        try:
            frames = self.frames.feed(data)
        except WireError:
            self.conn.close()  # not our protocol: drop this connection only
            return
        for header, payload in frames:
            task = self.loop.create_task(self._one(self.conn, header, payload))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self.tasks:
            task.cancel()
        if self.on_close is not None and self.conn is not None:
            task = self.loop.create_task(self.on_close(self.conn))
            _closing.add(task)
            task.add_done_callback(_closing.discard)

    async def _one(self, conn: Connection, header: Header, payload: bytes) -> None:
        rid = header.get("id")
        try:
            result = await self.handle(header, payload, conn)
            if result is None:
                return
            resp, body = result
        except Exception as e:  # noqa: BLE001 - reported to the caller, never swallowed
            resp, body = {"ok": False, "error": error_dict(e)}, b""
        if not conn.is_closing():
            conn.write(encode({"ok": True, **resp, "id": rid}, body))


# ``on_close`` tasks in flight (the loop keeps only weak references to tasks).
_closing: set[asyncio.Task[None]] = set()


def error_dict(e: BaseException) -> dict[str, Any]:
    """The wire form of an exception: its type name, message and any structured detail."""
    detail = getattr(e, "detail", None)
    out: dict[str, Any] = {"type": type(e).__name__, "message": str(e)}
    if isinstance(detail, dict):
        out.update(detail)
    return out


async def start_server(
    path: str, handle: Handler, mode: int = 0o600, on_close: OnClose = None
) -> asyncio.AbstractServer:
    """Listen on a unix socket at ``path`` (replacing a stale one) with the given file mode.
    ``on_close(conn)``, if given, is awaited when a connection ends."""
    import os

    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    server = await asyncio.get_running_loop().create_unix_server(
        lambda: _ServerProtocol(handle, on_close), path=path)
    os.chmod(path, mode)
    return server
