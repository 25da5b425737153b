"""The funclet service: ``funclet.sock`` (0660) ops over the sandbox pools (docs/internals.md)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .. import notify, wire
from ..config import Config
from ..errors import InvalidParameter, ManifestError
from . import plan
from .cgroups.base import detect
from .pool import Pools
from .spawner import Zygote

log = logging.getLogger("easyfaas.funclet")
Reply = tuple[dict[str, Any], bytes]


class Funclet:
    """The ops. A sandbox is leased to the connection that acquired it: when that client goes
    away (a controller killed with SIGKILL), its sandboxes are destroyed, so none is orphaned
    and none is taken from under another client (stubs validating a bundle)."""

    def __init__(self, pools: Pools):
        self.pools = pools
        self.leases: dict[object, set[str]] = {}

    async def handle(self, header: dict[str, Any], payload: bytes, writer: object) -> Reply:
        op = header.get("op")
        handler = getattr(self, f"op_{op}", None) if isinstance(op, str) else None
        if handler is None:
            raise InvalidParameter(f"unknown funclet op {op!r}")
        reply = await handler(header)
        if op == "acquire":
            self.leases.setdefault(writer, set()).add(reply["sandbox"]["id"])
        return reply, b""

    async def release_lease(self, writer: object) -> None:
        for sb_id in self.leases.pop(writer, set()):
            if sb_id in self.pools.sandboxes:
                log.info("sb=%s destroyed: the client that acquired it went away", sb_id)
                await self.pools.destroy(sb_id)

    async def op_ping(self, req: dict[str, Any]) -> dict[str, Any]:
        return {}

    async def op_acquire(self, req: dict[str, Any]) -> dict[str, Any]:
        sb = await self.pools.acquire(
            _field(req, "runtime", str), _field(req, "memory", int), _field(req, "code", str),
            str(req.get("label", "")),
        )
        return {"sandbox": sb.public()}

    async def op_destroy(self, req: dict[str, Any]) -> dict[str, Any]:
        return await self.pools.destroy(_field(req, "sandbox", str))

    async def op_inspect(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.pools.inspect(_field(req, "sandbox", str))

    async def op_resize(self, req: dict[str, Any]) -> dict[str, Any]:
        self.pools.resize(_field(req, "sandbox", str), _field(req, "memory", int))
        return {}

    async def op_status(self, req: dict[str, Any]) -> dict[str, Any]:
        return self.pools.status()

    async def op_validate(self, req: dict[str, Any]) -> dict[str, Any]:
        """Load the handler in a throwaway sandbox; a load error is the bundle's fault."""
        name, version = _field(req, "name", str), req.get("version")
        timeout = float(req.get("timeout") or 3.0)
        function = {
            "name": name, "version": version, "handler": _field(req, "handler", str),
            "memory": _field(req, "memory", int), "timeout": timeout,
            "env": req.get("env") or {}, "runtime": _field(req, "runtime", str),
        }
        sb = await self.pools.acquire(function["runtime"], function["memory"],
                                      _field(req, "code", str), f"{name}@{version}")
        client = wire.Client(str(sb.socket))
        try:
            await asyncio.wait_for(client.call("load", function=function), timeout + 10)
        except wire.RemoteError as e:
            raise ManifestError(f"handler does not load: {e}", log=e.error.get("log", "")) from e
        finally:
            await client.close()
            await self.pools.destroy(sb.id)
        return {}


def _field(req: dict[str, Any], key: str, kind: type) -> Any:
    value = req.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidParameter(f"'{key}' must be {kind.__name__}, got {value!r}")
    return value


async def run(cfg: Config, stop: asyncio.Event) -> None:
    """Serve ``funclet.sock`` until ``stop``; leaves no sandbox, cgroup or mount behind."""
    backend = detect(cfg)
    runtimes = plan.runtimes_dir()
    zygote = Zygote(cfg.sandbox.python3, runtimes / "python3" / "runner.py")
    pools = Pools(cfg, backend, zygote, runtimes)
    pools.cleanup_leftovers()
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    server = None
    try:
        pools.prepare()
        zygote.start()
        funclet = Funclet(pools)
        server = await wire.start_server(str(cfg.socket("funclet")), funclet.handle, 0o660,
                                         funclet.release_lease)
        pools.fill()
        log.info("funclet serving on %s backend=%s", cfg.socket("funclet"), backend.name)
        notify.ready()
        await stop.wait()
        notify.stopping()
    finally:
        if server is not None:
            server.close()
            cfg.socket("funclet").unlink(missing_ok=True)
        await pools.close()
        zygote.stop()
        backend.remove_root()
        log.info("funclet stopped")
