"""The HTTP trigger service against fake controller.sock and stubs.sock servers."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import tempfile
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from waiting import async_wait_until

from easyfaas import config, errors, wire
from easyfaas.httptrigger import service

pytestmark = pytest.mark.root

TIMEOUT = 10.0


@dataclass
class FakeController:
    """controller.sock: echoes events, and fails on purpose for some function names."""

    registrations: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def handle(self, header: wire.Header, payload: bytes, writer: Any) -> Any:
        self.writers.add(writer)
        if header["op"] == "register":
            self.registrations += 1
            return {}, b""
        assert header["op"] == "invoke"
        event = json.loads(payload)
        self.events.append(event)
        name = header["function"]
        if name == "missing":
            raise errors.FunctionNotFound("function missing not found")
        if name == "busy":
            raise errors.TooManyRequests("no capacity")
        if name == "boom":
            return {"function_error": "Unhandled"}, b'{"errorMessage":"x","errorType":"E"}'
        if name == "mirror":  # a proxy response that returns the request body byte-exact
            body = event["body"] or ""
            raw = base64.b64decode(body) if event["isBase64Encoded"] else body.encode()
            result = {"statusCode": 200, "isBase64Encoded": True, "body":
                      base64.b64encode(raw).decode(),
                      "headers": {"content-type": "application/octet-stream"}}
            return {"function_error": None}, json.dumps(result).encode()
        return {"function_error": None}, json.dumps({"fn": name, "event": event}).encode()


class FakeStubs:
    """stubs.sock ``watch``: a snapshot, then whatever the test pushes."""

    def __init__(self, records: list[dict[str, Any]]):
        self.records = records
        self.watchers: list[tuple[Any, asyncio.StreamWriter]] = []

    async def handle(self, header: wire.Header, payload: bytes, writer: Any) -> None:
        assert header["op"] == "watch"
        rid = header["id"]
        writer.write(wire.encode({"id": rid, "ok": True, "event": "snapshot",
                                  "functions": self.records}))
        self.watchers.append((rid, writer))

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for _, w in self.watchers]

    def push(self, frame: dict[str, Any]) -> None:
        for rid, writer in self.watchers:
            writer.write(wire.encode({"id": rid, "ok": True, **frame}))


def record(name: str, path: str, methods: list[str]) -> dict[str, Any]:
    return {"name": name, "config": {"http": [{"path": path, "methods": methods}]}}


@dataclass
class Env:
    cfg: config.Config
    controller: FakeController
    stubs: FakeStubs
    base: str
    servers: dict[str, asyncio.AbstractServer]

    async def start_controller(self) -> None:
        path = str(self.cfg.socket("controller"))
        self.servers["controller"] = await wire.start_server(path, self.controller.handle)

    async def stop_server(self, name: str) -> None:
        server = self.servers.pop(name)
        server.close()
        # Python 3.11's servers leave accepted connections open: drop them like a dying peer.
        writers = self.controller.writers if name == "controller" else self.stubs.writers()
        for writer in writers:
            writer.close()
        await server.wait_closed()


def http(url: str, method: str = "GET", body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    req = urllib.request.Request(url, body, headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


async def ahttp(*args: Any, **kw: Any) -> tuple[int, dict[str, str], bytes]:
    return await asyncio.to_thread(http, *args, **kw)


@asynccontextmanager
async def trigger(records: list[dict[str, Any]]) -> AsyncIterator[Env]:
    run_dir = tempfile.mkdtemp(prefix="ef", dir="/tmp")
    cfg = config.load([], {"paths": {"state_dir": run_dir, "code_dir": run_dir + "/code",
                                     "run_dir": run_dir}, "http": {"listen": "127.0.0.1:0"}})
    env = Env(cfg, FakeController(), FakeStubs(records), "", {})
    env.servers["stubs"] = await wire.start_server(str(cfg.socket("stubs")), env.stubs.handle)
    await env.start_controller()
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(cfg, stop))
    addr = cfg.run_dir / "http.addr"
    try:
        await async_wait_until(lambda: addr.exists() or task.done(), "http.addr")
        env.base = "http://" + addr.read_text().strip()
        yield env
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, TIMEOUT)
            for name in list(env.servers):
                await env.stop_server(name)
            assert not addr.exists()
        finally:
            shutil.rmtree(run_dir)


def run(scenario: Callable[[Env], Awaitable[None]], records: list[dict[str, Any]]) -> None:
    async def main() -> None:
        async with trigger(records) as env:
            await scenario(env)

    asyncio.run(main())


def test_function_route_event_and_json_result() -> None:
    async def scenario(env: Env) -> None:
        status, headers, body = await ahttp(env.base + "/function/hello/a/b?x=1&x=2", "POST",
                                            b'{"k": 1}', {"Content-Type": "application/json"})
        assert status == 200 and headers["content-type"] == "application/json"
        out = json.loads(body)
        assert out["fn"] == "hello"
        event = out["event"]
        assert event["path"] == "/function/hello/a/b"
        assert event["pathParameters"] == {"proxy": "a/b"}
        assert event["multiValueQueryStringParameters"] == {"x": ["1", "2"]}
        assert event["body"] == '{"k": 1}' and event["httpMethod"] == "POST"
        status, _, _ = await ahttp(env.base + "/healthz")
        assert status == 200
        await async_wait_until(lambda: env.controller.registrations == 1, "register")

    run(scenario, [])


def test_binary_round_trip_and_errors() -> None:
    async def scenario(env: Env) -> None:
        blob = bytes(range(256)) * 4
        status, headers, body = await ahttp(env.base + "/function/mirror", "PUT", blob,
                                            {"Content-Type": "application/octet-stream"})
        assert (status, body) == (200, blob)
        status, _, body = await ahttp(env.base + "/function/boom")
        assert status == 500 and json.loads(body)["errorMessage"] == "x"
        status, _, body = await ahttp(env.base + "/function/missing")
        assert status == 404 and json.loads(body)["Code"] == "ResourceNotFoundException"
        status, _, body = await ahttp(env.base + "/function/busy")
        assert status == 429
        status, _, body = await ahttp(env.base + "/nowhere")
        assert status == 404

    run(scenario, [])


def test_controller_down_gives_502_then_recovers_and_reregisters() -> None:
    async def scenario(env: Env) -> None:
        await async_wait_until(lambda: env.controller.registrations == 1, "first register")
        await env.stop_server("controller")
        status, _, _ = await ahttp(env.base + "/function/hello")
        assert status == 502
        await env.start_controller()
        await async_wait_until(lambda: env.controller.registrations == 2, "register after restart")
        status, _, _ = await ahttp(env.base + "/function/hello")
        assert status == 200

    run(scenario, [])


async def until_status(url: str, status: int) -> None:
    """Poll ``url`` until it answers ``status`` (route changes arrive asynchronously)."""
    async def answers() -> bool:
        return (await ahttp(url))[0] == status

    await async_wait_until(answers, f"{url} to answer {status}", timeout=TIMEOUT)


def test_manifest_routes_update_live() -> None:
    async def scenario(env: Env) -> None:
        status, _, body = await ahttp(env.base + "/hi")
        assert status == 200 and json.loads(body)["fn"] == "hi"
        assert json.loads(body)["event"]["resource"] == "/hi"
        status, headers, _ = await ahttp(env.base + "/hi", "POST", b"")
        assert status == 405 and headers["allow"] == "GET"
        env.stubs.push({"event": "update", "function": record("hi", "/hello", ["GET"])})
        await until_status(env.base + "/hello", 200)
        status, _, _ = await ahttp(env.base + "/hi")
        assert status == 404
        env.stubs.push({"event": "delete", "name": "hi"})
        await until_status(env.base + "/hello", 404)

    run(scenario, [record("hi", "/hi", ["GET"])])


def test_resubscribes_when_stubs_restarts() -> None:
    async def scenario(env: Env) -> None:
        await until_status(env.base + "/hi", 200)
        await env.stop_server("stubs")
        env.stubs = FakeStubs([record("new", "/new", ["GET"])])
        path = str(env.cfg.socket("stubs"))
        env.servers["stubs"] = await wire.start_server(path, env.stubs.handle)
        await until_status(env.base + "/new", 200)
        status, _, _ = await ahttp(env.base + "/hi")
        assert status == 404

    run(scenario, [record("hi", "/hi", ["GET"])])
