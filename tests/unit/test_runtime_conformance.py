"""The same conformance cases against the python3, nodejs and shell runners."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from _runtime_functions import CONFORMANCE_FILES, write_function
from _runtime_helpers import RunnerProc, invoke_fields, running

from easyfaas.wire import Client, FrameBuffer, encode

ALL = ["python3", "nodejs", "shell"]
HANDLERS = {"python3": "index.handler", "nodejs": "index.handler", "shell": "bootstrap"}


@pytest.fixture(scope="module", params=ALL)
def loaded(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, RunnerProc]]:  # fmt: skip
    """One runner per runtime with the conformance handler loaded, shared by this module."""
    runtime: str = request.param
    name, text = CONFORMANCE_FILES[runtime]
    task = write_function(tmp_path_factory.mktemp(runtime), {name: text})
    with running(runtime, task) as runner:
        # Two calls in flight at once: the attribution case needs them side by side.
        resp = runner.load(HANDLERS[runtime], runtime=runtime, concurrency=2)
        assert resp["ok"], resp
        yield runtime, runner


def test_ping(loaded: tuple[str, RunnerProc]) -> None:
    assert loaded[1].call("ping")[0]["ok"] is True


def test_socket_is_group_accessible(loaded: tuple[str, RunnerProc]) -> None:
    assert stat.S_IMODE(os.stat(loaded[1].socket).st_mode) == 0o660


def test_event_round_trip(loaded: tuple[str, RunnerProc]) -> None:
    event = {"action": "echo", "nested": {"list": [1, 2.5, None, True], "text": "grüße ✓ 漢字"}}
    resp, body = loaded[1].invoke(event)
    assert resp["ok"], resp
    assert json.loads(body) == event


def test_large_event_round_trip(loaded: tuple[str, RunnerProc]) -> None:
    event = {"action": "echo", "blob": "ü" * (2 * 1024 * 1024)}  # arrives in many chunks
    resp, body = loaded[1].invoke(event)
    assert resp["ok"], resp
    assert json.loads(body) == event


def test_empty_event_is_an_empty_object(loaded: tuple[str, RunnerProc]) -> None:
    resp, body = loaded[1].invoke(raw=b"")
    assert resp["ok"], resp
    assert json.loads(body) == {"saw": {}}


def test_context_fields(loaded: tuple[str, RunnerProc]) -> None:
    runtime, runner = loaded
    resp, body = runner.invoke({"action": "context"}, timeout_ms=4000, request_id="rq-42")
    assert resp["ok"], resp
    ctx = json.loads(body)
    assert ctx["request_id"] == "rq-42"
    assert (ctx["function_name"], ctx["function_version"], ctx["memory"]) == ("conf", "7", 256)
    if runtime != "shell":
        assert ctx["aws_request_id"] == "rq-42"
        assert 3000 < ctx["remaining"] <= 4000


def test_without_a_deadline_the_timeout_counts_from_the_start(
        loaded: tuple[str, RunnerProc]) -> None:
    """A call the controller sends to wait behind another carries no deadline: it runs the
    function's whole timeout (5 s in the spec loaded here) from when it starts."""
    runtime, runner = loaded
    resp, body = runner.call("invoke", json.dumps({"action": "context"}).encode(),
                             request_id="rq-43")
    assert resp["ok"], resp
    ctx = json.loads(body)
    assert ctx["request_id"] == "rq-43"
    if runtime != "shell":
        assert 4000 < ctx["remaining"] <= 5000


def test_env_from_load(loaded: tuple[str, RunnerProc]) -> None:
    names = ["GREETING", "EASYFAAS_FUNCTION_NAME", "EASYFAAS_FUNCTION_VERSION",
             "EASYFAAS_FUNCTION_MEMORY_SIZE"]  # fmt: skip
    resp, body = loaded[1].invoke({"action": "env", "names": names})
    assert resp["ok"], resp
    assert json.loads(body) == dict(zip(names, ["hej", "conf", "7", "256"], strict=True))


def test_function_error_shape(loaded: tuple[str, RunnerProc]) -> None:
    runtime, runner = loaded
    resp, body = runner.invoke({"action": "fail"})
    assert resp["ok"] is False and body == b""
    error = resp["error"]
    if runtime == "shell":
        assert error["errorType"] == "Runtime.ExitError"
        assert error["errorMessage"] == "bootstrap exited with status 3: boom"
        assert error["stackTrace"] == ["first line", "boom"]
        assert resp["log"] == "first line\nboom\n"
    else:
        assert (error["errorType"], error["errorMessage"]) == ("ValueError", "boom")
        assert any("index." in line for line in error["stackTrace"]), error["stackTrace"]
        assert not any("runner." in line for line in error["stackTrace"]), error["stackTrace"]


