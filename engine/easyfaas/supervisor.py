"""``easyfaas up``: run every component as a child process, the way systemd runs the units.

Each child runs ``easyfaas serve <component>`` with the same config, started in order and awaited
for ``READY=1`` on its own sd_notify socket (the protocol systemd speaks, so the components need
no second code path). A child that dies is restarted with backoff. SIGINT or SIGTERM stops the
children in reverse order.

The children are forked, not exec'd: this process first imports what they share (asyncio,
sanic, the wire protocol), so those pages are shared copy-on-write instead of being built once
per process — the control plane's idle memory (docs/performance.md). The forked child leaves
the supervisor's event loop, signal handlers and descriptors behind before it starts its own.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from . import logsetup
from .config import Config

log = logging.getLogger("easyfaas.supervisor")

COMPONENTS = ("funclet", "stubs", "controller", "httptrigger")
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
BACKOFF_MIN_S, BACKOFF_MAX_S = 0.5, 30.0
# A child that ran this long before dying starts over at the shortest backoff.
HEALTHY_RUN_S = 60.0
# Tests only: a comma list replacing COMPONENTS; "name=module" execs `python -m module` instead,
# so the supervisor can be tested with a fake component before/without the real ones.
COMPONENTS_ENV = "EASYFAAS_UP_COMPONENTS"
# Tells a component it runs under ``up``, so it stops if the supervisor dies (see cli.py).
SUPERVISOR_PID_ENV = "EASYFAAS_SUPERVISOR_PID"


class StartError(Exception):
    """A component did not become ready; the message names it."""


@dataclass
class Child:
    name: str
    # None: fork and run the component in-process; else exec this (the test seam's fakes).
    argv: list[str] | None
    notify: socket.socket
    notify_address: str
    pid: int | None = None
    exited: asyncio.Future[int] | None = None  # the exit status once it is reaped
    started_at: float = 0.0
    backoff: float = BACKOFF_MIN_S
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)


def _notify_socket(cfg: Config, name: str) -> tuple[socket.socket, str]:
    # Abstract socket: nothing on disk to clean up, unique per engine and supervisor.
    address = f"@{cfg.instance_id}/{os.getpid()}/notify/{name}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    sock.bind("\0" + address[1:])
    sock.setblocking(False)
    return sock, address


def components(cfg_args: list[str]) -> list[tuple[str, list[str] | None]]:
    """(name, argv to exec or None to fork) of every child, in start order."""
    wanted = os.environ.get(COMPONENTS_ENV)
    entries = wanted.split(",") if wanted else list(COMPONENTS)
    out: list[tuple[str, list[str] | None]] = []
    for entry in entries:
        name, _, module = entry.strip().partition("=")
        out.append((name, [sys.executable, "-m", module, *cfg_args] if module else None))
    return out


def preload() -> None:
    """Import what the components share, before the first fork (see the module docstring)."""
    import orjson  # noqa: F401
    import sanic  # noqa: F401
    import uvloop  # noqa: F401

    from . import http1, notify, wire  # noqa: F401


def _watch_exit(pid: int) -> asyncio.Future[int]:
    """A future for the exit status of child ``pid``, reaped when its pidfd turns readable."""
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[int] = loop.create_future()
    pidfd = os.pidfd_open(pid)

    def reap() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        if not exited.done():
            exited.set_result(os.waitstatus_to_exitcode(status))

    loop.add_reader(pidfd, reap)
    return exited


def _become(child: Child, cfg: Config, env: dict[str, str]) -> NoReturn:
    """In the forked child: shed the supervisor's state, then run the component. Never returns."""
    status = 1
    try:
        # The supervisor's objects stay in memory but are never collected here, so nothing of
        # theirs (sockets, the loop) is finalised later and closes a descriptor number that
        # this process reuses. It also keeps the collector off the pages shared with the parent.
        gc.freeze()
        asyncio._set_running_loop(None)  # type: ignore[attr-defined]
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()
        os.closerange(3, os.sysconf("SC_OPEN_MAX"))
        os.environ.update(env)
        if child.argv is not None:
            os.execv(child.argv[0], child.argv)
        _set_comm(f"ef-{child.name}")
        from .cli import cmd_serve

        status = cmd_serve(child.name, cfg)
    except BaseException:  # noqa: BLE001 - the child must end in os._exit, whatever happened
        traceback.print_exc()
    finally:
        os._exit(status)


def _set_comm(name: str) -> None:
    """The name ``ps -o comm``, top and the journal show (the command line is the supervisor's)."""
    pr_set_name = 15
    ctypes.CDLL(None).prctl(pr_set_name, name.encode()[:15], 0, 0, 0)


