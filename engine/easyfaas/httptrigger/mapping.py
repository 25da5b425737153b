"""HTTP request → API-Gateway proxy event, and function result → HTTP response.

The shapes follow AWS API Gateway's REST "proxy integration" so handlers written for it run
unchanged. Pure functions over plain values: the trigger's HTTP layer feeds them, unit tests call
them.
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from typing import Any, NamedTuple

import orjson

from ..errors import EasyFaaSError
from ..http1 import HttpResponse, error_response

# Content types whose bodies travel as text; everything else is base64 in the event.
_TEXT_TYPES = (
    "application/json",
    "application/xml",
    "application/javascript",
    "application/x-www-form-urlencoded",
    "application/graphql",
)


class HttpRequest(NamedTuple):
    """What the trigger needs from one HTTP request (decoupled from the HTTP layer for testing).

    A named tuple: made once per request, and a frozen dataclass costs several times more."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    query: list[tuple[str, str]]
    body: bytes
    source_ip: str = ""
    request_id: str = ""


class BadFunctionResponse(Exception):
    """The function answered with a proxy response we cannot turn into HTTP."""


def _is_text(content_type: str) -> bool:
    mime = content_type.split(";", 1)[0].strip().lower()
    if not mime:
        return True
    return (
        mime.startswith("text/")
        or mime in _TEXT_TYPES
        or mime.endswith("+json")
        or mime.endswith("+xml")
    )


def encode_body(body: bytes, content_type: str) -> tuple[str | None, bool]:
    """The event's ``(body, isBase64Encoded)``: text as is, binary or non-UTF-8 as base64."""
    if not body:
        return None, False
    if _is_text(content_type):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


def _single_and_multi(
    pairs: list[tuple[str, str]],
) -> tuple[dict[str, str] | None, dict[str, list[str]] | None]:
    # API Gateway gives the last value in the single-value map and every value in the multi map.
    if not pairs:
        return None, None
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for key, value in pairs:
        single[key] = value
        multi.setdefault(key, []).append(value)
    return single, multi


def build_event(
    req: HttpRequest, resource: str, path_parameters: dict[str, str] | None
) -> dict[str, Any]:
    """The API-Gateway proxy event for ``req`` matched by the route ``resource``."""
    headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for key, value in req.headers:  # one pass: this runs on every request
        key = key.lower()
        headers[key] = value
        multi_headers.setdefault(key, []).append(value)
    query, multi_query = _single_and_multi(req.query)
    body, is_b64 = encode_body(req.body, headers.get("content-type", ""))
    return {
        "resource": resource,
        "path": req.path,
        "httpMethod": req.method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query,
        "multiValueQueryStringParameters": multi_query,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "body": body,
        "isBase64Encoded": is_b64,
        "requestContext": {
            "requestId": req.request_id,
            "httpMethod": req.method,
            "path": req.path,
            "resourcePath": resource,
            "stage": "$default",
            "requestTimeEpoch": int(time.time() * 1000),
            "identity": {
                "sourceIp": req.source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
        },
    }


def _dumps(value: Any) -> bytes:
    try:
        return orjson.dumps(value)
    except TypeError:  # integers past 64 bits, which orjson refuses and JSON allows
        return json.dumps(value, separators=(",", ":")).encode()


def _loads(payload: bytes, exact: bool = False) -> Any:
    """Parse a result. orjson reads integers past 64 bits as floats and refuses ``NaN``; where
    values are passed on (``exact``) or orjson refuses, the stdlib parser decides."""
    if not exact:
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(payload)
    except ValueError as e:
        raise BadFunctionResponse(f"result is not JSON: {e}") from e


def _json(status: int, body: bytes) -> HttpResponse:
    return HttpResponse(status, [("content-type", "application/json")], body)


def _json_response(status: int, value: Any) -> HttpResponse:
    return _json(status, _dumps(value))


def _proxy_body(result: dict[str, Any]) -> bytes:
    body = result.get("body")
    if body is None:
        return b""
    if not isinstance(body, str):
        # Lenient: a handler that returns a dict as body means JSON.
        return _dumps(body)
    if not result.get("isBase64Encoded"):
        return body.encode("utf-8")
    try:
        return base64.b64decode(body, validate=True)
    except binascii.Error as e:
        raise BadFunctionResponse(f"body is not valid base64: {e}") from e


def _proxy_headers(result: dict[str, Any]) -> list[tuple[str, str]]:
    headers = result.get("headers") or {}
    multi = result.get("multiValueHeaders") or {}
    if not isinstance(headers, dict) or not isinstance(multi, dict):
        raise BadFunctionResponse("headers and multiValueHeaders must be objects")
    out = [(str(k), str(v)) for k, v in headers.items()]
    for key, values in multi.items():
        if not isinstance(values, list):
            raise BadFunctionResponse(f"multiValueHeaders[{key!r}] must be a list")
        out += [(str(key), str(v)) for v in values]
    if not any(k.lower() == "content-type" for k, _ in out):
        out.append(("content-type", "application/json"))
    return out


def map_result(payload: bytes) -> HttpResponse:
    """Turn a function's result (JSON bytes) into the HTTP response.

    A dict with ``statusCode`` is a proxy response; any other JSON value is returned as 200 JSON,
    the function's own bytes.
    """
    result = _loads(payload) if payload else None
    if not (isinstance(result, dict) and "statusCode" in result):
        return _json(200, payload or b"null")
    if not isinstance(result.get("body"), (str, type(None))):
        result = _loads(payload, exact=True)  # a JSON body to write out again
    status = result["statusCode"]
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 200 <= status <= 599:
        raise BadFunctionResponse(f"statusCode {status!r} is not an HTTP status (200-599)")
    return HttpResponse(status, _proxy_headers(result), _proxy_body(result))


def function_error(payload: bytes) -> HttpResponse:
    """A function that raised: 500 with its ``{"errorMessage","errorType"}`` JSON."""
    return _json(500, payload)


def platform_error(e: EasyFaaSError) -> HttpResponse:
    """An engine error (unknown function, no capacity, ...) in the EasyFaaS JSON shape."""
    return _json_response(e.status, e.to_api())


def bad_gateway(message: str) -> HttpResponse:
    """The controller could not be reached, or the function's response was unusable."""
    return error_response(502, "ServiceException", message, "Server")


def method_not_allowed(method: str, allowed: frozenset[str]) -> HttpResponse:
    resp = error_response(405, "MethodNotAllowedException", f"method {method} not allowed",
                          "User")
    return HttpResponse(405, [*resp.headers, ("allow", ", ".join(sorted(allowed)))], resp.body)
