"""End to end: every runtime through the HTTP trigger, queueing limits, engines side by side."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from _functions import HELLO, deploy, python_fn
from waiting import wait_until

from engine import Engine

pytestmark = pytest.mark.root

EXAMPLES = Path(__file__).parents[2] / "examples"

BINARY = python_fn('''
    import base64

    def handler(event, context):
        body = event["body"]
        data = base64.b64decode(body) if event["isBase64Encoded"] else body.encode()
        return {"statusCode": 201, "headers": {"Content-Type": "application/octet-stream",
                                               "X-Path": event["path"]},
                "body": base64.b64encode(data[::-1]).decode(), "isBase64Encoded": True}
''', manifest='''
    [[http]]
    path = "/reverse"
    methods = ["POST"]
''')

SLOW_ONE_AT_A_TIME = python_fn('''
    import time

    def handler(event, context):
        time.sleep(1)
        return "done"
''', manifest='''
    max_instances = 1
    timeout = 5
''')


def test_examples_in_every_runtime_through_the_trigger() -> None:
    with Engine.started() as engine:
        for example in ("hello", "hello-node", "hello-shell"):
            shutil.copytree(EXAMPLES / example, engine.code_dir / example)
        for example in ("hello", "hello-node", "hello-shell"):
            resp = wait_until(lambda e=example: (r := engine.http(
                "POST", f"/function/{e}", b"{}"))[0] == 200 and r, f"{example} to answer")
            assert "hello world" in resp[2].decode(), (example, resp)
            status, _, raw = engine.invoke(example, {"name": "api"})
            assert status == 200 and json.loads(raw)["message"] == "hello api", raw
        status, _, raw = engine.http("GET", "/hello")
        assert status == 200 and json.loads(raw) == {"message": "hello world"}
        assert engine.http("GET", "/function/nobody")[0] == 404


def test_binary_body_round_trips_through_a_manifest_route() -> None:
    with Engine.started() as engine:
        deploy(engine.code_dir, "rev", BINARY)
        payload = bytes(range(256)) * 4
        resp = wait_until(lambda: (r := engine.http(
            "POST", "/reverse", payload, {"Content-Type": "application/octet-stream"})
        )[0] == 201 and r, "the route to serve")
        assert resp[2] == payload[::-1]
        assert resp[1]["X-Path"] == "/reverse"


def test_full_queue_answers_429() -> None:
    cfg = "[scheduler]\nqueue_size = 1\nqueue_timeout_s = 30\n"
    with Engine.started(config_toml=cfg) as engine:
        deploy(engine.code_dir, "one", SLOW_ONE_AT_A_TIME)
        wait_until(lambda: engine.invoke("one")[0] == 200, "one to serve")
        with ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(lambda _: engine.invoke("one"), range(6)))
        codes = sorted(s for s, _, _ in statuses)
        assert 200 in codes and 429 in codes, codes
        rejected = next(json.loads(b) for s, _, b in statuses if s == 429)
        assert rejected["Code"] == "TooManyRequestsException"


def test_engines_side_by_side() -> None:
    with Engine.started() as first, Engine.started() as second:
        deploy(first.code_dir, "hello", HELLO)
        deploy(second.code_dir, "other", python_fn('''
            def handler(event, context):
                return "second"
        '''))
        wait_until(lambda: first.invoke("hello")[0] == 200, "first engine's function")
        wait_until(lambda: second.invoke("other")[0] == 200, "second engine's function")
        assert first.invoke("other")[0] == 404
        assert second.invoke("hello")[0] == 404
        assert json.loads(second.http("GET", "/function/other")[2]) == "second"
