"""The deploy pipeline and uploads with a fake sandbox validator (no funclet, no inotify)."""

from __future__ import annotations

import asyncio
import io
import logging
import zipfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from waiting import async_wait_until

from easyfaas import funclog
from easyfaas.config import Config, Paths
from easyfaas.errors import FunctionNotFound, InvalidParameter, ManifestError, ServiceUnavailable
from easyfaas.stubs import upload
from easyfaas.stubs.pipeline import FuncletUnavailable, Pipeline
from easyfaas.stubs.registry import Registry
from easyfaas.stubs.store import Store

HELLO = "def handler(event, context):\n    return {'message': 'hello'}\n"


class FakeValidator:
    """Rejects handlers whose source contains 'BROKEN'; 'unavailable' simulates a down funclet."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []
        self.unavailable = False

    async def __call__(self, name: str, config: dict[str, Any], code: Path, version: int) -> None:
        self.calls.append((name, version))
        if self.unavailable:
            raise FuncletUnavailable("funclet unreachable")
        if "BROKEN" in (code / "index.py").read_text():
            raise ManifestError("index.py: ImportError: BROKEN", file="index.py")


class Env:
    def __init__(self, root: Path):
        self.cfg = Config(paths=Paths(code_dir=str(root / "code"), state_dir=str(root / "state")))
        for d in (self.cfg.code_dir, self.cfg.store_dir):
            d.mkdir(parents=True)
        self.store = Store(self.cfg.store_dir)
        self.registry = Registry(self.cfg.state_dir / "registry.json", self.store)
        self.validator = FakeValidator()
        self.events: list[dict[str, Any]] = []
        self.pipeline = Pipeline(self.cfg, self.registry, self.store, self.validator,
                                 self.events.append)

    def write(self, name: str, files: dict[str, str]) -> None:
        for rel, text in files.items():
            path = self.cfg.code_dir / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def record(self, name: str) -> dict[str, Any]:
        return self.registry.record(name)


def run(tmp_path: Path, scenario: Callable[[Env], Awaitable[None]]) -> None:
    env = Env(tmp_path)

    async def main() -> None:
        try:
            await scenario(env)
        finally:
            await env.pipeline.close()

    asyncio.run(main())


def zip_of(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return buf.getvalue()


def test_versions_and_same_content(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        env.write("hello", {"index.py": HELLO})
        await env.pipeline.ingest("hello")
        first = env.record("hello")
        assert first["version"] == 1 and first["state"] == "active"
        assert Path(first["code"], "index.py").read_text() == HELLO
        await env.pipeline.ingest("hello")
        assert env.record("hello")["version"] == 1
        assert env.validator.calls == [("hello", 1)]
        env.write("hello", {"index.py": HELLO + "# v2\n"})
        await env.pipeline.ingest("hello")
        assert env.record("hello")["version"] == 2
        assert [e["event"] for e in env.events] == ["update", "update"]

    run(tmp_path, scenario)


def test_broken_bundle_keeps_live_version(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(env: Env) -> None:
        env.write("hello", {"index.py": HELLO})
        await env.pipeline.ingest("hello")
        live = env.record("hello")["code_sha256"]
        env.write("hello", {"function.toml": "memroy = 128\n"})
        with caplog.at_level(logging.WARNING, logger="easyfaas.stubs"):
            await env.pipeline.ingest("hello")
            await env.pipeline.ingest("hello")
        record = env.record("hello")
        assert record["version"] == 1 and record["code_sha256"] == live
        assert record["error"]["key"] == "memroy" and record["error"]["file"] == "function.toml"
        assert "unknown key 'memroy'" in record["error"]["message"]
        assert len([r for r in caplog.records if "memroy" in r.getMessage()]) == 1
        assert "DEPLOY ERROR function.toml: unknown key" in funclog.tail(env.cfg.state_dir,
                                                                        "hello")
        # Back to the live content: the error clears, no new version.
        (env.cfg.code_dir / "hello" / "function.toml").unlink()
        await env.pipeline.ingest("hello")
        assert env.record("hello")["error"] is None and env.record("hello")["version"] == 1

    run(tmp_path, scenario)


def test_handler_that_does_not_import_never_goes_live(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        env.write("fn", {"index.py": "BROKEN"})
        await env.pipeline.ingest("fn")
        record = env.record("fn")
        assert record["state"] == "failed" and record["version"] is None
        assert record["error"]["file"] == "index.py"
        assert list(env.cfg.store_dir.iterdir()) == []  # the rejected snapshot was collected

    run(tmp_path, scenario)


def test_funclet_down_retries_then_promotes(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        env.validator.unavailable = True
        env.write("fn", {"index.py": HELLO})
        await env.pipeline.ingest("fn")
        assert "fn" not in env.registry.names()
        env.validator.unavailable = False
        await async_wait_until(lambda: "fn" in env.registry.names())
        assert env.record("fn")["version"] == 1 and env.record("fn")["error"] is None

    run(tmp_path, scenario)


def test_removed_dir_drops_function_and_snapshots(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        env.write("fn", {"index.py": HELLO})
        await env.pipeline.ingest("fn")
        for path in sorted((env.cfg.code_dir / "fn").rglob("*"), reverse=True):
            path.unlink()
        (env.cfg.code_dir / "fn").rmdir()
        await env.pipeline.ingest("fn")
        assert "fn" not in env.registry.names()
        assert env.events[-1] == {"event": "delete", "name": "fn"}
        assert list(env.cfg.store_dir.iterdir()) == []

    run(tmp_path, scenario)


def test_rescan_ignores_bad_names(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        env.write("good", {"index.py": HELLO})
        env.write("bad name", {"index.py": HELLO})
        env.write(".hidden", {"index.py": HELLO})
        await env.pipeline.rescan()
        assert env.registry.names() == {"good"}

    run(tmp_path, scenario)


def test_upload_installs_and_records(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        body = upload.manifest_from_body({"Runtime": "python3", "Handler": "index.handler",
                                          "MemorySize": 256, "Timeout": 5, "Description": "d",
                                          "Environment": {"Variables": {"A": "b"}}})
        record = await upload.put(env.pipeline, "up", body, zip_of({"index.py": HELLO}))
        assert record["version"] == 1 and record["config"]["memory"] == 256
        assert record["config"]["env"] == {"A": "b"} and record["config"]["timeout"] == 5.0
        installed = env.cfg.code_dir / "up"
        assert (installed / "index.py").read_text() == HELLO
        assert "memory = 256" in (installed / "function.toml").read_text()
        assert sorted(p.name for p in env.cfg.code_dir.iterdir()) == ["up"]
        # A bad upload changes nothing: not the code dir, not the record.
        with pytest.raises(ManifestError, match="BROKEN"):
            await upload.put(env.pipeline, "up", {}, zip_of({"index.py": "BROKEN"}))
        with pytest.raises(InvalidParameter, match="unsafe path"):
            await upload.put(env.pipeline, "up", {}, zip_of({"../x": "evil"}))
        assert (installed / "index.py").read_text() == HELLO
        assert sorted(p.name for p in env.cfg.code_dir.iterdir()) == ["up"]
        assert env.record("up")["version"] == 1 and env.record("up")["error"] is None
        env.validator.unavailable = True
        with pytest.raises(ServiceUnavailable):
            await upload.put(env.pipeline, "up", {}, zip_of({"index.py": HELLO + "#2"}))
        assert env.record("up")["version"] == 1

    run(tmp_path, scenario)


def test_upload_bad_parameters(tmp_path: Path) -> None:
    with pytest.raises(InvalidParameter, match="unknown parameter 'Memory'"):
        upload.manifest_from_body({"Memory": 1})
    with pytest.raises(InvalidParameter, match="Variables"):
        upload.manifest_from_body({"Environment": {"A": "b"}})

    async def scenario(env: Env) -> None:
        with pytest.raises(InvalidParameter, match="must match"):
            await upload.put(env.pipeline, "../x", {}, zip_of({"index.py": HELLO}))
        with pytest.raises(ManifestError, match="'memory' must be between"):
            await upload.put(env.pipeline, "ok", {"memory": 1}, zip_of({"index.py": HELLO}))
        assert list(env.cfg.code_dir.iterdir()) == []

    run(tmp_path, scenario)


def test_delete(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        env.write("fn", {"index.py": HELLO})
        await env.pipeline.ingest("fn")
        await upload.delete(env.pipeline, "fn")
        assert "fn" not in env.registry.names()
        assert list(env.cfg.code_dir.iterdir()) == []
        with pytest.raises(FunctionNotFound):
            await upload.delete(env.pipeline, "fn")

    run(tmp_path, scenario)


def test_to_toml_round_trips() -> None:
    import tomllib

    data = {"runtime": "python3", "timeout": 2.5, "max_instances": None,
            "env": {"Q": 'say "hi"\n'}, "http": [{"path": "/a", "methods": ["GET"]}]}
    parsed = tomllib.loads(upload.to_toml(data))
    assert parsed == {"runtime": "python3", "timeout": 2.5, "env": {"Q": 'say "hi"\n'},
                      "http": [{"path": "/a", "methods": ["GET"]}]}


def test_shared_snapshot_survives_a_concurrent_rejection(tmp_path: Path) -> None:
    async def scenario(env: Env) -> None:
        a_done = asyncio.Event()

        async def validator(name: str, config: dict[str, Any], code: Path, version: int) -> None:
            if name == "a":
                a_done.set()
                raise ManifestError("index.py: rejected for a", file="index.py")
            await a_done.wait()  # b is still validating while a's rejection collects garbage

        env.pipeline.validator = validator
        env.write("a", {"index.py": HELLO})
        env.write("b", {"index.py": HELLO})
        await asyncio.gather(env.pipeline.ingest("b"), env.pipeline.ingest("a"))
        record = env.record("b")
        assert record["version"] == 1 and Path(record["code"], "index.py").read_text() == HELLO

    run(tmp_path, scenario)
