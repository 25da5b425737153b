"""API-Gateway event and response mapping of the HTTP trigger."""

from __future__ import annotations

import base64
import json

import pytest

from easyfaas import errors
from easyfaas.httptrigger import mapping

BINARY = bytes(range(256))


def request(**kw: object) -> mapping.HttpRequest:
    base: dict[str, object] = {
        "method": "POST", "path": "/function/hello/a/b", "headers": [], "query": [],
        "body": b"", "source_ip": "10.0.0.1", "request_id": "r-1",
    }
    return mapping.HttpRequest(**{**base, **kw})  # type: ignore[arg-type]


def test_event_shape_for_text_body() -> None:
    req = request(headers=[("Content-Type", "application/json"), ("User-Agent", "t")],
                  body=b'{"x": "\xc3\xa9"}')
    event = mapping.build_event(req, "/function/{name}/{proxy+}", {"proxy": "a/b"})
    assert event["httpMethod"] == "POST"
    assert event["path"] == "/function/hello/a/b"
    assert event["resource"] == "/function/{name}/{proxy+}"
    assert event["pathParameters"] == {"proxy": "a/b"}
    assert event["body"] == '{"x": "é"}'
    assert event["isBase64Encoded"] is False
    assert event["headers"]["content-type"] == "application/json"
    assert event["queryStringParameters"] is None
    ctx = event["requestContext"]
    assert (ctx["requestId"], ctx["httpMethod"], ctx["path"]) == ("r-1", "POST", req.path)
    assert ctx["identity"] == {"sourceIp": "10.0.0.1", "userAgent": "t"}


@pytest.mark.parametrize("content_type", ["application/octet-stream", "image/png", ""])
def test_binary_body_is_base64(content_type: str) -> None:
    headers = [("content-type", content_type)] if content_type else []
    event = mapping.build_event(request(headers=headers, body=BINARY), "/r", None)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == BINARY


def test_binary_content_type_with_utf8_body_is_still_base64() -> None:
    event = mapping.build_event(
        request(headers=[("content-type", "application/octet-stream")], body=b"plain"), "/r", None
    )
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == b"plain"


def test_multi_value_headers_and_query() -> None:
    req = request(headers=[("X-A", "1"), ("x-a", "2")], query=[("q", "1"), ("q", "2"), ("z", "")])
    event = mapping.build_event(req, "/r", None)
    assert event["headers"]["x-a"] == "2"
    assert event["multiValueHeaders"]["x-a"] == ["1", "2"]
    assert event["queryStringParameters"] == {"q": "2", "z": ""}
    assert event["multiValueQueryStringParameters"] == {"q": ["1", "2"], "z": [""]}


def test_empty_body_is_null() -> None:
    event = mapping.build_event(request(body=b""), "/r", None)
    assert event["body"] is None and event["isBase64Encoded"] is False


def test_proxy_response_with_headers() -> None:
    result = {"statusCode": 201, "headers": {"X-One": "a"},
              "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]}, "body": "created"}
    resp = mapping.map_result(json.dumps(result).encode())
    assert resp.status == 201
    assert ("X-One", "a") in resp.headers
    assert [v for k, v in resp.headers if k == "Set-Cookie"] == ["a=1", "b=2"]
    assert resp.body == b"created"


def test_binary_response_round_trips() -> None:
    result = {"statusCode": 200, "isBase64Encoded": True,
              "headers": {"content-type": "application/octet-stream"},
              "body": base64.b64encode(BINARY).decode()}
    resp = mapping.map_result(json.dumps(result).encode())
    assert resp.body == BINARY
    assert resp.headers == [("content-type", "application/octet-stream")]


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2], "text", 3, None])
def test_plain_values_are_json(value: object) -> None:
    resp = mapping.map_result(json.dumps(value).encode())
    assert resp.status == 200
    assert ("content-type", "application/json") in resp.headers
    assert json.loads(resp.body) == value


@pytest.mark.parametrize("result", [
    {"statusCode": "abc"}, {"statusCode": 42}, {"statusCode": True},
    {"statusCode": 200, "isBase64Encoded": True, "body": "***"},
    {"statusCode": 200, "headers": ["x"]},
])
def test_malformed_proxy_responses_are_rejected(result: dict[str, object]) -> None:
    with pytest.raises(mapping.BadFunctionResponse):
        mapping.map_result(json.dumps(result).encode())


def test_function_and_platform_errors() -> None:
    payload = b'{"errorMessage":"boom","errorType":"ValueError"}'
    resp = mapping.function_error(payload)
    assert (resp.status, resp.body) == (500, payload)
    resp = mapping.platform_error(errors.TooManyRequests("busy"))
    assert resp.status == 429
    assert json.loads(resp.body)["Code"] == "TooManyRequestsException"
    resp = mapping.bad_gateway("down")
    assert resp.status == 502 and json.loads(resp.body)["Message"] == "down"


def test_plain_result_passes_through_as_the_functions_json() -> None:
    payload = b'{"message": "hello world", "big": 123456789012345678901234567890}'
    resp = mapping.map_result(payload)
    assert (resp.status, resp.body) == (200, payload)


def test_proxy_response_with_big_integers_in_a_json_body() -> None:
    resp = mapping.map_result(b'{"statusCode": 200, "body": {"n": 123456789012345678901234567890}}')
    assert json.loads(resp.body) == {"n": 123456789012345678901234567890}


def test_result_that_is_not_json_is_refused() -> None:
    with pytest.raises(mapping.BadFunctionResponse):
        mapping.map_result(b"{not json")
