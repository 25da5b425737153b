"""The trigger's sanic app: one catch-all handler that routes, maps and invokes."""

from __future__ import annotations

import logging
import secrets

import orjson
from sanic import Request, Sanic
from sanic.compat import Header
from sanic.response import HTTPResponse

from .. import errors, wire
from ..requestid import RequestIds
from . import mapping
from .routes import MethodNotAllowed, RouteTable

log = logging.getLogger("easyfaas.httptrigger")

METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


async def invoke(
    controller: wire.Client, function: str, event: bytes, rid: str
) -> mapping.HttpResponse:
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


def _to_sanic(resp: mapping.HttpResponse) -> HTTPResponse:
    return HTTPResponse(resp.body, status=resp.status, headers=Header(resp.headers))


def _request(request: Request, rid: str) -> mapping.HttpRequest:
    return mapping.HttpRequest(
        method=request.method,
        path=request.path,
        headers=list(request.headers.items()),
        query=request.get_query_args(keep_blank_values=True),
        body=request.body,
        # The peer's address: the trigger trusts no forwarding headers (none are configured).
        source_ip=request.ip,
        request_id=rid,
    )


def _not_found(path: str) -> mapping.HttpResponse:
    return mapping.platform_error(errors.FunctionNotFound(f"no route for {path}"))


def build_app(table: RouteTable, controller: wire.Client) -> Sanic:
    """The trigger app over a live route table and the controller connection."""
    # Sanic keeps a process-wide registry of app names; a random suffix lets tests build many.
    app = Sanic("httptrigger-" + secrets.token_hex(4), configure_logging=False)
    ids = RequestIds()

    async def handle(request: Request, path: str = "") -> HTTPResponse:
        if request.path == "/healthz" and request.method == "GET":
            return HTTPResponse(orjson.dumps({"status": "ok"}), content_type="application/json")
        rid = request.headers.get("x-easyfaas-request-id") or ids.new()
        try:
            match = table.match(request.method, request.path)
        except MethodNotAllowed as e:
            return _to_sanic(mapping.method_not_allowed(request.method, e.allowed))
        if match is None:
            return _to_sanic(_not_found(request.path))
        event = mapping.build_event(_request(request, rid), match.resource, match.path_parameters)
        resp = await invoke(controller, match.function, orjson.dumps(event), rid)
        log.debug("fn=%s inv=%s %s %s -> %d", match.function, rid, request.method,
                  request.path, resp.status)
        return _to_sanic(resp)

    app.add_route(handle, "/", methods=METHODS, name="root")
    app.add_route(handle, "/<path:path>", methods=METHODS, name="any")
    return app