class Supervisor:
    def __init__(self, cfg: Config, cfg_args: list[str]):
        self.cfg = cfg
        self.children: list[Child] = []
        self.stopping = False
        for name, argv in components(cfg_args):
            if name == "httptrigger" and not cfg.http.listen:
                continue
            sock, address = _notify_socket(cfg, name)
            self.children.append(Child(name, argv, sock, address))

    async def _spawn(self, child: Child) -> None:
        _drain(child.notify)
        env = {"NOTIFY_SOCKET": child.notify_address, SUPERVISOR_PID_ENV: str(os.getpid())}
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _become(child, self.cfg, env)
        child.pid, child.exited = pid, _watch_exit(pid)
        child.started_at = time.monotonic()
        log.info("started %s pid=%s", child.name, child.pid)

    async def _await_ready(self, child: Child) -> None:
        assert child.exited is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT_S
        while True:
            recv: asyncio.Future[Any] = asyncio.ensure_future(loop.sock_recv(child.notify, 4096))
            done, _ = await asyncio.wait(
                {recv, child.exited}, timeout=deadline - loop.time(),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if recv not in done:
                recv.cancel()
            if child.exited in done:
                raise StartError(f"{child.name} exited with status {child.exited.result()} "
                                 "before it was ready")
            if not done:
                raise StartError(f"{child.name} was not ready within {READY_TIMEOUT_S:.0f}s")
            if "READY=1" in recv.result().decode(errors="replace").splitlines():
                log.info("%s is ready pid=%s", child.name, child.pid)
                return

    async def start(self) -> None:
        """Start every child in order; ``StartError`` if one does not become ready."""
        for child in self.children:
            await self._spawn(child)
            await self._await_ready(child)
            child.watcher = asyncio.create_task(self._watch(child))

    async def _watch(self, child: Child) -> None:
        """Restart ``child`` with backoff whenever it dies while the engine is up."""
        while True:
            assert child.exited is not None
            status = await asyncio.shield(child.exited)
            if self.stopping:
                return
            if time.monotonic() - child.started_at > HEALTHY_RUN_S:
                child.backoff = BACKOFF_MIN_S
            log.warning("%s pid=%s died with status %s; restarting in %.1fs",
                        child.name, child.pid, status, child.backoff)
            await asyncio.sleep(child.backoff)
            child.backoff = min(child.backoff * 2, BACKOFF_MAX_S)
            await self._spawn(child)
            try:
                await self._await_ready(child)
            except StartError as e:
                log.error("restart failed: %s", e)
                await _terminate(child)

    async def stop(self) -> None:
        """Stop the children in reverse start order: SIGTERM, then SIGKILL after a grace time."""
        self.stopping = True
        for child in reversed(self.children):
            if child.watcher is not None:
                child.watcher.cancel()
                await asyncio.gather(child.watcher, return_exceptions=True)
            await _terminate(child)
            child.notify.close()


def _drain(sock: socket.socket) -> None:
    """Drop datagrams a previous incarnation left (its STOPPING=1, a stale READY=1)."""
    while True:
        try:
            sock.recv(4096)
        except BlockingIOError:
            return


async def _terminate(child: Child) -> None:
    if child.pid is None or child.exited is None or child.exited.done():
        return
    log.info("stopping %s pid=%s", child.name, child.pid)
    os.kill(child.pid, signal.SIGTERM)
    try:
        await asyncio.wait_for(asyncio.shield(child.exited), STOP_TIMEOUT_S)
    except TimeoutError:
        log.warning("%s pid=%s did not stop in %.0fs; killing it", child.name, child.pid,
                    STOP_TIMEOUT_S)
        os.kill(child.pid, signal.SIGKILL)
        await child.exited


def _read_addr(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except FileNotFoundError:
        return None


def ready_line(cfg: Config) -> str:
    trigger = _read_addr(cfg.run_dir / "http.addr")
    api = _read_addr(cfg.run_dir / "api.addr")
    return (
        "easyfaas: ready — "
        f"trigger {f'http://{trigger}' if trigger else 'off'}, "
        f"api {f'http://{api}' if api else 'off'}, code dir {cfg.code_dir}"
    )


async def _main(cfg: Config, cfg_args: list[str]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    sup = Supervisor(cfg, cfg_args)
    starting = asyncio.create_task(sup.start())
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if starting.done():
            starting.result()  # raises StartError
            print(ready_line(cfg), flush=True)
            await stopped
        log.info("stopping")
        return 0
    except StartError as e:
        log.error("cannot start the engine: %s", e)
        print(f"easyfaas: error: {e}", file=sys.stderr)
        return 1
    finally:
        starting.cancel()
        stopped.cancel()
        await asyncio.gather(starting, stopped, return_exceptions=True)
        await sup.stop()


def run(cfg: Config, cfg_args: list[str]) -> int:
    """``easyfaas up``: returns the exit status (0 after a clean stop)."""
    if os.geteuid() != 0:
        print("easyfaas: error: `easyfaas up` must run as root (the funclet creates "
              "namespaces and cgroups)", file=sys.stderr)
        return 1
    logsetup.setup("supervisor")
    for d in (cfg.code_dir, cfg.state_dir, cfg.run_dir):
        d.mkdir(parents=True, exist_ok=True)
    # Left by an engine that crashed: the ready line must only show addresses served now.
    for name in ("http.addr", "api.addr"):
        (cfg.run_dir / name).unlink(missing_ok=True)
    preload()
    return asyncio.run(_main(cfg, cfg_args))
