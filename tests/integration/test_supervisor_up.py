"""``easyfaas up``: readiness, restart of a dead component, clean stop, start failures.

The real stubs/funclet/controller are not needed here: ``EASYFAAS_UP_COMPONENTS`` (a test-only
seam) runs the HTTP trigger plus a fake component from ``_supervisor_helpers``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from waiting import wait_until

from engine import Engine

pytestmark = pytest.mark.root

HERE = Path(__file__).parent


def fake_env(log: Path, mode: str = "") -> dict[str, str]:
    return {
        # The trigger serves once it has stubs' route snapshot, so the real stubs run too.
        "EASYFAAS_UP_COMPONENTS": "fake=_supervisor_helpers,stubs,httptrigger",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        "FAKE_LOG": str(log),
        "FAKE_MODE": mode,
    }


def events(log: Path) -> list[list[str]]:
    return [line.split() for line in log.read_text().splitlines()] if log.exists() else []


def test_ready_restart_and_clean_stop(tmp_path: Path) -> None:
    log = tmp_path / "fake.log"
    with Engine.started(env=fake_env(log)) as engine:
        assert engine.ready_line.startswith("easyfaas: ready — trigger http://127.0.0.1:")
        assert f"code dir {engine.code_dir}" in engine.ready_line
        assert engine.code_dir.is_dir()
        status, _, _ = engine.http("GET", "/healthz")
        assert status == 200
        first = events(log)[0]
        assert first[0] == "start" and "--state-dir" in first and str(engine.state_dir) in first
        os.kill(int(first[1]), signal.SIGKILL)
        restarted = wait_until(lambda: [e for e in events(log) if e[0] == "start"][1:],
                               "the fake component to be restarted")
        assert restarted[0][1] != first[1]
        pid = restarted[0][1]
        assert engine.stop() == 0
    assert ["stop", pid] in events(log)
    assert not (engine.cfg.run_dir / "http.addr").exists()


def test_component_that_dies_before_ready_fails_up(tmp_path: Path) -> None:
    state = tmp_path / "s"
    argv = [sys.executable, "-m", "easyfaas", "up", "--state-dir", str(state),
            "--http-listen", "127.0.0.1:0"]
    env = {**os.environ, **fake_env(tmp_path / "fake.log", mode="exit")}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 1
    assert "easyfaas: error: fake exited with status 3 before it was ready" in result.stderr
    assert "ready —" not in result.stdout
