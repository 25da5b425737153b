"""The HTTP API: invoke (sync and async), management, invocation status and ops.

The invoke route is the data path: it is served on the engine's own HTTP layer (``http1``,
httptools), as the trigger is, because sanic's request and response machinery cost more than
the rest of a warm call in the controller (docs/performance.md). Every other route is the sanic
app's, reached through ``asgi.AsgiApp``. Errors are mapped to HTTP in one place,
``_error_payload``. Routes are documented in docs/api.md.
"""

from __future__ import annotations

import base64
import itertools
import logging
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson
from sanic import HTTPResponse, Request, Sanic
from sanic.exceptions import SanicException

from .. import funclog, http1, token
from ..asgi import AsgiApp
from ..errors import EasyFaaSError, FunctionNotFound, InvalidParameter, Unauthorized
from .invoke import CallResult, checked_event
from .management import lambda_shape, peer_call, put_function

if TYPE_CHECKING:
    from .service import Controller

log = logging.getLogger("easyfaas.controller")

_app_ids = itertools.count(1)
MAX_LOG_LINES = 10000
# Request bodies, as sanic's default allowed when it served the whole API: an upload's base64
# zip may be larger than the events the trigger takes (bundles unpack to up to 256 MiB).
MAX_BODY = 100_000_000
INVOKE_ROUTE = re.compile(r"/v1/functions/([^/]+)/invocations")


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> HTTPResponse:
    return HTTPResponse(orjson.dumps(obj), status=status, headers=headers,
                        content_type="application/json")


def _error_payload(e: Exception) -> tuple[int, dict[str, Any]]:
    """The one place where errors become HTTP statuses and bodies."""
    if isinstance(e, EasyFaaSError):
        return e.status, e.to_api()
    if isinstance(e, SanicException):
        status = int(getattr(e, "status_code", 500))
        error = (FunctionNotFound if status == 404 else
                 InvalidParameter if status < 500 else EasyFaaSError)(str(e))
        return status, {**error.to_api(), "Status": status}
    log.exception("unexpected error: %s", e)
    return 500, EasyFaaSError("internal error").to_api()


def _sanic_error(e: Exception) -> HTTPResponse:
    status, body = _error_payload(e)
    return _json(body, status)


def build_app(ctl: Controller) -> Sanic:
    """The sanic application for every route but invoke; a fresh name each time (sanic keeps
    a registry)."""
    app = Sanic(f"easyfaas_controller_{next(_app_ids)}", configure_logging=False)
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.config.MOTD = False
    # Touchup rewrites sanic's classes process-wide to speed up sanic's own server, which does
    # not run here; these routes are not on the data path.
    app.config.TOUCHUP = False
    app.error_handler.add(Exception, lambda request, e: _sanic_error(e))
    _add_invocation_routes(app, ctl)
    _add_management_routes(app, ctl)
    _add_ops_routes(app, ctl)
    return app


def build_handler(ctl: Controller, app: AsgiApp) -> http1.Handler:
    """The API's HTTP handler: the invoke route here, everything else to the sanic ``app``."""

    async def handle(request: http1.Request) -> http1.HttpResponse:
        route = INVOKE_ROUTE.fullmatch(request.path)
        if route is None:
            return await app(request)
        if request.method != "POST":
            message = f"Method {request.method} not allowed for URL {request.path}"
            status, body = _error_payload(SanicException(message, status_code=405))
            return http1.json_response(status, body, [("allow", "POST")])
        try:
            return await _invoke(ctl, request, unquote(route[1]))
        except Exception as e:  # noqa: BLE001 - every error is an answer (_error_payload)
            status, body = _error_payload(e)
            return http1.json_response(status, body)

    return handle


def _require_token(ctl: Controller, header: Callable[[str], str | None],
                   always: bool = True) -> None:
    """Management always needs the token; reads and invokes only if the config says so.
    ``header`` looks a request header up, only when the token is needed."""
    if (always or ctl.cfg.api.invoke_requires_token) and not token.matches(
            ctl.token, header("authorization")):
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")


def _query_arg(request: http1.Request, name: str) -> str | None:
    """The first non-empty value of query argument ``name`` (as sanic's ``args.get``)."""
    for key, value in request.query_args():
        if key == name and value:
            return value
    return None


