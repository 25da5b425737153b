"""The stubs component: wires store, registry, pipeline, watcher and the stubs.sock server.

Ops are documented in docs/internals.md ("stubs.sock"). ``watch`` subscribers get a snapshot and
then every change, in order, as frames carrying their request's id.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .. import notify, wire
from ..config import Config
from ..errors import FunctionNotFound, InvalidParameter
from . import upload
from .pipeline import Pipeline, Validator
from .registry import Registry
from .store import Store
from .validate import FuncletValidator
from .watcher import Watcher

log = logging.getLogger("easyfaas.stubs")

# A subscriber that stops reading is dropped (and re-subscribes) rather than buffered forever.
MAX_SUBSCRIBER_BUFFER = 16 * 1024 * 1024
Response = tuple[dict[str, Any], bytes]


class StubsService:
    def __init__(self, cfg: Config, validator: Validator | None = None):
        self.cfg = cfg
        self.store = Store(cfg.store_dir)
        self.registry = Registry(cfg.state_dir / "registry.json", self.store)
        self._funclet = FuncletValidator(cfg.socket("funclet"))
        self.pipeline = Pipeline(cfg, self.registry, self.store, validator or self._funclet,
                                 self.publish)
        self.watcher = Watcher(cfg.code_dir, self.pipeline.schedule, self._rescan_later)
        self._subscribers: dict[wire.Connection, set[Any]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._rescans: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        for directory in (self.cfg.code_dir, self.cfg.store_dir, self.cfg.run_dir):
            directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.registry.load()
        self.store.clean_tmp()
        upload.clean_leftovers(self.cfg.code_dir)
        self.watcher.start()  # before the rescan, so nothing changed meanwhile is missed
        await self.pipeline.rescan()
        self._server = await wire.start_server(str(self.cfg.socket("stubs")), self.handle, 0o660)
        log.info("serving %s with %d functions", self.cfg.socket("stubs"),
                 len(self.registry.names()))

    async def stop(self) -> None:
        self.watcher.stop()
        if self._server is not None:
            self._server.close()
        for writer in list(self._subscribers):
            writer.close()
        for task in list(self._rescans):
            task.cancel()
        await asyncio.gather(*self._rescans, return_exceptions=True)
        await self.pipeline.close()
        await self._funclet.close()
        self.cfg.socket("stubs").unlink(missing_ok=True)

    def publish(self, event: dict[str, Any]) -> None:
        """Send a change to every ``watch`` subscriber."""
        for writer, ids in list(self._subscribers.items()):
            if writer.is_closing() or writer.transport.get_write_buffer_size() > \
                    MAX_SUBSCRIBER_BUFFER:
                log.warning("dropping a watch subscriber that does not keep up")
                writer.close()
                self._subscribers.pop(writer, None)
                continue
            for rid in ids:
                writer.write(wire.encode({"id": rid, "ok": True, **event}))

    async def handle(self, header: dict[str, Any], payload: bytes,
                     writer: wire.Connection) -> Response | None:
        op = header.get("op")
        if op == "watch":
            await self._watch(header.get("id"), writer)
            return None
        if op == "ping":
            return {}, b""
        if op == "list":
            return {"functions": self.registry.records()}, b""
        if op == "get":
            return {"function": self._get(str(header.get("name")))}, b""
        if op == "put":
            return {"function": await self._put(header, payload)}, b""
        if op == "delete":
            await upload.delete(self.pipeline, str(header.get("name")))
            return {}, b""
        raise InvalidParameter(f"unknown op {op!r}")

    def _get(self, name: str) -> dict[str, Any]:
        if name not in self.registry.names():
            raise FunctionNotFound(f"function '{name}' does not exist", name=name)
        return self.registry.record(name)

    async def _put(self, header: dict[str, Any], payload: bytes) -> dict[str, Any]:
        body, config = header.get("body"), header.get("config")
        if (body is None) == (config is None):
            raise InvalidParameter("put needs exactly one of 'body' (EasyFaaS create body) "
                                   "and 'config' (function.toml keys)")
        data = upload.manifest_from_body(body) if body is not None else config
        if not isinstance(data, dict):
            raise InvalidParameter("'body'/'config' must be a JSON object")
        return await upload.put(self.pipeline, str(header.get("name")), data, payload)

    async def _watch(self, rid: Any, writer: wire.Connection) -> None:
        # Snapshot and subscription happen without an await in between: no update is lost.
        writer.write(wire.encode({"id": rid, "ok": True, "event": "snapshot",
                                  "functions": self.registry.records()}))
        self._subscribers.setdefault(writer, set()).add(rid)
        try:
            await asyncio.Event().wait()  # until the connection ends (the task is cancelled)
        finally:
            ids = self._subscribers.get(writer, set())
            ids.discard(rid)
            if not ids:
                self._subscribers.pop(writer, None)

    def _rescan_later(self) -> None:
        task = asyncio.create_task(self.pipeline.rescan())
        self._rescans.add(task)
        task.add_done_callback(self._rescans.discard)


async def run(cfg: Config, stop: asyncio.Event) -> None:
    """Serve stubs.sock until ``stop`` is set (the component entry point)."""
    service = StubsService(cfg)
    try:
        await service.start()
        notify.ready()
        await stop.wait()
        notify.stopping()
    finally:
        await service.stop()
