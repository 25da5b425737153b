"""End to end: functions appear, change and disappear with the code dir, never half-deployed."""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
import zipfile
from collections.abc import Iterator

import pytest
from _functions import HELLO, VERSIONED, atomic_save, deploy, python_fn
from waiting import wait_until

from engine import Engine

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with Engine.started() as e:
        yield e


def body(resp: tuple[int, dict[str, str], bytes]) -> object:
    return json.loads(resp[2])


def test_copied_function_answers_within_a_second(engine: Engine) -> None:
    deploy(engine.code_dir, "hello", HELLO)
    started = time.monotonic()
    resp = wait_until(lambda: (r := engine.http("GET", "/function/hello"))[0] == 200 and r,
                      "hello to answer", timeout=5)
    assert time.monotonic() - started < 1.0
    assert body(resp) == {"message": "hello world"}
    status, headers, raw = engine.invoke("hello", {"name": "edge"})
    assert status == 200 and json.loads(raw) == {"message": "hello edge"}


def test_edit_swaps_version_without_a_failed_request(engine: Engine) -> None:
    deploy(engine.code_dir, "swap", python_fn(VERSIONED % 1))
    wait_until(lambda: engine.invoke("swap")[0] == 200, "swap v1")
    results: list[tuple[int, bytes]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            status, _, raw = engine.http("POST", "/function/swap", b"{}")
            results.append((status, raw))

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: len(results) > 20, "traffic before the swap")
        atomic_save(engine.code_dir / "swap" / "index.py", VERSIONED % 2)
        wait_until(lambda: any(json.loads(r)["version"] == 2 for s, r in results[-5:] if s == 200),
                   "version 2 to serve", timeout=10)
        n = len(results)
        wait_until(lambda: len(results) > n + 20, "traffic after the swap")
    finally:
        stop.set()
        for t in threads:
            t.join()
    failed = [(s, r) for s, r in results if s != 200]
    assert not failed, f"{len(failed)} failed of {len(results)}: {failed[:3]}"
    assert {json.loads(r)["version"] for _, r in results} == {1, 2}


@pytest.mark.parametrize("breakage, mentions", [
    ({"function.toml": "memroy = 64\n"}, ["function.toml", "memroy"]),
    ({"function.toml": "runtime = 'cobol'\n"}, ["function.toml", "runtime"]),
    ({"function.toml": "memory = [\n"}, ["function.toml"]),
    ({"index.py": "import not_a_module_anywhere\ndef handler(e, c):\n    return 1\n"},
     ["not_a_module_anywhere"]),
])
def test_broken_bundle_keeps_working_version(engine: Engine, breakage: dict[str, str],
                                             mentions: list[str]) -> None:
    name = "keep" + str(abs(hash(json.dumps(breakage))) % 10000)
    deploy(engine.code_dir, name, HELLO)
    wait_until(lambda: engine.invoke(name)[0] == 200, f"{name} v1")
    for file, text in breakage.items():
        atomic_save(engine.code_dir / name / file, text)

    def error() -> dict | None:
        status, _, raw = engine.api("GET", f"/v1/functions/{name}")
        return status == 200 and json.loads(raw).get("LastError")

    err = wait_until(error, "the error on the function record", timeout=10)
    for word in mentions:
        assert word in json.dumps(err)
    status, _, raw = engine.invoke(name, {"name": "still"})
    assert status == 200 and json.loads(raw) == {"message": "hello still"}
    listing = engine.cli("ls")
    assert listing.returncode == 0 and name in listing.stdout
    line = next(ln for ln in listing.stdout.splitlines() if ln.startswith(name))
    assert mentions[-1] in line
    logs = engine.cli("logs", name)
    assert mentions[-1] in logs.stdout


def test_removed_directory_removes_function(engine: Engine) -> None:
    deploy(engine.code_dir, "gone", HELLO)
    wait_until(lambda: engine.invoke("gone")[0] == 200, "gone to exist")
    shutil.rmtree(engine.code_dir / "gone")
    wait_until(lambda: engine.invoke("gone")[0] == 404, "gone to disappear")
    assert engine.http("GET", "/function/gone")[0] == 404


def test_renamed_directory_moves_function(engine: Engine) -> None:
    deploy(engine.code_dir, "before", HELLO)
    wait_until(lambda: engine.invoke("before")[0] == 200, "before to exist")
    (engine.code_dir / "before").rename(engine.code_dir / "after")
    wait_until(lambda: engine.invoke("after")[0] == 200, "after to exist")
    wait_until(lambda: engine.invoke("before")[0] == 404, "before to disappear")


def _zip(entries: dict[str, bytes]) -> str:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return base64.b64encode(buf.getvalue()).decode()


def test_upload_deploys_into_code_dir(engine: Engine) -> None:
    code = _zip({"main.py": b"def run(event, context):\n    return {'up': True}\n"})
    payload = {"Runtime": "python3", "Handler": "main.run", "MemorySize": 64, "Code": code}
    status, _, raw = engine.api("POST", "/v1/functions/uploaded", payload)
    assert status in (200, 201), raw
    assert (engine.code_dir / "uploaded" / "main.py").exists()
    status, _, raw = engine.invoke("uploaded")
    assert status == 200 and json.loads(raw) == {"up": True}


def test_upload_needs_the_token(engine: Engine) -> None:
    code = _zip({"index.py": b"def handler(e, c):\n    return 1\n"})
    status, _, raw = engine.api("POST", "/v1/functions/sneaky", {"Code": code},
                                headers={"Authorization": "Bearer wrong"})
    assert status == 403 and json.loads(raw)["Code"] == "AccessDeniedException"
    assert not (engine.code_dir / "sneaky").exists()


@pytest.mark.parametrize("evil", ["../escaped.py", "/tmp/absolute-escape.py", "a/../../up.py"])
def test_zip_slip_upload_rejected_with_nothing_written(engine: Engine, evil: str) -> None:
    before = sorted(p.name for p in engine.code_dir.iterdir())
    code = _zip({"index.py": b"def handler(e, c):\n    return 1\n", evil: b"pwned"})
    status, _, raw = engine.api("POST", "/v1/functions/slip", {"Runtime": "python3", "Code": code})
    assert status == 400, raw
    assert json.loads(raw)["Type"] == "User"
    assert sorted(p.name for p in engine.code_dir.iterdir()) == before
    assert not (engine.code_dir.parent / "escaped.py").exists()
    assert not (engine.code_dir / "up.py").exists()
    assert engine.invoke("slip")[0] == 404


def test_cli_deploy_invoke_and_logs(engine: Engine, tmp_path: object) -> None:
    from pathlib import Path

    src = Path(str(tmp_path)) / "cli-fn"
    src.mkdir()
    (src / "index.py").write_text("def handler(event, context):\n"
                                  "    print('log line from', context.function_name)\n"
                                  "    return event\n")
    deployed = engine.cli("deploy", str(src))
    assert deployed.returncode == 0, deployed.stderr
    invoked = engine.cli("invoke", "cli-fn", "--data", '{"k": [1, 2]}')
    assert invoked.returncode == 0, invoked.stderr
    assert json.loads(invoked.stdout) == {"k": [1, 2]}
    logs = wait_until(lambda: "log line from cli-fn" in (r := engine.cli("logs", "cli-fn")).stdout
                      and r, "the call's output in the function log")
    assert "START RequestId" in logs.stdout and "REPORT RequestId" in logs.stdout
    token = engine.cli("token")
    assert token.returncode == 0 and token.stdout.strip() == engine.token