def test_invalid_event_json(loaded: tuple[str, RunnerProc]) -> None:
    runner = loaded[1]
    resp, _ = runner.invoke(raw=b'{"action": ')
    assert resp["ok"] is False
    assert resp["error"]["errorType"] == "Runtime.InvalidEvent"
    assert runner.invoke({"action": "echo"})[0]["ok"]  # the runner keeps serving


@pytest.mark.parametrize("loaded", ["python3", "nodejs"], indirect=True)
def test_unserialisable_result(loaded: tuple[str, RunnerProc]) -> None:
    resp, _ = loaded[1].invoke({"action": "unserialisable"})
    assert resp["ok"] is False
    assert resp["error"]["errorType"] == "Runtime.ResultSerializationError"


def test_logs_are_attributed_under_concurrency(loaded: tuple[str, RunnerProc],
                                               tmp_path: Path) -> None:  # fmt: skip
    runner = loaded[1]
    requests = [
        ({"op": "invoke", **invoke_fields(f"req-{m}")},
         json.dumps({"action": "log", "marker": m, "dir": str(tmp_path)}).encode())
        for m in ("alpha", "bravo")
    ]  # fmt: skip
    results = asyncio.run(runner.gather(requests))
    for (resp, body), marker in zip(results, ("alpha", "bravo"), strict=True):
        assert resp["ok"], resp
        assert json.loads(body) == marker
        assert resp["log"] == f"{marker} before\n{marker} after\n"


def test_unknown_op_keeps_the_connection(loaded: tuple[str, RunnerProc]) -> None:
    runner = loaded[1]
    results = asyncio.run(runner.gather([({"op": "explode"}, b""), ({"op": "ping"}, b"")]))
    assert results[0][0]["ok"] is False
    assert results[0][0]["error"]["errorType"] == "Runtime.BadRequest"
    assert results[1][0]["ok"] is True


def test_second_load_is_refused(loaded: tuple[str, RunnerProc]) -> None:
    runtime, runner = loaded
    resp = runner.load(HANDLERS[runtime], runtime=runtime)
    assert resp["ok"] is False
    assert resp["error"]["errorType"] == "Runtime.AlreadyLoaded"
    assert runner.invoke({"action": "echo"})[0]["ok"]


def test_invoke_without_request_id_is_refused(loaded: tuple[str, RunnerProc]) -> None:
    resp, _ = loaded[1].call("invoke", b"{}")
    assert resp["ok"] is False
    assert resp["error"]["errorType"] == "Runtime.BadRequest"


@pytest.mark.parametrize("loaded", ["python3", "nodejs"], indirect=True)
def test_long_log_keeps_its_tail(loaded: tuple[str, RunnerProc]) -> None:
    resp, _ = loaded[1].invoke({"action": "flood"})
    assert resp["ok"], resp
    log = resp["log"]
    assert log.startswith("[log truncated: only the last 64 KiB are kept]\n")
    assert len(log) < 65 * 1024
    assert log.endswith("line 03999 " + "x" * 60 + "\n")


@pytest.mark.parametrize("loaded", ["python3"], indirect=True)
def test_fd_level_output_is_captured(loaded: tuple[str, RunnerProc]) -> None:
    resp, body = loaded[1].invoke({"action": "fd"})
    assert resp["ok"], resp
    assert sorted(resp["log"].splitlines()) == ["from-a-subprocess", "raw-fd-write", "to-stderr"]


@pytest.mark.parametrize("loaded", ["python3"], indirect=True)
def test_logging_output_is_captured(loaded: tuple[str, RunnerProc]) -> None:
    resp, body = loaded[1].invoke({"action": "logging"})
    assert resp["ok"], resp
    assert resp["log"] == "via logging\n"


@pytest.mark.parametrize("loaded", ["shell"], indirect=True)
def test_shell_plain_stdout_becomes_a_json_string(loaded: tuple[str, RunnerProc]) -> None:
    resp, body = loaded[1].invoke({"action": "text"})
    assert resp["ok"], resp
    assert json.loads(body) == "plain text, not JSON"


@pytest.mark.parametrize("loaded", ["shell"], indirect=True)
def test_shell_bootstrap_is_killed_at_the_deadline(loaded: tuple[str, RunnerProc]) -> None:
    resp, _ = loaded[1].invoke({"action": "sleep"}, timeout_ms=300)
    assert resp["ok"] is False
    assert resp["error"]["errorType"] == "Runtime.Timeout"


