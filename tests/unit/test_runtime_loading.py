"""Loading code into the runners: import errors, handler lookup, per-runtime handler styles."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import _runtime_functions as fns
import pytest
from _runtime_functions import write_function
from _runtime_helpers import invoke_fields, runner_command, running


def test_invoke_before_load_is_refused(tmp_path: Path) -> None:
    for runtime in ("python3", "nodejs", "shell"):
        with running(runtime, tmp_path) as runner:
            resp, _ = runner.invoke({})
            assert resp["ok"] is False
            assert resp["error"]["errorType"] == "Runtime.NotLoaded"


@pytest.mark.parametrize(
    ("runtime", "files", "message"),
    [
        ("python3", {"index.py": fns.PYTHON_BROKEN_IMPORT},
         "Unable to import module 'index': No module named 'requests_that_is_not_installed'"),
        ("nodejs", {"index.js": fns.NODE_BROKEN_IMPORT},
         "Unable to import module 'index': Cannot find module 'requests-that-is-not-installed'"),
        ("python3", {}, "Unable to import module 'index': No module named 'index'"),
        ("nodejs", {}, "Unable to import module 'index': Cannot find module '"),
    ],
)  # fmt: skip
def test_import_error(tmp_path: Path, runtime: str, files: dict[str, str], message: str) -> None:
    with running(runtime, write_function(tmp_path, files)) as runner:
        resp = runner.load("index.handler")
        assert resp["ok"] is False
        assert resp["error"]["errorType"] == "Runtime.ImportModuleError"
        assert resp["error"]["errorMessage"].startswith(message), resp["error"]


@pytest.mark.parametrize(
    ("runtime", "files"),
    [("python3", {"index.py": "def other(e, c):\n    return 1\n"}),
     ("nodejs", {"index.js": "exports.other = async () => 1;\n"})],
)  # fmt: skip
def test_missing_handler(tmp_path: Path, runtime: str, files: dict[str, str]) -> None:
    with running(runtime, write_function(tmp_path, files)) as runner:
        resp = runner.load("index.handler")
        assert resp["ok"] is False
        assert resp["error"] == {
            "errorType": "Runtime.HandlerNotFound",
            "errorMessage": "Handler 'handler' missing on module 'index'",
        }


@pytest.mark.parametrize("runtime", ["python3", "nodejs"])
def test_malformed_handler_name(tmp_path: Path, runtime: str) -> None:
    with running(runtime, tmp_path) as runner:
        resp = runner.load("nodot")
        assert resp["error"]["errorType"] == "Runtime.MalformedHandlerName"


@pytest.mark.parametrize("runtime", ["python3", "nodejs", "shell"])
def test_bad_load_request_changes_nothing(tmp_path: Path, runtime: str) -> None:
    name, text = fns.CONFORMANCE_FILES[runtime]
    with running(runtime, write_function(tmp_path, {name: text})) as runner:
        resp = runner.load("index.handler", memory="lots")
        assert resp["error"] == {
            "errorType": "Runtime.BadRequest",
            "errorMessage": "function.memory is missing or has the wrong type",
        }
        assert runner.load("index.handler")["ok"]  # the bad request did not use up the sandbox


@pytest.mark.parametrize("mode", [None, 0o644])
def test_shell_needs_an_executable_bootstrap(tmp_path: Path, mode: int | None) -> None:
    if mode is not None:
        (tmp_path / "bootstrap").write_text("#!/bin/sh\necho 1\n")
        os.chmod(tmp_path / "bootstrap", mode)
    with running("shell", tmp_path) as runner:
        resp = runner.load("bootstrap")
        assert resp["error"]["errorType"] == "Runtime.InvalidEntrypoint"


def test_python_async_handler_and_load_log(tmp_path: Path) -> None:
    code = 'print("importing")\n' + fns.PYTHON_ASYNC
    with running("python3", write_function(tmp_path, {"index.py": code})) as runner:
        assert runner.load("index.handler") == {"ok": True, "log": "importing\n", "id": 1,
                                                "in_order": True}
        resp, body = runner.invoke({}, request_id="a-1")
        assert resp["ok"], resp
        assert json.loads(body) == {"async": True, "id": "a-1"}
        assert resp["log"] == "inside the event loop\n"


def test_python_import_crash_names_the_exception(tmp_path: Path) -> None:
    code = "x = 1 / 0\n"
    with running("python3", write_function(tmp_path, {"index.py": code})) as runner:
        error = runner.load("index.handler")["error"]
        assert error["errorType"] == "Runtime.ImportModuleError"
        assert error["errorMessage"] == (
            "Unable to import module 'index': ZeroDivisionError: division by zero"
        )


@pytest.mark.parametrize(
    ("files", "handler"),
    [({"index.py": "def handler(e, c):\n    return (\n"}, "python3"),
     ({"index.js": "exports.handler = async () => {\n"}, "nodejs")],
)  # fmt: skip
def test_syntax_error(tmp_path: Path, files: dict[str, str], handler: str) -> None:
    with running(handler, write_function(tmp_path, files)) as runner:
        error = runner.load("index.handler")["error"]
        assert error["errorType"] == "Runtime.UserCodeSyntaxError"
        assert error["errorMessage"].startswith("Syntax error in module 'index': ")


def test_node_callback_style(tmp_path: Path) -> None:
    with running("nodejs", write_function(tmp_path, {"index.js": fns.NODE_CALLBACK})) as runner:
        assert runner.load("index.handler")["ok"]
        resp, body = runner.invoke({}, request_id="cb-1")
        assert resp["ok"], resp
        assert json.loads(body) == {"callback": True, "id": "cb-1"}
        assert resp["log"] == "callback style\n"


def test_node_callback_error(tmp_path: Path) -> None:
    files = {"index.js": fns.NODE_CALLBACK_ERROR}
    with running("nodejs", write_function(tmp_path, files)) as runner:
        assert runner.load("index.handler")["ok"]
        error = runner.invoke({})[0]["error"]
        assert (error["errorType"], error["errorMessage"]) == ("TypeError", "bad input")


def test_node_es_module(tmp_path: Path) -> None:
    with running("nodejs", write_function(tmp_path, {"index.mjs": fns.NODE_ESM})) as runner:
        assert runner.load("index.handler")["ok"]
        resp, body = runner.invoke({"k": "v"})
        assert json.loads(body) == {"esm": True, "event": {"k": "v"}}


@pytest.mark.parametrize("runtime", ["python3", "nodejs"])
def test_runner_that_cannot_listen_exits_before_ready(tmp_path: Path, runtime: str) -> None:
    ready_r, ready_w = os.pipe()
    sock = str(tmp_path / "no-such-dir" / "runner.sock")
    cmd = runner_command(runtime, sock, ready_w, tmp_path)
    proc = subprocess.run(cmd, pass_fds=[ready_w], capture_output=True, timeout=20)
    os.close(ready_w)
    try:
        assert proc.returncode != 0
        assert b"cannot serve" in proc.stderr
        assert os.read(ready_r, 1) == b""  # no ready byte: the writer closed without one
    finally:
        os.close(ready_r)


# Counts the calls inside the handler at once. Each call waits until all three were inside
# together, so with room for them the overlap shows at once; without it, each call gives the
# runner half a second to (wrongly) start another before it returns.
OVERLAP = """
import threading
inside, most, changed = 0, 0, threading.Condition()
def handler(event, context):
    global inside, most
    with changed:
        inside += 1
        most = max(most, inside)
        changed.notify_all()
        changed.wait_for(lambda: most >= 3, timeout=0.5)
        inside -= 1
        return most
"""


@pytest.mark.parametrize("concurrency, overlap", [(1, 1), (3, 3)])
def test_python_calls_overlap_only_up_to_the_concurrency(tmp_path: Path, concurrency: int,
                                                         overlap: int) -> None:
    with running("python3", write_function(tmp_path, {"index.py": OVERLAP})) as runner:
        loaded = runner.load("index.handler", concurrency=concurrency)
        # One call at a time means in the order sent: the controller may send the next early.
        assert loaded["ok"] and loaded["in_order"] is (concurrency == 1)
        requests = [({"op": "invoke", **invoke_fields(f"req-{i}")}, b"{}") for i in range(3)]
        results = asyncio.run(runner.gather(requests))
        assert all(resp["ok"] for resp, _ in results), results
        assert max(json.loads(body) for _, body in results) == overlap


def test_python_bad_concurrency_is_refused(tmp_path: Path) -> None:
    with running("python3", write_function(tmp_path, {"index.py": OVERLAP})) as runner:
        resp = runner.load("index.handler", concurrency=0)
        assert resp["error"]["errorType"] == "Runtime.BadRequest"
        assert runner.load("index.handler", concurrency=1)["ok"]
