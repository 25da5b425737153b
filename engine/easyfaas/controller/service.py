"""The controller process: wires registry, scheduler, invoker, async queue and metrics together
(the one composition root), serves the HTTP API and ``controller.sock``, and shuts down cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
from typing import Any

from .. import http1, notify, token, wire
from ..asgi import AsgiApp
from ..config import Config
from ..listening import write_addr
from .api import MAX_BODY, build_app, build_handler
from .asyncq import AsyncQueue
from .invoke import FunctionLogWriter, Invoker
from .metrics import Metrics
from .registry import Registry
from .scheduler import Scheduler
from .sockapi import SocketAPI

log = logging.getLogger("easyfaas.controller")

PING_TIMEOUT_S = 1.0


class Controller:
    """Everything one controller owns; the HTTP and socket front ends call into it."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.token = token.ensure(cfg.token_file)
        self.stubs = wire.Client(str(cfg.socket("stubs")))
        self.funclet = wire.Client(str(cfg.socket("funclet")))
        self.metrics = Metrics()
        self.scheduler = Scheduler(cfg, self.funclet, self.metrics)
        self.registry = Registry(str(cfg.socket("stubs")), self.scheduler.on_change)
        self.logs = FunctionLogWriter(cfg.state_dir)
        self.invoker = Invoker(self.registry, self.scheduler, self.metrics, self.logs)
        self.queue = AsyncQueue(cfg.state_dir / "queue.db", cfg.async_, self.invoker)
        self.sockapi = SocketAPI(self)

    async def health(self) -> dict[str, Any]:
        """What ``/healthz`` reports: every dependency that does not answer is listed."""
        missing = [name for name, client in (("stubs", self.stubs), ("funclet", self.funclet))
                   if not await _pings(client)]
        if not self.registry.ready.is_set():
            missing.append("stubs snapshot")
        if self.cfg.http.listen and not self.sockapi.trigger_registered():
            missing.append("httptrigger")
        return {"status": "unavailable" if missing else "ok", "missing": missing}

    async def close(self) -> None:
        await self.scheduler.shutdown()
        await self.queue.close()
        for client in (self.stubs, self.funclet):
            await client.close()


async def _pings(client: wire.Client) -> bool:
    try:
        await asyncio.wait_for(client.call("ping"), PING_TIMEOUT_S)
    except (OSError, TimeoutError, wire.RemoteError):
        return False
    return True


def raise_open_files_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit, and return it.

    The controller holds two files per sandbox (its runner connection and the runner's record
    of kept answers, ``kept.py``) besides the function logs it keeps open; systemd's default
    soft limit of 1024 would cap a device with a few GiB at a few hundred sandboxes, where
    memory allows more. asyncio polls with epoll, so high fd numbers are no problem."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1 << 20  # the kernel's usual nr_open
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


async def run(cfg: Config, stop: asyncio.Event) -> None:
    """Serve the controller until ``stop`` is set (see docs/internals.md)."""
    files = raise_open_files_limit()
    log.debug("open files limit: %d", files)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    ctl = Controller(cfg)
    await ctl.queue.open()
    background: list[asyncio.Task[Any]] = [
        asyncio.create_task(ctl.registry.run(stop), name="registry"),
        asyncio.create_task(ctl.scheduler.cooldown(stop), name="cooldown"),
    ]
    addr_file = cfg.run_dir / "api.addr"
    sock_path = str(cfg.socket("controller"))
    server = await wire.start_server(sock_path, ctl.sockapi.handle, mode=0o660)
    api = AsgiApp(build_app(ctl))
    try:
        await api.startup()
        # Run to the end: a call the engine has accepted finishes, as through the trigger, when
        # its client hangs up. Cancelling it would have to destroy its sandbox (the handler may
        # still be running in there) and lose its log; a management request finishes too, so
        # a hang-up never leaves one half done.
        async with http1.serving(build_handler(ctl, api), cfg.api.listen, MAX_BODY,
                                 run_to_end=True) as addr:
            write_addr(addr_file, addr)
            await _wait_snapshot(ctl.registry, stop)
            background.append(asyncio.create_task(ctl.queue.run(stop), name="async-workers"))
            notify.ready(f"api {addr}")
            log.info("controller serving api=%s socket=%s", addr, sock_path)
            await stop.wait()
            notify.stopping()
    finally:
        await api.shutdown()
        server.close()
        ctl.sockapi.close()
        with contextlib.suppress(FileNotFoundError):
            addr_file.unlink()
        with contextlib.suppress(FileNotFoundError):
            cfg.socket("controller").unlink()
        await _stop_tasks(background)
        await ctl.close()
        ctl.logs.close()
        log.info("controller stopped")


async def _wait_snapshot(registry: Registry, stop: asyncio.Event) -> None:
    """Ready means "knows the functions": wait for the first stubs snapshot (or stop)."""
    waiters = [asyncio.ensure_future(registry.ready.wait()), asyncio.ensure_future(stop.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for w in waiters:
        w.cancel()


async def _stop_tasks(tasks: list[asyncio.Task[Any]], grace: float = 2.0) -> None:
    """Let tasks that watch ``stop`` end; cancel what is still running after ``grace``.

    An async worker cancelled mid-call leaves its row "running": it is requeued on the next start.
    """
    pending = {t for t in tasks if not t.done()}
    if pending and grace > 0:
        _, pending = await asyncio.wait(pending, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