async def _invoke(ctl: Controller, request: http1.Request, name: str) -> http1.HttpResponse:
    _require_token(ctl, request.header, always=False)
    payload = checked_event(request.body)
    qualifier = _query_arg(request, "Qualifier") or "$LATEST"
    request_id = request.header("x-easyfaas-request-id") or ctl.invoker.ids.new()
    invoke_type = request.header("x-easyfaas-invoke-type") or "common"
    if invoke_type == "event":
        inv_id = await ctl.queue.enqueue(name, qualifier, payload,
                                         request.header("idempotency-key"))
        return http1.json_response(202, {"invocationId": inv_id},
                                   [("X-easyfaas-Request-Id", request_id)])
    if invoke_type != "common":
        raise InvalidParameter(f"X-easyfaas-Invoke-Type must be common or event, "
                               f"not {invoke_type!r}")
    result = await ctl.invoker.call(name, qualifier, payload, request_id)
    return _invoke_response(request, result)


def _add_invocation_routes(app: Sanic, ctl: Controller) -> None:
    @app.get("/v1/invocations/<inv_id>")
    async def invocation(request: Request, inv_id: str) -> HTTPResponse:
        _require_token(ctl, request.headers.get, always=False)
        return _json(await ctl.queue.status(inv_id))


def _add_management_routes(app: Sanic, ctl: Controller) -> None:
    @app.route("/v1/functions/<name>", methods=["POST", "PUT"])
    async def put(request: Request, name: str) -> HTTPResponse:
        _require_token(ctl, request.headers.get)
        existed = name in ctl.registry.functions
        record = await put_function(ctl.stubs, name, request.body)
        return _json(lambda_shape(record), 200 if existed else 201)

    @app.delete("/v1/functions/<name>")
    async def delete(request: Request, name: str) -> HTTPResponse:
        _require_token(ctl, request.headers.get)
        await peer_call(ctl.stubs, "get", name=name)
        await peer_call(ctl.stubs, "delete", name=name)
        return HTTPResponse(status=204)

    @app.get("/v1/functions")
    async def list_functions(request: Request) -> HTTPResponse:
        _require_token(ctl, request.headers.get, always=False)
        header = await peer_call(ctl.stubs, "list")
        return _json({"Functions": [lambda_shape(r) for r in header["functions"]]})

    @app.get("/v1/functions/<name>")
    async def get_function(request: Request, name: str) -> HTTPResponse:
        _require_token(ctl, request.headers.get, always=False)
        header = await peer_call(ctl.stubs, "get", name=name)
        return _json(lambda_shape(header["function"]))

    @app.get("/v1/functions/<name>/logs")
    async def logs(request: Request, name: str) -> HTTPResponse:
        _require_token(ctl, request.headers.get, always=False)
        lines = request.args.get("lines", "100")
        if not lines.isdigit() or not 0 < int(lines) <= MAX_LOG_LINES:
            raise InvalidParameter(f"lines must be a number from 1 to {MAX_LOG_LINES}")
        if name not in ctl.registry.functions:
            raise FunctionNotFound(f"Function not found: {name}")
        text = funclog.tail(ctl.cfg.state_dir, name, int(lines))
        return HTTPResponse(text, content_type="text/plain; charset=utf-8")


def _add_ops_routes(app: Sanic, ctl: Controller) -> None:
    @app.get("/healthz")
    async def healthz(request: Request) -> HTTPResponse:
        health = await ctl.health()
        return _json(health, 200 if health["status"] == "ok" else 503)

    @app.get("/v1/runtimes")
    async def runtimes(request: Request) -> HTTPResponse:
        try:
            header = await peer_call(ctl.funclet, "status")
            status = {k: v for k, v in header.items() if k not in ("id", "ok")}
        except EasyFaaSError as e:
            status = {"error": str(e)}
        return _json({"funclet": status, "sandboxes": ctl.scheduler.describe()})

    @app.get("/metrics")
    async def metrics(request: Request) -> HTTPResponse:
        text = ctl.metrics.render(ctl.scheduler.counts(), await ctl.queue.depth(),
                                  ctl.scheduler.cpu_caps())
        return HTTPResponse(text, content_type="text/plain; version=0.0.4")


def _invoke_response(request: http1.Request, result: CallResult) -> http1.HttpResponse:
    headers = [("X-easyfaas-Request-Id", result.request_id),
               ("X-easyfaas-Function-Exectime", f"{result.exectime_ms:.3f}")]
    if result.function_error:
        headers.append(("X-easyfaas-Function-Error", result.function_error))
    tail = (request.header("log-type") or "").lower() == "tail"
    to_body = (request.header("log-to-body") or "").lower() == "true"
    log_b64 = base64.b64encode(result.log_tail().encode()).decode() if tail or to_body else ""
    if tail:
        headers.append(("X-easyfaas-Log-Result", log_b64))
    if to_body:
        return http1.json_response(200, {"FunctionError": result.function_error or "",
                                         "LogResult": log_b64,
                                         "Payload": result.body.decode("utf-8", "replace")},
                                   headers)
    return http1.HttpResponse(200, [("content-type", "application/json"), *headers],
                              result.body)
