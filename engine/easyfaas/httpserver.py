"""Run a sanic app inside the component's own asyncio loop, on one listening socket.

Sanic's own runner forks worker processes and owns the loop; an engine component is a single
small process with other servers on the same loop, so it uses sanic's low-level server instead.
"""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sanic import Sanic
from sanic.http import Http

from .config import parse_listen


def bind(listen: str) -> socket.socket:
    """Bind ``HOST:PORT`` (port 0 picks a free one) and start listening."""
    host, port = parse_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    return sock


def write_addr(path: Path, addr: str) -> None:
    """Publish the bound address for the CLI and tests, atomically: never a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(addr + "\n")
    os.replace(tmp, path)


def address(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@asynccontextmanager
async def serving(app: Sanic, listen: str) -> AsyncIterator[str]:
    """Serve ``app`` on ``listen`` for the duration of the block; yields the bound address."""
    # Sanic's "touchup" rewrites its request-path methods, class-wide, to drop the dispatch of
    # signals nobody listens to (our apps listen to none): a third of sanic's per-request cost
    # (docs/performance.md). A second rewrite in one process (tests run several apps) fails, and
    # the first one already holds for every later app.
    app.config.TOUCHUP = not getattr(Http, "__touched__", False)
    sock = bind(listen)
    server = await app.create_server(sock=sock, return_asyncio_server=True, access_log=False)
    if server is None:
        sock.close()
        raise RuntimeError(f"sanic did not create a server for {listen}")
    await server.startup()
    await server.before_start()
    await server.after_start()
    try:
        yield address(sock)
    finally:
        await server.before_stop()
        server.close()
        await server.wait_closed()
        await server.after_stop()
        sock.close()
