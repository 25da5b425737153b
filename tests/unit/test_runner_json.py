"""The python3 runner's JSON shortcuts give what the stdlib gives: the same values, the same
errors (its ``loads`` and ``JsonWriter`` take the stdlib's C parts without their per-call
set-up)."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from _runtime_helpers import PYTHON_RUNNER, load_module

runtimes = load_module(PYTHON_RUNNER.parent / "_easyfaas_runtimes.py",
                       "_easyfaas_runtimes_under_test")


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "value", fn(*args)
    except Exception as e:  # noqa: BLE001 - the error is what is compared
        return type(e).__name__, str(e)


@pytest.mark.parametrize("data", [
    b'{"a": 1}', b'[1, 2.5, null, true, "gr\xc3\xbc\xc3\x9fe"]', b'"text"',
    b"12345678901234567890123", b' {"a": 1}', b'{"a": 1}\n', b"\t[]\r\n", b"", b"   ",
    b'{"a": ', b'{"a": 1} x', b"NaN",
    b'{"n": -Infinity}', b'\xff\xfe{\x00}\x00', b'"\xff"', b'{"a": 1, "a": 2}', b"[" * 5000,
])
def test_loads_is_json_loads(data: bytes) -> None:
    assert _outcome(runtimes.loads, data) == _outcome(json.loads, data)
    assert _outcome(runtimes.loads, bytearray(data)) == _outcome(json.loads, bytearray(data))


def _circular() -> dict[str, Any]:
    value: dict[str, Any] = {"a": 1}
    value["self"] = value
    return value


@pytest.mark.parametrize("value", [
    {"message": "hello world"}, [1, 2.5, None, True, "grüße ✓ 漢字"], "text", 10**30,
    {"nested": {"list": [{"x": [1.0e-300, -0.0]}]}}, {1: "int key", None: "null key"},
    {"bad": "\ud800"}, math.nan, {"x": math.inf}, _circular(), {"obj": object()}, {(1, 2): 3},
])
@pytest.mark.parametrize("allow_nan", [True, False])
def test_json_writer_is_json_encoder(value: Any, allow_nan: bool) -> None:
    stdlib = json.JSONEncoder(ensure_ascii=False, allow_nan=allow_nan)
    writer = runtimes.JsonWriter(allow_nan=allow_nan)
    assert _outcome(writer.encode, value) == _outcome(stdlib.encode, value)


def test_events_parse_as_before() -> None:
    assert runtimes.parse_event(b"") == {} and runtimes.parse_event(b" \n") == {}
    assert runtimes.parse_event(b' {"a": [1]} ') == {"a": [1]}
    with pytest.raises(runtimes.RunnerError, match="the event is not valid JSON: Expecting"):
        runtimes.parse_event(b'{"a": ')
