"""The httptrigger component: serve HTTP, follow stubs for routes, stay registered with the
controller."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from .. import http1, notify, wire
from ..config import Config
from ..listening import write_addr
from .app import build_handler
from .routes import RouteTable

log = logging.getLogger("easyfaas.httptrigger")

RETRY_S = 0.5  # between reconnect attempts to stubs / checks of the controller connection
MAX_RETRY_S = 5.0


def _apply(table: RouteTable, frame: wire.Header) -> None:
    event = frame.get("event")
    if event == "snapshot":
        table.replace(frame.get("functions") or [])
        log.info("routes: snapshot of %d functions", len(frame.get("functions") or []))
    elif event == "update":
        table.update(frame["function"])
        log.info("routes: updated fn=%s", frame["function"].get("name"))
    elif event == "delete":
        table.delete(str(frame["name"]))
        log.info("routes: deleted fn=%s", frame["name"])


async def _follow(path: str, table: RouteTable, loaded: asyncio.Event) -> None:
    """One ``watch`` subscription, until stubs closes it.

    The watch is a stream of frames under one request id, which ``wire.Client`` (one response per
    request) does not model, so this reads the frames itself.
    """
    reader, writer = await asyncio.open_unix_connection(path, limit=wire.MAX_FRAME)
    try:
        writer.write(wire.encode({"id": 1, "op": "watch"}))
        await writer.drain()
        while (frame := await wire.read_frame(reader)) is not None:
            header = frame[0]
            if header.get("ok") is False:
                raise wire.RemoteError(header.get("error") or {})
            _apply(table, header)
            loaded.set()
    finally:
        writer.close()


async def watch_stubs(path: str, table: RouteTable, loaded: asyncio.Event) -> None:
    """Keep the route table live; re-subscribe (with backoff) whenever stubs goes away.
    ``loaded`` is set once the first snapshot is in the table."""
    delay = RETRY_S
    while True:
        try:
            await _follow(path, table, loaded)
            delay = RETRY_S
            log.warning("stubs closed the watch; re-subscribing")
        except (OSError, wire.WireError, wire.RemoteError) as e:
            log.warning("cannot watch stubs at %s: %s; retrying in %.1fs", path, e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)


async def keep_registered(controller: wire.Client) -> None:
    """Say ``register`` on the controller connection, and again after every reconnect: the
    controller's healthz counts the trigger only while that connection lives. Registered, it
    sleeps until that connection is gone rather than looking every so often: an idle trigger
    does not wake up."""
    while True:
        try:
            await controller.call("register", component="httptrigger")
            log.info("registered with the controller")
        except (OSError, wire.RemoteError) as e:
            log.debug("cannot register with the controller yet: %s", e)
        else:
            registered_on = controller.connects
            await controller.wait_lost()
            if controller.connects != registered_on:
                continue  # a call has connected again meanwhile: register on it at once
        await asyncio.sleep(RETRY_S)


async def run(cfg: Config, stop: asyncio.Event) -> None:
    """Serve the HTTP trigger on ``cfg.http.listen`` until ``stop`` is set."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    table = RouteTable()
    controller = wire.Client(str(cfg.socket("controller")))
    addr_file = cfg.run_dir / "http.addr"
    async with http1.serving(build_handler(table, controller), cfg.http.listen) as addr:
        loaded = asyncio.Event()
        tasks = [asyncio.create_task(watch_stubs(str(cfg.socket("stubs")), table, loaded))]
        try:
            # Ready (and registered, which healthz counts) only with the routes in place: a
            # manifest route must not answer 404 just because the trigger started a moment ago.
            waits = [asyncio.ensure_future(e.wait()) for e in (loaded, stop)]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()
            if loaded.is_set() and not stop.is_set():
                tasks.append(asyncio.create_task(keep_registered(controller)))
                write_addr(addr_file, addr)
                notify.ready(f"serving http://{addr}")
                log.info("httptrigger serving on http://%s", addr)
                await stop.wait()
        finally:
            notify.stopping()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            addr_file.unlink(missing_ok=True)
    await controller.close()
    log.info("httptrigger stopped")
