"""In-process fakes of the controller's peers (stubs, funclet, runners) on real unix sockets.

They speak docs/internals.md's protocols and record what was asked of them; tests assert on the
controller's answers and on its decisions (which sandbox, how many, when destroyed).
A fake runner's behaviour is chosen by the event: ``{"sleep": s}``, ``{"fail": msg}``,
``{"crash": true}``, ``{"oom": true}``; anything else is echoed back with the sandbox id.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waiting import async_wait_until

from easyfaas import config, token, wire
from easyfaas.config import Config
from easyfaas.controller import service


def record(name: str, version: int = 1, **config: Any) -> dict[str, Any]:
    """A stubs function record (see docs/internals.md) with every version up to ``version``."""
    cfg = {"runtime": "python3", "handler": "index.handler", "memory": 128, "timeout": 3.0,
           "concurrency": 1, "max_instances": None, "env": {}, "http": []}
    cfg.update(config)

    def entry(v: int) -> dict[str, Any]:
        sha = f"{name}-sha-{v}"
        return {"config": dict(cfg), "code": f"/store/{sha}", "code_sha256": sha,
                "code_size": 10, "last_modified": "2026-11-27T15:00:00Z"}

    return {"name": name, "version": version, "state": "active", **entry(version),
            "versions": {str(v): entry(v) for v in range(1, version + 1)}, "error": None}


class FakeRunner:
    def __init__(self, path: str, sb_id: str, funclet: FakeFunclet):
        self.path, self.id, self.funclet = path, sb_id, funclet
        self.loaded: dict[str, Any] | None = None
        self.invocations = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.server = await wire.start_server(self.path, self.handle)

    def kill(self) -> None:
        if self.server is not None:
            self.server.close()
        for w in self._writers:
            w.close()

    async def handle(self, header: dict[str, Any], payload: bytes,
                     writer: asyncio.StreamWriter) -> tuple[dict[str, Any], bytes]:
        self._writers.add(writer)
        if header["op"] == "load":
            self.loaded = header["function"]
            if self.loaded["handler"].startswith("broken"):
                return {"ok": False, "log": "importing\n", "error": {
                    "errorType": "Runtime.ImportModuleError",
                    "errorMessage": "Unable to import module 'broken'"}}, b""
            return {"log": ""}, b""
        if header["op"] != "invoke":
            return {}, b""
        self.invocations += 1
        event = json.loads(payload)
        self.funclet.events.append(event)
        if event.get("sleep"):
            await asyncio.sleep(event["sleep"])
        if event.get("oom"):
            self.funclet.oom.add(self.id)
        if event.get("crash") or event.get("oom"):
            self.kill()
            return {}, b""
        if event.get("fail"):
            return {"ok": False, "log": "about to fail\n", "error": {
                "errorType": "ValueError", "errorMessage": event["fail"]}}, b""
        result = {"sandbox": self.id, "version": self.loaded and self.loaded["version"],
                  "event": event}
        usage = {}
        if event.get("usage"):  # what a real runner reports of a measured call
            usage = {"run_s": event["usage"][0], "cpu_demand_s": event["usage"][1]}
        return ({"log": f"handled {header['request_id']}\n", **usage},
                json.dumps(result).encode())


class FakeFunclet:
    def __init__(self, root: Path):
        self.root = root
        self.runners: dict[str, FakeRunner] = {}
        self.acquired: list[str] = []
        self.destroyed: list[str] = []
        self.oom: set[str] = set()
        # Every event any runner was invoked with, in order.
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self.leases: dict[Any, list[str]] = {}

    def live(self) -> list[str]:
        return [i for i in self.runners if i not in self.destroyed]

    async def release(self, writer: Any) -> None:
        """Like the real funclet: a client's sandboxes go when its connection closes."""
        for sb_id in self.leases.pop(writer, []):
            if sb_id not in self.destroyed:
                self.destroyed.append(sb_id)
                self.runners[sb_id].kill()

    async def handle(self, header: dict[str, Any], payload: bytes,
                     writer: asyncio.StreamWriter) -> tuple[dict[str, Any], bytes]:
        op = header["op"]
        if op == "acquire":
            sb_id = f"sb{next(self._ids)}"
            runner = FakeRunner(str(self.root / f"{sb_id}.sock"), sb_id, self)
            await runner.start()
            self.runners[sb_id] = runner
            self.leases.setdefault(writer, []).append(sb_id)
            self.acquired.append(header["label"])
            return {"sandbox": {"id": sb_id, "socket": runner.path, "pid": 1,
                                "memory": header["memory"]}}, b""
        if op == "destroy":
            self.destroyed.append(header["sandbox"])
            self.runners[header["sandbox"]].kill()
            return {"oom": header["sandbox"] in self.oom, "reason": "destroyed"}, b""
        if op == "status":
            bound = [{"id": i, "label": "", "state": "bound"} for i in self.live()]
            return {"backend": "fake", "pools": {}, "sandboxes": bound}, b""
        return {}, b""


