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
import itertools
import struct
from typing import Any

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


class Client:
    """A persistent, multiplexed connection to one of the engine's unix sockets.

    ``call`` may be used concurrently; responses are matched to requests by id. If the
    connection drops, every pending call fails with ``ConnectionError`` and the next call
    reconnects.
    """

    def __init__(self, path: str):
        self.path = path
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[int, asyncio.Future[tuple[Header, bytes]]] = {}
        self._ids = itertools.count(1)
        self._lock = asyncio.Lock()
        # Connections made so far: a caller that introduces itself on a connection (the
        # trigger's ``register``) compares it to notice a reconnect.
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _connect(self) -> asyncio.StreamWriter:
        async with self._lock:
            if self._writer is None or self._writer.is_closing():
                reader, writer = await asyncio.open_unix_connection(self.path, limit=MAX_FRAME)
                self._writer = writer
                self.connects += 1
                self._reader_task = asyncio.create_task(self._read_loop(reader, writer))
            return self._writer

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        error: BaseException = ConnectionError(f"{self.path}: connection closed")
        try:
            while True:
                frame = await read_frame(reader)
                if frame is None:
                    break
                fut = self._pending.pop(frame[0].get("id", -1), None)
                if fut is not None and not fut.done():
                    fut.set_result(frame)
        except (WireError, OSError) as e:
            error = ConnectionError(f"{self.path}: {e}")
        finally:
            writer.close()
            if self._writer is writer:
                self._writer = None
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(error)
            self._pending.clear()

    async def call_raw(self, header: Header, payload: bytes = b"") -> tuple[Header, bytes]:
        """Send a request and return the response frame, whatever its ``ok``."""
        writer = await self._connect()
        rid = next(self._ids)
        fut: asyncio.Future[tuple[Header, bytes]] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            writer.write(encode({**header, "id": rid}, payload))
            await writer.drain()
            return await fut
        finally:
            self._pending.pop(rid, None)

    async def call(self, op: str, payload: bytes = b"", **fields: Any) -> tuple[Header, bytes]:
        """Send ``op`` and return the response; raise ``RemoteError`` on ``ok: false``."""
        header, body = await self.call_raw({"op": op, **fields}, payload)
        if not header.get("ok"):
            raise RemoteError(header.get("error") or {"message": "unknown error"})
        return header, body

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._reader_task is not None:
            self._reader_task.cancel()
            try:
                await self._reader_task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing anyway
                pass


Handler = Any  # async (header, payload, conn) -> (header, payload) | None


async def serve_connection(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, handle: Handler,
    on_close: Any = None,
) -> None:
    """Serve requests from one connection, each in its own task, until the peer closes.

    ``handle(header, payload, writer)`` returns the response ``(header, payload)``; the ``id`` is
    filled in here. An exception becomes ``ok: false`` with its message, so one bad request never
    takes the connection down. A handler that streams (``watch``) writes frames itself and
    returns ``None``.
    """
    tasks: set[asyncio.Task[None]] = set()

    async def one(header: Header, payload: bytes) -> None:
        rid = header.get("id")
        try:
            result = await handle(header, payload, writer)
            if result is None:
                return
            resp, body = result
        except Exception as e:  # noqa: BLE001 - reported to the caller, never swallowed
            resp, body = {"ok": False, "error": error_dict(e)}, b""
        if not writer.is_closing():
            writer.write(encode({"ok": True, **resp, "id": rid}, body))

    try:
        while True:
            try:
                frame = await read_frame(reader)
            except (WireError, OSError):
                break
            if frame is None:
                break
            task = asyncio.create_task(one(*frame))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
    finally:
        for task in tasks:
            task.cancel()
        writer.close()
        if on_close is not None:
            await on_close(writer)


def error_dict(e: BaseException) -> dict[str, Any]:
    """The wire form of an exception: its type name, message and any structured detail."""
    detail = getattr(e, "detail", None)
    out: dict[str, Any] = {"type": type(e).__name__, "message": str(e)}
    if isinstance(detail, dict):
        out.update(detail)
    return out


async def start_server(
    path: str, handle: Handler, mode: int = 0o600, on_close: Any = None
) -> asyncio.AbstractServer:
    """Listen on a unix socket at ``path`` (replacing a stale one) with the given file mode.
    ``on_close(writer)``, if given, is awaited when a connection ends."""
    import os

    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    server = await asyncio.start_unix_server(
        lambda r, w: serve_connection(r, w, handle, on_close), path=path, limit=MAX_FRAME
    )
    os.chmod(path, mode)
    return server
