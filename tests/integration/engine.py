"""Run a whole engine (``easyfaas up`` as a subprocess) on tmp dirs, for end-to-end tests.

    with Engine.started(code_dir) as engine:
        status, headers, body = engine.invoke("hello", {"x": 1})
        status, headers, body = engine.http("GET", "/function/hello")

``stop()`` (also on leaving the block, even after a failure) sends SIGTERM and then checks that
nothing is left behind: no processes, no cgroups of this engine, no mounts under its run dir.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from easyfaas import config

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
READY_PREFIX = "easyfaas: ready"

Response = tuple[int, dict[str, str], bytes]


def request(url: str, method: str = "GET", body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 30.0) -> Response:
    req = urllib.request.Request(url, body, headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers.items()), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers.items()), e.read()


class Engine:
    """One ``easyfaas up`` process and the addresses it reported."""

    def __init__(self, code_dir: Path, state_dir: Path, env: dict[str, str] | None = None,
                 config_toml: str = ""):
        self.code_dir, self.state_dir = code_dir, state_dir
        # An engine.toml of the test's own (never the host's /etc files).
        self.config_file = state_dir / "engine.toml"
        self.config_file.write_text(config_toml)
        self.cfg = config.load([self.config_file], {"paths": {"code_dir": str(code_dir),
                                                              "state_dir": str(state_dir)}})
        self.argv = [sys.executable, "-m", "easyfaas", "up", "--config", str(self.config_file),
                     "--code-dir", str(code_dir), "--state-dir", str(state_dir),
                     "--http-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.ready_line = ""
        self.descendants: set[int] = set()

    # ---- lifecycle ---------------------------------------------------------------------------

    @classmethod
    @contextmanager
    def started(cls, code_dir: Path | None = None, env: dict[str, str] | None = None,
                config_toml: str = "") -> Iterator[Engine]:
        """A running engine on a fresh short state dir (unix socket paths are length-limited)."""
        state = Path(tempfile.mkdtemp(prefix="ef", dir="/tmp"))
        engine = cls(code_dir or state / "code", state, env, config_toml)
        try:
            engine.start()
            yield engine
        finally:
            engine.stop()
            shutil.rmtree(state, ignore_errors=True)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True, env=self.env)
        threading.Thread(target=self._pump, daemon=True).start()
        self.ready_line = self.wait_for_line(READY_PREFIX, START_TIMEOUT)

    def _pump(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        """The next stdout line starting with ``prefix``; fails if ``up`` exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                assert self.proc is not None
                if self.proc.poll() is not None and self.lines.empty():
                    raise AssertionError(f"easyfaas up exited with {self.proc.returncode}; "
                                         f"output: {self.output}") from None
                continue
            self.output.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line {prefix!r} within {timeout:.0f}s; output: {self.output}")

    def stop(self) -> int | None:
        """SIGTERM ``up``, wait for it, and verify nothing of the engine is left."""
        if self.proc is None:
            return None
        self.descendants |= {p.pid for p in self._children()}
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill_all()
                raise AssertionError("easyfaas up did not stop within "
                                     f"{STOP_TIMEOUT:.0f}s after SIGTERM") from None
        leftovers = self.leftovers()
        self._kill_all()
        assert not leftovers, f"left behind after stop: {leftovers}"
        return self.proc.returncode

    def _children(self) -> list[psutil.Process]:
        try:
            assert self.proc is not None
            return psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _kill_all(self) -> None:
        # Only after a failed check: leave the host clean for the next test anyway.
        for pid in self.descendants:
            try:
                psutil.Process(pid).kill()
            except psutil.NoSuchProcess:
                pass

    def leftovers(self) -> list[str]:
        """Processes, cgroups and mounts of this engine that still exist."""
        out = [f"process {pid}" for pid in self.descendants if _alive(pid)]
        instance = self.cfg.instance_id
        for root in Path("/sys/fs/cgroup").iterdir():
            out += [f"cgroup {p}" for p in root.glob(f"**/{instance}*") if p.is_dir()]
        run_dir = str(self.cfg.run_dir)
        with open("/proc/self/mountinfo") as f:
            out += [f"mount {line.split()[4]}" for line in f
                    if line.split()[4].startswith(run_dir)]
        return out

    # ---- talking to it -----------------------------------------------------------------------

    def _addr(self, name: str) -> str:
        return (self.cfg.run_dir / f"{name}.addr").read_text().strip()

    @property
    def http_addr(self) -> str:
        return self._addr("http")

    @property
    def api_addr(self) -> str:
        return self._addr("api")

    @property
    def token(self) -> str:
        return self.cfg.token_file.read_text().strip()

    def http(self, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None) -> Response:
        """A request to the HTTP trigger."""
        return request(f"http://{self.http_addr}{path}", method, body, headers)

    def api(self, method: str, path: str, body: Any = None,
            headers: dict[str, str] | None = None) -> Response:
        """A request to the engine API with the management token (``body``: JSON value)."""
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        return request(f"http://{self.api_addr}{path}", method, data, hdrs)

    def invoke(self, name: str, event: Any = None, qualifier: str | None = None,
               headers: dict[str, str] | None = None) -> Response:
        """``POST /v1/functions/<name>/invocations``; the body is the JSON of ``event``."""
        query = f"?Qualifier={qualifier}" if qualifier else ""
        data = json.dumps({} if event is None else event).encode()
        return request(f"http://{self.api_addr}/v1/functions/{name}/invocations{query}",
                       "POST", data, headers)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run ``easyfaas ARGS`` against this engine."""
        argv = [sys.executable, "-m", "easyfaas", *args, "--config", str(self.config_file),
                "--state-dir", str(self.state_dir), "--code-dir", str(self.code_dir)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60, env=self.env)


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