class FakeStubs:
    def __init__(self, records: list[dict[str, Any]]):
        self.records = {r["name"]: r for r in records}
        self._watchers: list[tuple[asyncio.StreamWriter, Any]] = []
        self.puts: list[dict[str, Any]] = []

    def publish(self, rec: dict[str, Any]) -> None:
        self.records[rec["name"]] = rec
        self._send({"event": "update", "function": rec})

    def remove(self, name: str) -> None:
        del self.records[name]
        self._send({"event": "delete", "name": name})

    def _send(self, event: dict[str, Any]) -> None:
        for writer, rid in self._watchers:
            if not writer.is_closing():
                writer.write(wire.encode({"id": rid, "ok": True, **event}))

    async def handle(self, header: dict[str, Any], payload: bytes,
                     writer: asyncio.StreamWriter) -> tuple[dict[str, Any], bytes] | None:
        op, name = header["op"], header.get("name")
        if op == "watch":
            writer.write(wire.encode({"id": header["id"], "ok": True, "event": "snapshot",
                                      "functions": list(self.records.values())}))
            self._watchers.append((writer, header["id"]))
            return None
        if op == "list":
            return {"functions": list(self.records.values())}, b""
        if op in ("get", "delete") and name not in self.records:
            return {"ok": False, "error": {"type": "FunctionNotFound", "message": name}}, b""
        if op == "get":
            return {"function": self.records[name]}, b""
        if op == "delete":
            self.remove(name)
            return {}, b""
        if op == "put":
            if header["body"].get("Runtime") == "cobol":
                return {"ok": False, "error": {"type": "InvalidParameter",
                                               "message": "unknown runtime cobol"}}, b""
            self.puts.append({"name": name, "body": header["body"], "zip": payload})
            old = self.records.get(name)
            rec = record(name, old["version"] + 1 if old else 1)
            self.publish(rec)
            return {"function": rec}, b""
        return {}, b""


def short_dir() -> Path:
    """A short tmp dir: unix socket paths must stay under 107 bytes."""
    return Path(tempfile.mkdtemp(prefix="ef", dir="/tmp"))


def http(method: str, url: str, body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A blocking HTTP request (run it with ``asyncio.to_thread`` next to an in-loop server)."""
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def run(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test body in a fresh event loop (no pytest-asyncio needed)."""
    def wrapper(*args: Any) -> None:
        asyncio.run(test(*args))
    wrapper.__name__ = test.__name__
    return wrapper


def make_config(root: Path, **sections: dict[str, Any]) -> Config:
    """A config rooted in ``root`` with the API on port 0 and no trigger, plus ``sections``."""
    data: dict[str, Any] = {
        "paths": {"state_dir": str(root / "state"), "code_dir": str(root / "code"),
                  "run_dir": str(root / "run")},
        "api": {"listen": "127.0.0.1:0"},
        "http": {"listen": ""},
    }
    for key, values in sections.items():
        data.setdefault(key, {}).update(values)
    return config.load([], data)


@dataclass
class Harness:
    cfg: Config
    url: str
    token: str
    stubs: FakeStubs
    funclet: FakeFunclet

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        return await asyncio.to_thread(http, method, self.url + path, body, headers)

    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@asynccontextmanager
async def running_controller(records: list[dict[str, Any]], missing: tuple[str, ...] = (),
                             funclet_class: type[FakeFunclet] = FakeFunclet,
                             **sections: dict[str, Any]) -> AsyncIterator[Harness]:
    """The real controller service against fake stubs and funclet, all in this event loop;
    yields once its /healthz lists exactly ``missing`` (nothing: healthy)."""
    root = short_dir()
    cfg = make_config(root, **sections)
    cfg.run_dir.mkdir(parents=True)
    stubs, funclet = FakeStubs(records), funclet_class(root)
    servers = [await wire.start_server(str(cfg.socket("stubs")), stubs.handle),
               await wire.start_server(str(cfg.socket("funclet")), funclet.handle)]
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(cfg, stop))
    addr_file = cfg.run_dir / "api.addr"
    try:
        await async_wait_until(lambda: task.done() or addr_file.exists())
        url = "http://" + addr_file.read_text().strip()
        harness = Harness(cfg, url, token.read(cfg.token_file), stubs, funclet)
        await async_wait_until(lambda: _health_missing(harness, list(missing)))
        yield harness
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        for server in servers:
            server.close()
        for runner in funclet.runners.values():
            runner.kill()
        shutil.rmtree(root)


async def _health_missing(h: Harness, missing: list[str]) -> bool:
    _, _, body = await h.request("GET", "/healthz")
    return bool(json.loads(body)["missing"] == missing)
