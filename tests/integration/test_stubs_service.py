"""The stubs service for real: inotify on a tmp code dir, stubs.sock, a fake funclet validator.

Each test drives the code dir the way users do (cp -r, atomic saves, mv, rm -r) or the socket
the way the controller does, and observes the result through ``watch`` and ``get``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import shutil
import tempfile
import time
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from waiting import async_wait_until

from easyfaas import wire
from easyfaas.config import Config, Paths
from easyfaas.errors import ManifestError
from easyfaas.stubs import service

pytestmark = pytest.mark.root

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT = 5.0


class Watch:
    """A raw ``watch`` subscription (wire.Client keeps only the first frame of a request)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def next(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        frame = await asyncio.wait_for(wire.read_frame(self.reader), timeout)
        assert frame is not None, "watch stream ended"
        return frame[0]

    async def until(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT
        while True:
            event = await self.next(max(deadline - time.monotonic(), 0.01))
            if match(event):
                return event


class Env:
    def __init__(self, root: Path):
        self.root = root
        self.cfg = Config(paths=Paths(code_dir=str(root / "code"), state_dir=str(root / "st"),
                                      run_dir=str(root / "run")))
        self.client = wire.Client(str(self.cfg.socket("stubs")))
        self.validations: list[str] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.funclet_server: asyncio.AbstractServer | None = None

    async def funclet(self, header: wire.Header, payload: bytes, writer: Any) -> Any:
        if header["op"] == "validate":
            self.validations.append(f"{header['name']}@{header['version']}")
            files = [p for p in Path(header["code"]).rglob("*") if p.is_file()]
            if any("BROKEN" in p.read_text() for p in files):
                raise ManifestError("ModuleNotFoundError: No module named 'nonexistent'")
        return {}, b""

    async def start_funclet(self) -> None:
        path = str(self.cfg.socket("funclet"))
        self.funclet_server = await wire.start_server(path, self.funclet)

    async def start(self) -> None:
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(service.run(self.cfg, self._stop))
        task = self._task

        async def serving() -> bool:
            assert not task.done(), "stubs exited"
            with contextlib.suppress(OSError):
                await self.client.call("ping")
                return True
            return False

        await async_wait_until(serving, "stubs to serve", timeout=TIMEOUT)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.wait_for(self._task, TIMEOUT)
        await self.client.close()

    async def watch(self) -> Watch:
        reader, writer = await asyncio.open_unix_connection(str(self.cfg.socket("stubs")))
        writer.write(wire.encode({"id": 1, "op": "watch"}))
        watch = Watch(reader, writer)
        assert (await watch.next())["event"] == "snapshot"
        return watch

    async def get(self, name: str) -> dict[str, Any]:
        header, _ = await self.client.call("get", name=name)
        return dict(header["function"])


@contextlib.asynccontextmanager
async def stubs(with_funclet: bool) -> AsyncIterator[Env]:
    root = Path(tempfile.mkdtemp(prefix="ef", dir="/tmp"))  # short: sockets live below it
    env = Env(root)
    env.cfg.run_dir.mkdir(parents=True)
    try:
        if with_funclet:
            await env.start_funclet()
        await env.start()
        yield env
    finally:
        await env.stop()
        if env.funclet_server is not None:
            env.funclet_server.close()
        shutil.rmtree(root, ignore_errors=True)


def run(scenario: Callable[[Env], Awaitable[None]], with_funclet: bool = True) -> None:
    async def main() -> None:
        async with stubs(with_funclet) as env:
            await scenario(env)

    asyncio.run(main())


def update_of(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e["event"] == "update" and e["function"]["name"] == name


def deleted(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e == {"id": 1, "ok": True, "event": "delete", "name": name}


def test_copy_in_edit_and_broken_edit() -> None:
    async def scenario(env: Env) -> None:
        watch = await env.watch()
        started = time.monotonic()
        shutil.copytree(EXAMPLES / "hello", env.cfg.code_dir / "hello")
        event = await watch.until(update_of("hello"))
        assert time.monotonic() - started < 1.0
        assert event["function"]["version"] == 1
        assert event["function"]["config"]["http"] == [{"path": "/hello",
                                                         "methods": ["GET", "POST"]}]
        # An editor's atomic save: write a temp file, rename it over the original.
        fn_dir = env.cfg.code_dir / "hello"
        (fn_dir / ".index.py.swp").write_text("def handler(e, c):\n    return 2\n")
        os.rename(fn_dir / ".index.py.swp", fn_dir / "index.py")
        assert (await watch.until(update_of("hello")))["function"]["version"] == 2
        (fn_dir / "function.toml").write_text("memroy = 128\n")
        event = await watch.until(update_of("hello"))
        assert event["function"]["version"] == 2
        assert event["function"]["error"]["key"] == "memroy"
        assert (await env.get("hello"))["state"] == "active"
        assert env.validations == ["hello@1", "hello@2"]

    run(scenario)


def test_handler_that_does_not_import_is_reported() -> None:
    async def scenario(env: Env) -> None:
        watch = await env.watch()
        shutil.copytree(EXAMPLES / "hello", env.cfg.code_dir / "hello")
        await watch.until(update_of("hello"))
        (env.cfg.code_dir / "hello" / "index.py").write_text("import nonexistent  # BROKEN\n")
        event = await watch.until(update_of("hello"))
        error = event["function"]["error"]
        assert error["file"] == "index.py" and "nonexistent" in error["message"]
        assert event["function"]["version"] == 1

    run(scenario)


def test_rename_move_out_and_remove() -> None:
    async def scenario(env: Env) -> None:
        watch = await env.watch()
        code = env.cfg.code_dir
        shutil.copytree(EXAMPLES / "hello", code / "a")
        await watch.until(update_of("a"))
        os.rename(code / "a", code / "b")
        first = await watch.until(lambda e: deleted("a")(e) or update_of("b")(e))
        await watch.until(update_of("b") if deleted("a")(first) else deleted("a"))
        # Still watched under its new name: an edit inside it is picked up.
        (code / "b" / "index.py").write_text("def handler(e, c):\n    return 3\n")
        assert (await watch.until(update_of("b")))["function"]["version"] == 2
        os.rename(code / "b", env.root / "outside")
        await watch.until(deleted("b"))
        shutil.copytree(EXAMPLES / "hello-shell", code / "sh")
        assert (await watch.until(update_of("sh")))["function"]["config"]["runtime"] == "shell"
        shutil.rmtree(code / "sh")
        await watch.until(deleted("sh"))
        _, _ = await env.client.call("ping")
        assert (await env.client.call("list"))[0]["functions"] == []

    run(scenario)


def zip_of(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def test_put_get_delete_over_the_socket() -> None:
    async def scenario(env: Env) -> None:
        body = {"Runtime": "python3", "Handler": "index.handler", "MemorySize": 64}
        code = zip_of({"index.py": (EXAMPLES / "hello" / "index.py").read_text()})
        header, _ = await env.client.call("put", code, name="up", body=body)
        assert header["function"]["version"] == 1 and header["function"]["config"]["memory"] == 64
        assert (env.cfg.code_dir / "up" / "index.py").is_file()
        with pytest.raises(wire.RemoteError) as info:
            await env.client.call("put", code, name="up", body={"Memroy": 1})
        assert info.value.error["type"] == "InvalidParameter"
        with pytest.raises(wire.RemoteError) as info:
            await env.client.call("put", zip_of({"index.py": "# BROKEN"}), name="up", body={})
        assert info.value.error["type"] == "ManifestError"
        assert info.value.error["file"] == "index.py"
        assert (await env.get("up"))["version"] == 1
        await env.client.call("delete", name="up")
        with pytest.raises(wire.RemoteError) as info:
            await env.get("up")
        assert info.value.error["type"] == "FunctionNotFound"
        assert list(env.cfg.code_dir.iterdir()) == []

    run(scenario)


def test_restart_keeps_versions_and_rescans() -> None:
    async def scenario(env: Env) -> None:
        code = env.cfg.code_dir
        watch = await env.watch()
        shutil.copytree(EXAMPLES / "hello", code / "keep")
        shutil.copytree(EXAMPLES / "hello", code / "gone")
        seen: set[str] = set()  # the two deploy in either order
        while seen != {"keep", "gone"}:
            seen.add((await watch.until(lambda e: e["event"] == "update"))["function"]["name"])
        watch.writer.close()
        await env.stop()
        # While stubs is down: one function removed, one changed, one added.
        shutil.rmtree(code / "gone")
        (code / "keep" / "index.py").write_text("def handler(e, c):\n    return 1\n")
        shutil.copytree(EXAMPLES / "hello-node", code / "new")
        await env.start()
        names = [f["name"] for f in (await env.client.call("list"))[0]["functions"]]
        assert names == ["keep", "new"]
        keep = await env.get("keep")
        assert keep["version"] == 2 and sorted(keep["versions"]) == ["1", "2"]
        assert (await env.get("new"))["config"]["runtime"] == "nodejs"

    run(scenario)


def test_nothing_goes_live_while_the_funclet_is_down() -> None:
    async def scenario(env: Env) -> None:
        watch = await env.watch()
        shutil.copytree(EXAMPLES / "hello", env.cfg.code_dir / "hello")
        with pytest.raises(TimeoutError):
            await watch.next(timeout=0.6)  # past the debounce and the first validation try
        assert (await env.client.call("list"))[0]["functions"] == []
        await env.start_funclet()
        event = await watch.until(update_of("hello"))
        assert event["function"]["version"] == 1 and env.validations == ["hello@1"]

    run(scenario, with_funclet=False)
