"""An ``easyfaas up`` on tmp dirs for the benchmark, and deploying the shared handlers into it."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bench import procs

HANDLERS_DIR = Path(__file__).parent / "handlers"
MEMORY_MB = 128  # of a deployed function, unless it says otherwise
START_TIMEOUT = 60.0


class Engine:
    """A running engine: its dirs, the bound addresses and its root process."""

    def __init__(self, state: Path, pid: int) -> None:
        self.state, self.pid = state, pid
        self.code_dir = state / "code"
        self.staging = state / "staging"  # same filesystem as code_dir: rename is atomic
        run = state / "run"
        self.http = "http://" + (run / "http.addr").read_text().strip()
        self.api = "http://" + (run / "api.addr").read_text().strip()

    def url(self, name: str) -> str:
        return f"{self.http}/function/{name}"

    def invoke_url(self, name: str) -> str:
        return f"{self.api}/v1/functions/{name}/invocations"

    def runtimes(self) -> dict[str, Any]:
        status, body = procs.request(f"{self.api}/v1/runtimes", "GET")
        if status != 200:
            raise RuntimeError(f"GET /v1/runtimes answered {status}: {body[:200]!r}")
        return dict(json.loads(body))

    def stage(self, name: str, handler: str, memory: int = MEMORY_MB) -> Path:
        """A complete bundle of ``handler`` in the staging dir, ready to be renamed in."""
        bundle = self.staging / name
        bundle.mkdir()
        shutil.copy(HANDLERS_DIR / f"{handler}.py", bundle)
        (bundle / "function.toml").write_text(
            f'runtime = "python3"\nhandler = "{handler}.handler"\nmemory = {memory}\n'
            "timeout = 3\n")
        return bundle

    def publish(self, bundle: Path) -> None:
        """Move a staged bundle into the code dir in one rename: it appears complete."""
        bundle.rename(self.code_dir / bundle.name)

    def edit(self, name: str, handler: str, marker: str) -> None:
        """Replace the handler file of a deployed function atomically, as an editor saves it."""
        source = (HANDLERS_DIR / f"{handler}.py").read_text()
        # A dot-prefixed temp file is not part of the bundle (docs/internals.md).
        tmp = self.code_dir / name / f".{handler}.py.tmp"
        tmp.write_text(source.replace("hello world", f"hello world {marker}"))
        tmp.rename(self.code_dir / name / f"{handler}.py")

    def deploy(self, name: str, handler: str, memory: int = MEMORY_MB) -> None:
        """Deploy and wait until the function answers over the HTTP trigger."""
        self.publish(self.stage(name, handler, memory))
        procs.wait_until(lambda: procs.answers(self.url(name)), f"{name} to serve",
                         interval=0.05)


def sandbox_pids(funclet_status: dict[str, Any]) -> set[int]:
    """Every process inside the sandboxes of the funclet's ``status`` (``Engine.runtimes()``)."""
    return {p.pid for sb in funclet_status["sandboxes"] for p in procs.tree(int(sb["pid"]))}


@contextmanager
def running(config_toml: str, cpus: str | None, log: str,
            env: dict[str, str] | None = None) -> Iterator[Engine]:
    """An engine with its own ``engine.toml`` on a fresh short tmp dir; stopped, then removed.
    ``env`` adds to the environment (``PYTHONPATH``: another tree's engine, bench/ab.py)."""
    state = Path(tempfile.mkdtemp(prefix="efbench", dir="/tmp"))
    try:
        (state / "code").mkdir()
        (state / "staging").mkdir()
        config = state / "engine.toml"
        config.write_text(config_toml)
        argv = procs.pinned([sys.executable, "-m", "easyfaas", "up", "--config", str(config),
                             "--code-dir", str(state / "code"), "--state-dir", str(state),
                             "--http-listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"],
                            cpus)
        with procs.started(argv, env, log) as proc:
            procs.wait_until(lambda: _healthy(state, proc.poll()), "the engine to be healthy",
                             START_TIMEOUT, interval=0.05)
            yield Engine(state, proc.pid)
    finally:
        shutil.rmtree(state, ignore_errors=True)


def _healthy(state: Path, exited: int | None) -> bool:
    if exited is not None:
        raise RuntimeError(f"easyfaas up exited with {exited} before it was healthy")
    addr = state / "run" / "api.addr"
    if not addr.exists() or not (state / "run" / "http.addr").exists():
        return False
    status, _ = procs.request(f"http://{addr.read_text().strip()}/healthz", "GET")
    return status == 200
