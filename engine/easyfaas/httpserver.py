"""Run a sanic app inside the component's own asyncio loop, on one listening socket.

Sanic's own runner forks worker processes and owns the loop; an engine component is a single
small process with other servers on the same loop, so it uses sanic's low-level server instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sanic import Sanic
from sanic.http import Http

from .listening import address, bind


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
