"""End to end: what a function can and cannot do, and how the engine contains it."""

from __future__ import annotations

import concurrent.futures
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from _functions import FORK_BOMB, HELLO, MEMORY_HOG, PROBE, QUEUED, SLEEPY, deploy
from waiting import wait_until

from engine import Engine

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with Engine.started(config_toml="[sandbox]\npids_max = 32\n") as e:
        deploy(e.code_dir, "hello", HELLO)
        wait_until(lambda: e.invoke("hello")[0] == 200, "hello to serve")
        yield e


def call(engine: Engine, name: str, event: object = None) -> tuple[int, dict[str, str], object]:
    status, headers, raw = engine.invoke(name, event)
    return status, headers, json.loads(raw)


def test_function_cannot_reach_the_host(engine: Engine) -> None:
    deploy(engine.code_dir, "probe", PROBE)
    wait_until(lambda: engine.invoke("probe", {"host_file": "/", "state_dir": "/",
                                               "api_port": 1})[0] == 200, "probe to serve")
    api_port = int(engine.api_addr.rsplit(":", 1)[1])
    status, headers, out = call(engine, "probe", {"host_file": str(engine.cfg.token_file),
                                                  "state_dir": str(engine.state_dir),
                                                  "api_port": api_port})
    assert status == 200 and "X-easyfaas-Function-Error" not in headers, out
    assert isinstance(out, dict)
    assert out["uid"] != 0
    assert len(out["pids"]) < 5, f"sees other processes: {out['pids']}"
    assert out["read_host_file"].startswith("denied"), out["read_host_file"]
    assert out["read_shadow"].startswith("denied")
    assert out["list_state_dir"].startswith("denied")
    assert out["connect_api"].startswith("denied")
    assert out["write_task"].startswith("denied")
    assert out["write_tmp"].startswith("ok")


def sleep_processes(marker: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", marker]]


def test_timeout_kills_the_sandbox(engine: Engine) -> None:
    deploy(engine.code_dir, "sleepy", SLEEPY)
    wait_until(lambda: engine.invoke("sleepy")[0] == 200, "sleepy to serve")
    status, headers, out = call(engine, "sleepy", {"seconds": 30, "child": 4321})
    assert status == 200
    assert headers.get("X-easyfaas-Function-Error") == "Unhandled"
    assert isinstance(out, dict) and "Task timed out after 1.00 seconds" in out["errorMessage"]
    # The whole sandbox went, the function's child process with it.
    wait_until(lambda: not sleep_processes("4321"), "the timed-out call's processes to die")
    status, _, out = call(engine, "sleepy", {"seconds": 0})
    assert status == 200 and out == {"slept": 0}


def test_memory_hog_is_killed_and_others_keep_answering(engine: Engine) -> None:
    deploy(engine.code_dir, "hog", MEMORY_HOG)
    wait_until(lambda: engine.invoke("hog", {"mib": 1})[0] == 200, "hog to serve")
    answers: list[int] = []
    stop = threading.Event()

    def others() -> None:
        while not stop.is_set():
            answers.append(engine.invoke("hello")[0])

    t = threading.Thread(target=others)
    t.start()
    try:
        status, headers, out = call(engine, "hog", {"mib": 512})
    finally:
        stop.set()
        t.join()
    assert status == 200 and headers.get("X-easyfaas-Function-Error") == "Unhandled"
    assert isinstance(out, dict) and out["errorType"] == "Runtime.OutOfMemory", out
    assert "64" in out["errorMessage"]
    assert answers and set(answers) == {200}
    assert call(engine, "hog", {"mib": 1})[2] == {"held": 1}


def test_fork_bomb_stops_at_the_pids_limit(engine: Engine) -> None:
    deploy(engine.code_dir, "bomb", FORK_BOMB)
    wait_until(lambda: engine.api("GET", "/v1/functions/bomb")[0] == 200, "bomb to be deployed")
    status, headers, out = call(engine, "bomb")
    assert status == 200, out
    assert isinstance(out, dict) and out["error"] == "BlockingIOError", out
    assert out["forked"] < 32
    assert call(engine, "hello")[0] == 200


@pytest.mark.parametrize("behind, error", [
    ({"mib": 512}, "Runtime.OutOfMemory"),
    ({"hold_interpreter_s": 60}, "TimeoutError"),
])
def test_an_answer_the_runner_kept_back_is_not_lost_with_its_sandbox(
        behind: dict[str, int], error: str) -> None:
    """In real sandboxes (docs/internals.md, runner.sock): the first call ends while two more
    wait in its runner's socket, so the runner keeps its answer back and starts the second,
    which is OOM-killed, or holds the interpreter (so nothing is sent) until it is killed at its
    timeout. The first call still answers, the second fails, the third runs in a new sandbox."""
    token = f"held-{uuid.uuid4().hex}"
    with Engine.started(config_toml="[scheduler]\nqueue_in_sandbox_below_ms = 60000\n") as e:
        deploy(e.code_dir, "queued", QUEUED)
        wait_until(lambda: e.invoke("queued")[0] == 200, "queued to serve")
        events = [{"n": 1, "hold": token}, {"n": 2, **behind}, {"n": 3}]
        with concurrent.futures.ThreadPoolExecutor(3) as pool:
            calls = []
            for n, event in enumerate(events, 1):
                calls.append(pool.submit(call, e, "queued", event))
                wait_until(lambda n=n: _inflight(e, "queued") == [n], f"{n} calls in its sandbox")
            held = wait_until(lambda: _sandbox_with(token), "the first call to run")
            (held / "release").touch()
            (s1, _, o1), (s2, h2, o2), (s3, _, o3) = [c.result() for c in calls]
    assert s1 == 200 and isinstance(o1, dict) and o1["n"] == 1, o1
    assert s2 == 200 and h2.get("X-easyfaas-Function-Error") == "Unhandled", o2
    assert isinstance(o2, dict) and o2["errorType"] == error, o2
    assert s3 == 200 and isinstance(o3, dict) and o3["n"] == 3, o3


def _inflight(engine: Engine, name: str) -> list[int]:
    _, _, raw = engine.api("GET", "/v1/runtimes")
    return [sb["inflight"] for sb in json.loads(raw)["sandboxes"] if sb["function"] == name]


def _sandbox_with(name: str) -> Path | None:
    """The /tmp, seen from the host, of the sandbox that has a file ``name`` there."""
    for proc in Path("/proc").iterdir():
        tmp = proc / "root" / "tmp"
        try:
            if proc.name.isdigit() and (tmp / name).exists():
                return tmp
        except OSError:  # gone, or not ours to look into
            continue
    return None
