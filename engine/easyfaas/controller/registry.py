"""The controller's local mirror of the stubs' function records, kept live by a ``watch``.

Resolving a call (name + qualifier → what to run) is a dict lookup here, so the warm path never
asks stubs anything. If stubs restarts the subscription is made again and the new snapshot
replaces the mirror.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .. import wire
from ..errors import FunctionNotFound, InvalidParameter

log = logging.getLogger("easyfaas.controller")

Record = dict[str, Any]
# Called with (name, record) after an update and (name, None) after a delete.
ChangeHook = Callable[[str, Record | None], None]


@dataclass(frozen=True)
class Target:
    """One runnable version of a function: everything a sandbox needs to load it."""

    name: str
    version: int
    runtime: str
    handler: str
    memory: int
    timeout: float
    concurrency: int
    max_instances: int | None
    code: str
    code_sha256: str
    env: dict[str, str] = field(default_factory=dict, compare=False)

    @cached_property
    def key(self) -> tuple[str, int, str]:
        """Warm sandboxes are shared only between calls with the same key (made once: the
        scheduler looks it up several times per call)."""
        return (self.name, self.version, self.code_sha256)

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}"

    def load_spec(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "handler": self.handler,
            "memory": self.memory,
            "timeout": self.timeout,
            "concurrency": self.concurrency,
            "env": self.env,
            "runtime": self.runtime,
        }


def make_target(name: str, version: int, entry: Record) -> Target:
    """Build a ``Target`` from a record (or one of its ``versions`` entries)."""
    cfg = entry["config"]
    return Target(
        name=name,
        version=version,
        runtime=cfg["runtime"],
        handler=cfg["handler"],
        memory=int(cfg["memory"]),
        timeout=float(cfg["timeout"]),
        concurrency=max(1, int(cfg.get("concurrency") or 1)),
        max_instances=cfg.get("max_instances"),
        code=entry["code"],
        code_sha256=entry["code_sha256"],
        env=dict(cfg.get("env") or {}),
    )


class Registry:
    """Function records by name, mirrored from stubs."""

    def __init__(self, stubs_socket: str, on_change: ChangeHook | None = None):
        self.stubs_socket = stubs_socket
        self.functions: dict[str, Record] = {}
        self.ready = asyncio.Event()
        self._on_change = on_change
        self._targets: dict[tuple[str, int], Target] = {}

    def resolve(self, name: str, qualifier: str | None) -> Target:
        """The version to run for ``name`` at ``qualifier`` (``$LATEST``, empty, or a number)."""
        record = self.functions.get(name)
        if record is None:
            raise FunctionNotFound(f"Function not found: {name}")
        if not qualifier or qualifier == "$LATEST":
            version = record.get("version")
            if version is None:
                cause = (record.get("error") or {}).get("message", "")
                raise FunctionNotFound(f"Function {name} has no deployable version", cause=cause)
        elif qualifier.isdigit():
            version = int(qualifier)
        else:
            raise InvalidParameter(f"Qualifier must be $LATEST or a version number: {qualifier!r}")
        target = self._targets.get((name, version))
        if target is None:
            # Built once per version: resolving is on every call's path.
            entry = (record.get("versions") or {}).get(str(version))
            if version == record.get("version"):
                entry = record
            if entry is None:
                raise FunctionNotFound(f"Function not found: {name}:{qualifier}")
            target = self._targets[(name, version)] = make_target(name, version, entry)
        return target

    async def run(self, stop: asyncio.Event) -> None:
        """Follow stubs' ``watch`` until ``stop``; re-subscribe whenever the stream breaks."""
        delay = 0.1
        stopped = asyncio.ensure_future(stop.wait())
        while not stop.is_set():
            follow = asyncio.ensure_future(self._follow())
            await asyncio.wait([follow, stopped], return_when=asyncio.FIRST_COMPLETED)
            if not follow.done():
                follow.cancel()
                await asyncio.gather(follow, return_exceptions=True)
                break
            try:
                follow.result()
                delay = 0.1
            except (OSError, wire.WireError) as e:
                log.warning("stubs watch lost, retrying in %.1fs: %s", delay, e)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                delay = min(delay * 2, 2.0)

    async def _follow(self) -> None:
        reader, writer = await asyncio.open_unix_connection(self.stubs_socket, limit=wire.MAX_FRAME)
        try:
            writer.write(wire.encode({"id": 1, "op": "watch"}))
            await writer.drain()
            while (frame := await wire.read_frame(reader)) is not None:
                header = frame[0]
                if not header.get("ok", True):
                    raise wire.WireError(f"watch refused: {header.get('error')}")
                self._apply(header)
        finally:
            writer.close()

    def _apply(self, event: Record) -> None:
        kind = event.get("event")
        if kind == "snapshot":
            fresh = {r["name"]: r for r in event.get("functions", [])}
            gone = [n for n in self.functions if n not in fresh]
            self.functions = fresh
            for name in gone:
                self._notify(name, None)
            for name, record in fresh.items():
                self._notify(name, record)
            self.ready.set()
            log.info("stubs snapshot: %d functions", len(fresh))
        elif kind == "update":
            record = event["function"]
            self.functions[record["name"]] = record
            log.info("function updated fn=%s ver=%s", record["name"], record.get("version"))
            self._notify(record["name"], record)
        elif kind == "delete":
            self.functions.pop(event["name"], None)
            log.info("function deleted fn=%s", event["name"])
            self._notify(event["name"], None)

    def _notify(self, name: str, record: Record | None) -> None:
        for key in [k for k in self._targets if k[0] == name]:
            del self._targets[key]
        if self._on_change is not None:
            self._on_change(name, record)

    def routes(self) -> list[dict[str, Any]]:
        """The manifests' HTTP routes of every live function (for the httptrigger)."""
        out = []
        for name, record in sorted(self.functions.items()):
            for route in (record.get("config") or {}).get("http") or []:
                out.append({"path": route["path"], "methods": route.get("methods", []),
                            "function": name})
        return out
