"""The controller against the real python3 runner (started as a plain process by a fake funclet,
no sandbox): the protocol, log capture, timeout kill and crash rebirth end to end."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import os
import shutil
import signal
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from _controller_helpers import fakes
from waiting import async_wait_until

from easyfaas import wire
from easyfaas.controller import kept

pytestmark = pytest.mark.root

RUNNER = Path(__file__).resolve().parents[2] / "runtimes" / "python3" / "runner.py"
CODE = """
import os, time

def handler(event, context):
    print("hi from", context.function_name)
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("exit"):
        os._exit(3)
    return {"hello": event.get("name", "world"), "rid": context.aws_request_id,
            "version": context.function_version}
"""


class ProcessFunclet(fakes.FakeFunclet):
    """``acquire`` starts runner.py as a child process; ``destroy`` kills it."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        # Awaited before a sandbox is killed: what its runner does meanwhile.
        self.before_destroy: Callable[[], Awaitable[None]] | None = None

    async def handle(self, header: dict[str, Any], payload: bytes,
                     writer: asyncio.StreamWriter) -> tuple[dict[str, Any], bytes]:
        if header["op"] == "acquire":
            return await self._spawn(header)
        if header["op"] == "destroy":
            if self.before_destroy is not None:
                await self.before_destroy()
            proc = self.procs[header["sandbox"]]
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
            await proc.wait()
            self.destroyed.append(header["sandbox"])
            return {"oom": False, "reason": f"exit status {proc.returncode}"}, b""
        return await super().handle(header, payload, writer)

    async def _spawn(self, header: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        # Numbered before the first await: two cold starts at once must not share a socket.
        sb_id = f"sb{next(self._ids)}"
        sock = str(self.root / f"{sb_id}.sock")
        read_fd, write_fd = os.pipe()
        proc = await asyncio.create_subprocess_exec(
            "/usr/bin/python3", "-I", "-S", str(RUNNER), "--socket", sock, "--ready-fd",
            str(write_fd), "--task-dir", header["code"], pass_fds=(write_fd,))
        os.close(write_fd)
        try:
            ready = await asyncio.wait_for(asyncio.to_thread(os.read, read_fd, 1), 10)
        finally:
            os.close(read_fd)
        assert ready == b"R"
        self.procs[sb_id] = proc
        self.acquired.append(header["label"])
        return {"sandbox": {"id": sb_id, "socket": sock, "pid": proc.pid,
                            "memory": header["memory"]}}, b""

    def live(self) -> list[str]:
        return [i for i, p in self.procs.items() if p.returncode is None]


@contextlib.asynccontextmanager
async def real_runners(name: str, code_text: str, timeout: float, concurrency: int = 1,
                       **sections: dict[str, Any]) -> AsyncIterator[Any]:
    """The controller with one function ``name`` whose sandboxes are runner processes. On the
    way out, the controller must have destroyed every one of them when it stopped."""
    code = fakes.short_dir()
    (code / "index.py").write_text(code_text)
    rec = fakes.record(name, timeout=timeout, concurrency=concurrency)
    rec["code"] = str(code)
    funclet: ProcessFunclet | None = None
    try:
        async with fakes.running_controller([rec], funclet_class=ProcessFunclet,
                                            **sections) as h:
            funclet = h.funclet
            yield h
        left = funclet.live()
    finally:
        for proc in funclet.procs.values() if funclet else []:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        shutil.rmtree(code)
    assert left == [], f"sandboxes left running after the controller stopped: {left}"


@fakes.run
async def test_real_runner_end_to_end() -> None:
    async with real_runners("f", CODE, timeout=1.0) as h:
        await _check_calls(h)


async def _check_calls(h: Any) -> None:
    url = "/v1/functions/f/invocations"
    status, headers, body = await h.request("POST", url, b'{"name": "edge"}',
                                            {"X-easyfaas-Request-Id": "r1", "Log-Type": "Tail"})
    assert status == 200, body
    assert json.loads(body) == {"hello": "edge", "rid": "r1", "version": "1"}
    assert b"hi from f" in base64.b64decode(headers["X-easyfaas-Log-Result"])
    status, headers, body = await h.request("POST", url, b'{"sleep": 5}',
                                            {"X-easyfaas-Request-Id": "r2"})
    assert headers["X-easyfaas-Function-Error"] == "Unhandled"
    assert json.loads(body)["errorMessage"] == "r2 Task timed out after 1.00 seconds"
    assert h.funclet.destroyed == ["sb1"]
    status, headers, body = await h.request("POST", url, b'{"exit": true}')
    assert json.loads(body)["errorType"] == "Runtime.ExitError"
    status, _, body = await h.request("POST", url, b"")
    assert status == 200 and json.loads(body)["hello"] == "world"
    assert h.funclet.acquired == ["f@1", "f@1", "f@1"]


async def _inflight(h: Any, count: int) -> bool:
    """Whether the one sandbox holds ``count`` calls (running, or waiting behind one)."""
    _, _, body = await h.request("GET", "/v1/runtimes", headers=h.auth())
    return [sb["inflight"] for sb in json.loads(body)["sandboxes"]] == [count]


async def _in_one_sandbox(h: Any, url: str, *bodies: bytes) -> list[Any]:
    """Send the calls one by one, each once the ones before are in the one sandbox (running
    there, or waiting behind a call); their answers, in order."""
    calls = []
    for n, body in enumerate(bodies, 1):
        calls.append(asyncio.ensure_future(h.request("POST", url, body)))
        await async_wait_until(functools.partial(_inflight, h, n), f"{n} calls in the sandbox")
    return [await c for c in calls]


@fakes.run
async def test_a_call_running_beside_one_that_kills_the_runner_fails_with_it() -> None:
    """With ``concurrency`` 2 the runner runs two calls side by side: the second was running
    when the first took the runner down, so it fails too and is not sent again elsewhere."""
    async with real_runners("f", CODE, timeout=5.0, concurrency=2) as h:
        answers = await _in_one_sandbox(h, "/v1/functions/f/invocations",
                                        b'{"sleep": 0.5, "exit": true}', b'{"sleep": 2}')
        for status, headers, body in answers:
            assert status == 200 and headers["X-easyfaas-Function-Error"] == "Unhandled", body
            assert json.loads(body)["errorType"] == "Runtime.ExitError", body
        assert h.funclet.acquired == ["f@1"]


# Calls waiting inside a busy sandbox (``scheduler.queue_in_sandbox_below_ms``, up to
# ``queue_in_sandbox_depth``, 4 by default): one sandbox at most, and a bound high enough that
# these calls, which sleep, count as short.
QUEUED = """
import os, signal, time

def handler(event, context):
    remaining = context.get_remaining_time_in_millis()
    if event.get("mark"):
        with open(event["mark"], "a") as f:
            print(os.getpid(), file=f)  # one line per start of this call
    time.sleep(event.get("sleep", 0))
    while event.get("until") and not os.path.exists(event["until"]):
        time.sleep(0.01)  # the function's own work: it runs until the test lets it finish
    if event.get("exit"):
        os._exit(3)
    if event.get("stop"):
        os.kill(os.getpid(), signal.SIGSTOP)  # every thread of the runner stops
    return {"n": event.get("n"), "remaining": remaining, "pid": os.getpid()}
"""
QUEUED_URL = "/v1/functions/q/invocations"


@contextlib.asynccontextmanager
async def one_sandbox(timeout: float) -> AsyncIterator[Any]:
    async with real_runners(
            "q", QUEUED, timeout,
            scheduler={"max_instances": 1, "queue_in_sandbox_below_ms": 60_000}) as h:
        # The runner reports the run time of its first call: from then on the function counts
        # as short.
        assert (await h.request("POST", QUEUED_URL, b"{}"))[0] == 200
        yield h


@fakes.run
async def test_a_call_waiting_in_a_busy_sandbox_gets_its_whole_timeout() -> None:
    async with one_sandbox(timeout=1.0) as h:
        answers = await _in_one_sandbox(h, QUEUED_URL, b'{"n": 1, "sleep": 0.7}',
                                        b'{"n": 2, "sleep": 0.7}', b'{"n": 3, "sleep": 0.7}')
        assert [(status, json.loads(body)["n"]) for status, _, body in answers] == [
            (200, 1), (200, 2), (200, 3)], answers
        results = [json.loads(body) for _, _, body in answers]
        assert {r["pid"] for r in results} == {results[0]["pid"]}
        assert h.funclet.acquired == ["q@1"]
        # Sent 0.7 and 1.4 s before they started, each still had its whole second from its
        # start (the controller's timeout, and the deadline the handler sees).
        assert all(r["remaining"] > 900 for r in results[1:]), results


@pytest.mark.parametrize("ahead, error", [
    (b'{"sleep": 0.5, "exit": true}', "Runtime.ExitError"),  # its runner dies
    (b'{"sleep": 5}', "TimeoutError"),  # killed at its 1 s timeout
])
def test_a_call_waiting_behind_one_that_fails_runs_in_a_new_sandbox(ahead: bytes,
                                                                    error: str) -> None:
    async def scenario() -> None:
        async with one_sandbox(timeout=1.0) as h:
            (_, _, b1), *behind = await _in_one_sandbox(h, QUEUED_URL, ahead, b'{"n": 2}',
                                                        b'{"n": 3}')
            assert json.loads(b1)["errorType"] == error
            assert [(status, json.loads(body)["n"]) for status, _, body in behind] == [
                (200, 2), (200, 3)], behind
            assert h.funclet.acquired == ["q@1", "q@1"]

    asyncio.run(scenario())


@fakes.run
async def test_a_call_the_runner_started_before_its_sandbox_was_killed_is_not_sent_again() -> None:
    """The call ahead times out just as it ends: while its sandbox is being destroyed the runner
    answers it and starts the call behind, which then dies with the sandbox. That call ran, so
    it fails; sent to another sandbox it would run twice."""
    with tempfile.TemporaryDirectory() as tmp:
        release, marks = Path(tmp) / "release", Path(tmp) / "marks"
        async with one_sandbox(timeout=1.0) as h:

            async def finish_the_call_ahead() -> None:
                release.touch()
                await async_wait_until(marks.exists, "the call behind it to start")

            h.funclet.before_destroy = finish_the_call_ahead
            ahead, behind = await _in_one_sandbox(
                h, QUEUED_URL, json.dumps({"n": 1, "until": str(release)}).encode(),
                json.dumps({"n": 2, "mark": str(marks), "sleep": 5}).encode())
            assert json.loads(ahead[2])["errorType"] == "TimeoutError", ahead
            assert behind[1]["X-easyfaas-Function-Error"] == "Unhandled", behind
            assert json.loads(behind[2])["errorType"] == "Runtime.ExitError", behind
            assert len(marks.read_text().splitlines()) == 1  # it started once
            assert h.funclet.acquired == ["q@1"]


@fakes.run
async def test_a_call_behind_one_whose_sandbox_could_not_be_destroyed_is_not_sent_again() -> None:
    """The call ahead times out and the funclet fails to destroy its sandbox, whose runner may
    then still run the call waiting behind: that call fails rather than run elsewhere too."""
    async with one_sandbox(timeout=1.0) as h:
        failures = [RuntimeError("the funclet cannot destroy it (test)")]

        async def fail_once() -> None:
            if failures:
                raise failures.pop()

        h.funclet.before_destroy = fail_once
        ahead, behind = await _in_one_sandbox(h, QUEUED_URL, b'{"n": 1, "sleep": 5}',
                                              b'{"n": 2}')
        assert json.loads(ahead[2])["errorType"] == "TimeoutError", ahead
        assert json.loads(behind[2])["errorType"] == "Runtime.ExitError", behind
        assert h.funclet.acquired == ["q@1"]


@pytest.mark.parametrize("behind, error", [
    ({"exit": True}, "Runtime.ExitError"),  # the runner dies at once
    ({"stop": True}, "TimeoutError"),  # no thread of it writes anything until it is killed
])
def test_an_answer_the_runner_kept_back_is_not_lost_with_it(behind: dict[str, Any],
                                                           error: str) -> None:
    """The first call ends while two more wait in its runner's socket, so the runner keeps its
    answer back, records it and starts the second call, which takes the runner down before the
    answer is sent: it dies, or it stops and is killed at its timeout. The first call still
    answers (from the record; when its time is up, a stopped runner's record says it ended), the
    second ran once and fails, the third never started and runs in a new sandbox."""
    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            release, marks = Path(tmp) / "release", Path(tmp) / "marks"
            async with one_sandbox(timeout=1.0) as h:
                bodies = [{"n": 1, "until": str(release)}, {"n": 2, "mark": str(marks), **behind},
                          {"n": 3}]
                calls = []
                for n, body in enumerate(bodies, 1):
                    calls.append(asyncio.ensure_future(
                        h.request("POST", QUEUED_URL, json.dumps(body).encode())))
                    await async_wait_until(functools.partial(_inflight, h, n),
                                           f"{n} calls in the sandbox")
                release.touch()
                (s1, _, b1), (_, h2, b2), (s3, _, b3) = [await call for call in calls]
                assert (s1, json.loads(b1)["n"]) == (200, 1), b1
                assert h2["X-easyfaas-Function-Error"] == "Unhandled", b2
                assert json.loads(b2)["errorType"] == error, b2
                assert (s3, json.loads(b3)["n"]) == (200, 3), b3
                assert len(marks.read_text().splitlines()) == 1  # the second call ran once
                assert h.funclet.acquired == ["q@1", "q@1"]
                # The first answer went through the record, not around it.
                record = (h.funclet.root / "sb1.sock.kept").read_bytes()
                assert [json.loads(p)["n"] for _, p in kept.parse(record)] == [1], record

    asyncio.run(scenario())


@pytest.mark.parametrize("abandoned_runs_s", [0.5, 60])
@pytest.mark.parametrize("position", ["running", "waiting"])
def test_a_call_whose_caller_leaves_is_held_to_its_timeout(position: str,
                                                          abandoned_runs_s: float) -> None:
    """A call whose caller (on controller.sock, the trigger's way in) hangs up, while it runs or
    while it waits behind another, still runs with nobody to answer. The call behind it follows
    in the same sandbox if it ends within the function's 3 s timeout; if it runs past that, the
    sandbox goes and the call behind runs in another. The sandbox takes no new calls and goes."""
    async def scenario() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            marks, done = Path(tmp) / "marks", Path(tmp) / "done"
            async with one_sandbox(timeout=3.0) as h:
                ahead = []
                if position == "waiting":  # behind a call that runs until the test lets it end
                    ahead.append(asyncio.ensure_future(h.request(
                        "POST", QUEUED_URL, json.dumps({"n": 1, "until": str(done)}).encode())))
                    await async_wait_until(lambda: _inflight(h, 1), "the first call to run")
                client = wire.Client(str(h.cfg.socket("controller")))
                abandoned = asyncio.ensure_future(client.call("invoke", json.dumps(
                    {"mark": str(marks), "sleep": abandoned_runs_s}).encode(), function="q"))
                n = len(ahead)
                await async_wait_until(lambda: _inflight(h, n + 1), "the call to abandon")
                behind = asyncio.ensure_future(h.request("POST", QUEUED_URL, b'{"n": 2}'))
                await async_wait_until(lambda: _inflight(h, n + 2), "a call behind it")
                await client.close()
                with pytest.raises(ConnectionError):
                    await abandoned
                # Its slot is back while the call ahead, if any, still runs; only then may
                # that one end.
                await async_wait_until(lambda: _inflight(h, n + 1), "the abandoned call's slot")
                done.touch()
                answers = [await call for call in [*ahead, behind]]
                assert [status for status, _, _ in answers] == [200] * (n + 1), answers
                pids = [json.loads(body)["pid"] for _, _, body in answers]
                started = [int(line) for line in marks.read_text().splitlines()]
                assert len(started) == 1, started  # it ran, once, in the first sandbox
                assert pids[:-1] == started * n
                assert (pids[-1] == started[0]) == (abandoned_runs_s < 3), (pids, started)
                assert h.funclet.acquired == ["q@1"] * (1 if abandoned_runs_s < 3 else 2)
                await async_wait_until(lambda: "sb1" in h.funclet.destroyed, "it to go")

    asyncio.run(scenario())
