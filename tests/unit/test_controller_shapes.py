"""Pure pieces of the controller: record resolution, Lambda shapes, create bodies, error shapes,
metrics text."""

from __future__ import annotations

import base64
import resource
import subprocess
import sys

import orjson
import pytest
from _controller_fakes import record
from sanic.exceptions import NotFound

from easyfaas.controller.api import _error_payload
from easyfaas.controller.invoke import checked_event
from easyfaas.controller.management import lambda_shape, parse_create_body
from easyfaas.controller.metrics import Metrics
from easyfaas.controller.registry import Registry
from easyfaas.errors import (
    FunctionNotFound,
    InvalidParameter,
    InvalidRequestContent,
    TooManyRequests,
)


def registry_with(*records: dict) -> Registry:
    reg = Registry("/nonexistent")
    reg._apply({"event": "snapshot", "functions": list(records)})
    return reg


def test_resolve_latest_and_pinned_versions() -> None:
    reg = registry_with(record("a", 3, memory=256))
    latest = reg.resolve("a", "$LATEST")
    assert latest.version == 3 and latest.memory == 256 and latest.code_sha256 == "a-sha-3"
    assert reg.resolve("a", None).key == latest.key
    pinned = reg.resolve("a", "1")
    assert pinned.version == 1 and pinned.key != latest.key


@pytest.mark.parametrize(("name", "qualifier", "error"), [
    ("missing", "$LATEST", FunctionNotFound),
    ("a", "9", FunctionNotFound),
    ("a", "latest", InvalidParameter),
])
def test_resolve_rejects_bad_names_and_qualifiers(name: str, qualifier: str, error: type) -> None:
    with pytest.raises(error):
        registry_with(record("a")).resolve(name, qualifier)


def test_failed_function_without_version_is_not_invocable() -> None:
    broken = {"name": "b", "version": None, "state": "failed", "config": None, "versions": {},
              "error": {"message": "bad memory"}}
    with pytest.raises(FunctionNotFound, match="no deployable version"):
        registry_with(broken).resolve("b", "$LATEST")


def test_watch_events_update_and_delete_the_mirror() -> None:
    seen: list[tuple[str, object]] = []
    reg = Registry("/nonexistent", lambda n, r: seen.append((n, r and r["version"])))
    reg._apply({"event": "snapshot", "functions": [record("a"), record("b")]})
    reg._apply({"event": "update", "function": record("a", 2)})
    reg._apply({"event": "delete", "name": "b"})
    reg._apply({"event": "snapshot", "functions": [record("c")]})
    assert reg.ready.is_set() and list(reg.functions) == ["c"]
    assert seen[2:] == [("a", 2), ("b", None), ("a", None), ("c", 1)]


def test_routes_list_manifest_http_routes() -> None:
    reg = registry_with(record("a", http=[{"path": "/hi", "methods": ["GET"]}]), record("b"))
    assert reg.routes() == [{"path": "/hi", "methods": ["GET"], "function": "a"}]


def test_lambda_shape() -> None:
    shape = lambda_shape(record("a", 2, env={"K": "v"}, http=[{"path": "/x", "methods": []}]))
    conf = shape["Configuration"]
    assert conf == {
        "FunctionName": "a", "Runtime": "python3", "Handler": "index.handler", "MemorySize": 128,
        "Timeout": 3.0, "CodeSha256": "a-sha-2", "CodeSize": 10, "Version": "2",
        "LastModified": "2026-11-27T15:00:00Z", "Environment": {"Variables": {"K": "v"}},
        "State": "active", "Concurrency": 1, "MaxInstances": None,
    }
    assert [v["Version"] for v in shape["Versions"]] == ["1", "2"]
    assert shape["LastError"] is None and shape["Http"] == [{"path": "/x", "methods": []}]


def test_create_body_is_split_into_fields_and_zip() -> None:
    raw = orjson.dumps({"Runtime": "python3", "Code": base64.b64encode(b"PK-zip").decode()})
    assert parse_create_body(raw) == ({"Runtime": "python3"}, b"PK-zip")


@pytest.mark.parametrize(("raw", "error"), [
    (b"not json", InvalidRequestContent),
    (b"[1]", InvalidRequestContent),
    (b'{"Runtime": "python3"}', InvalidParameter),
    (b'{"Code": "***"}', InvalidParameter),
])
def test_bad_create_bodies(raw: bytes, error: type) -> None:
    with pytest.raises(error):
        parse_create_body(raw)


def test_events_must_be_json() -> None:
    assert checked_event(b"") == b"{}"
    assert checked_event(b'{"a":1}') == b'{"a":1}'
    with pytest.raises(InvalidRequestContent):
        checked_event(b"{nope")


def test_error_responses_have_the_easyfaas_shape() -> None:
    assert _error_payload(TooManyRequests("busy")) == (
        429, {"Code": "TooManyRequestsException", "Message": "busy", "Cause": "", "Status": 429,
              "Type": "User"})
    assert _error_payload(NotFound("no route"))[0] == 404
    status, body = _error_payload(RuntimeError("secret detail"))
    assert status == 500 and "secret detail" not in orjson.dumps(body).decode()


def test_metrics_text() -> None:
    m = Metrics()
    m.count("a", "ok")
    m.observe("invoke", "a", 0.002)
    m.cold_starts["a"] += 1
    text = m.render({"warm": 1, "busy": 0}, {"queued": 2, "running": 0},
                    {"a": (0.9712, 5), "b": (0.5, None)})
    assert 'easyfaas_invocations_total{function="a",outcome="ok"} 1' in text
    assert 'easyfaas_stage_seconds_bucket{stage="invoke",function="a",le="0.0025"} 1' in text
    assert 'easyfaas_stage_seconds_bucket{stage="invoke",function="a",le="0.001"} 0' in text
    assert 'easyfaas_cold_starts_total{function="a"} 1' in text
    assert 'easyfaas_async_queue_depth{status="queued"} 2' in text
    assert 'easyfaas_function_cpu_share{function="a"} 0.971' in text
    assert 'easyfaas_function_cpu_instance_cap{function="a"} 5' in text
    assert 'easyfaas_function_cpu_share{function="b"} 0.500' in text
    assert 'easyfaas_function_cpu_instance_cap{function="b"}' not in text


def test_the_controller_raises_its_open_files_limit_to_the_hard_one() -> None:
    """Two files per sandbox: the default soft limit (1024 under systemd) must not cap them."""
    code = ("import resource; from easyfaas.controller.service import raise_open_files_limit;"
            " print(raise_open_files_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[1])")

    def low_soft_limit() -> None:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    out = subprocess.run([sys.executable, "-c", code], preexec_fn=low_soft_limit, check=True,
                         capture_output=True, text=True).stdout.split()
    soft, hard = int(out[0]), int(out[1])
    assert soft > 256
    assert soft == hard or hard == resource.RLIM_INFINITY