def test_connections_are_served_side_by_side(loaded: tuple[str, RunnerProc]) -> None:
    """A second connection is answered while the first one stays open (a reconnect after a
    half-dead connection, or the funclet next to the controller)."""

    async def both() -> list[bool]:
        first, second = Client(loaded[1].socket), Client(loaded[1].socket)
        try:
            answers = [await first.call_raw({"op": "ping"}, timeout=10)]
            answers.append(await second.call_raw({"op": "ping"}, timeout=10))
            answers.append(await first.call_raw({"op": "ping"}, timeout=10))
            return [header["ok"] for header, _ in answers]
        finally:
            await first.close()
            await second.close()

    assert asyncio.run(both()) == [True, True, True]


def _frames(sock: socket.socket, count: int) -> list[tuple[dict[str, object], bytes]]:
    """Read ``count`` frames off a blocking socket, with the engine's parser (not the runner's)."""
    frames, out = FrameBuffer(), []
    while len(out) < count:
        chunk = sock.recv(65536)
        assert chunk, "the runner closed the connection"
        out += frames.feed(chunk)
    return out


def test_frames_split_and_batched_on_the_socket(loaded: tuple[str, RunnerProc]) -> None:
    """A frame written a byte at a time, and three frames in one write, are all answered."""
    pings = [encode({"op": "ping", "id": i}) for i in range(1, 5)]
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(loaded[1].socket)
        for byte in pings[0]:
            sock.sendall(bytes([byte]))
        assert [h["id"] for h, _ in _frames(sock, 1)] == [1]
        sock.sendall(b"".join(pings[1:]))
        answers = _frames(sock, 3)
    assert sorted(h["id"] for h, _ in answers) == [2, 3, 4]
    assert all(h["ok"] for h, _ in answers)


def test_malformed_frame_drops_only_its_connection(loaded: tuple[str, RunnerProc]) -> None:
    with socket.socket(socket.AF_UNIX) as bad:
        bad.settimeout(10)
        bad.connect(loaded[1].socket)
        bad.sendall(struct.pack(">II", 10, 50) + b"0123456789")  # header longer than the frame
        assert bad.recv(100) == b""
    assert loaded[1].call("ping")[0]["ok"] is True


COMPUTE_OR_WAIT = {"python3": ("index.py", """
import time


def handler(event, context):
    end = time.perf_counter() + 0.05
    if event["compute"]:
        while time.perf_counter() < end:
            pass
    else:
        time.sleep(0.05)  # the call waits, as on I/O
    return {}
"""), "nodejs": ("index.js", """
exports.handler = async (event) => {
  const end = performance.now() + 50;
  if (event.compute) {
    while (performance.now() < end) {}
  } else {
    await new Promise((resolve) => setTimeout(resolve, 50)); // the call waits, as on I/O
  }
  return {};
};
""")}


@pytest.mark.parametrize("runtime", ["python3", "nodejs"])
def test_runner_reports_how_much_of_a_call_computes(tmp_path: Path, runtime: str) -> None:
    """The share the scheduler caps computing functions by (scheduler.instances_per_cpu)."""
    code_dir = write_function(tmp_path, dict([COMPUTE_OR_WAIT[runtime]]))
    answers = {}
    for compute in (True, False):
        with running(runtime, code_dir) as runner:  # fresh: its first call is measured
            assert runner.load("index.handler", runtime=runtime)["ok"]
            answers[compute], _ = runner.invoke({"compute": compute})
    for resp in answers.values():
        assert resp["ok"], resp
        assert resp["run_s"] >= 0.049
    # Time spent waiting for a busy CPU counts as computing: a loaded machine changes nothing.
    assert answers[True]["cpu_demand_s"] / answers[True]["run_s"] > 0.8
    assert answers[False]["cpu_demand_s"] / answers[False]["run_s"] < 0.2


@pytest.mark.parametrize("runtime", ["python3", "nodejs"])
def test_runner_measures_one_call_in_eight(tmp_path: Path, runtime: str) -> None:
    code_dir = write_function(tmp_path, dict([COMPUTE_OR_WAIT[runtime]]))
    with running(runtime, code_dir) as runner:
        assert runner.load("index.handler", runtime=runtime)["ok"]
        answers = [runner.invoke({"compute": False})[0] for _ in range(9)]
    assert [i for i, resp in enumerate(answers) if "run_s" in resp] == [0, 8]
