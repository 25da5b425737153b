"""The trigger's handler: route, map to an event, invoke through the controller, map back."""

from __future__ import annotations

import logging

import orjson

from .. import errors, wire
from ..http1 import Handler, HttpResponse, Request
from ..requestid import RequestIds
from . import mapping
from .routes import MethodNotAllowed, RouteTable

log = logging.getLogger("easyfaas.httptrigger")

# What an API-Gateway-style event can carry; others (TRACE, CONNECT, WebDAV's) are refused.
METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
_HEALTHY = HttpResponse(200, [("content-type", "application/json")],
                                orjson.dumps({"status": "ok"}))


async def invoke(
    controller: wire.Client, function: str, event: bytes, rid: str
) -> HttpResponse:
    """Call the function through the controller and map whatever comes back to HTTP."""
    try:
        header, payload = await controller.call(
            "invoke", event, function=function, qualifier="$LATEST", request_id=rid,
            log_tail=False,
        )
    except wire.RemoteError as e:
        err = errors.from_wire(e.error)
        log.info("fn=%s inv=%s platform error %s: %s", function, rid, type(err).__name__, err)
        return mapping.platform_error(err)
    except OSError as e:  # ConnectionError, FileNotFoundError: the controller is not there
        log.warning("fn=%s inv=%s controller unreachable: %s", function, rid, e)
        return mapping.bad_gateway("the engine's controller is unreachable")
    if header.get("function_error"):
        return mapping.function_error(payload)
    try:
        return mapping.map_result(payload)
    except mapping.BadFunctionResponse as e:
        log.warning("fn=%s inv=%s malformed proxy response: %s", function, rid, e)
        return mapping.bad_gateway(f"malformed function response: {e}")


def _event_request(request: Request, rid: str) -> mapping.HttpRequest:
    return mapping.HttpRequest(
        request.method,
        request.path,
        request.headers,
        request.query_args(),
        request.body,
        # The peer's address: the trigger trusts no forwarding headers (none are configured).
        request.client_ip,
        rid,
    )


def build_handler(table: RouteTable, controller: wire.Client) -> Handler:
    """The trigger's one handler over a live route table and the controller connection."""
    ids = RequestIds()

    async def handle(request: Request) -> HttpResponse:
        method, path = request.method, request.path
        if path == "/healthz" and method == "GET":
            return _HEALTHY
        if method not in METHODS:
            return mapping.method_not_allowed(method, METHODS)
        rid = request.header("x-easyfaas-request-id") or ids.new()
        try:
            match = table.match(method, path)
        except MethodNotAllowed as e:
            return mapping.method_not_allowed(method, e.allowed)
        if match is None:
            return mapping.platform_error(errors.FunctionNotFound(f"no route for {path}"))
        event = mapping.build_event(_event_request(request, rid), match.resource,
                                    match.path_parameters)
        resp = await invoke(controller, match.function, orjson.dumps(event), rid)
        log.debug("fn=%s inv=%s %s %s -> %d", match.function, rid, method, path, resp.status)
        return resp

    return handle
