"""The HTTP API (sanic): invoke (sync and async), management, invocation status and ops.

Errors are mapped to HTTP in exactly one place, ``_error_response``. Routes are documented in
docs/api.md.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from sanic import HTTPResponse, Request, Sanic
from sanic.exceptions import SanicException

from .. import funclog, token
from ..errors import EasyFaaSError, FunctionNotFound, InvalidParameter, Unauthorized
from .invoke import CallResult, checked_event
from .management import lambda_shape, peer_call, put_function

if TYPE_CHECKING:
    from .service import Controller

log = logging.getLogger("easyfaas.controller")

_app_ids = itertools.count(1)
MAX_LOG_LINES = 10000
T = TypeVar("T")
# Calls whose caller hung up, running to their end (the loop keeps only weak references).
_orphans: set[asyncio.Task[Any]] = set()


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> HTTPResponse:
    return HTTPResponse(orjson.dumps(obj), status=status, headers=headers,
                        content_type="application/json")


def _error_response(e: Exception) -> HTTPResponse:
    """The one place where errors become HTTP statuses and bodies."""
    if isinstance(e, EasyFaaSError):
        return _json(e.to_api(), e.status)
    if isinstance(e, SanicException):
        status = int(getattr(e, "status_code", 500))
        error = (FunctionNotFound if status == 404 else
                 InvalidParameter if status < 500 else EasyFaaSError)(str(e))
        return _json({**error.to_api(), "Status": status}, status)
    log.exception("unexpected error: %s", e)
    return _json(EasyFaaSError("internal error").to_api(), 500)


def build_app(ctl: Controller) -> Sanic:
    """The sanic application serving ``ctl``; a fresh name each time (sanic keeps a registry)."""
    app = Sanic(f"easyfaas_controller_{next(_app_ids)}", configure_logging=False)
    app.config.FALLBACK_ERROR_FORMAT = "json"
    app.error_handler.add(Exception, lambda request, e: _error_response(e))
    _add_invoke_routes(app, ctl)
    _add_management_routes(app, ctl)
    _add_ops_routes(app, ctl)
    return app


def _require_token(ctl: Controller, request: Request, always: bool = True) -> None:
    """Management always needs the token; reads and invokes only if the config says so."""
    if (always or ctl.cfg.api.invoke_requires_token) and not token.matches(
            ctl.token, request.headers.get("authorization")):
        raise Unauthorized("a valid 'Authorization: Bearer <token>' header is required")


def _add_invoke_routes(app: Sanic, ctl: Controller) -> None:
    @app.post("/v1/functions/<name>/invocations")
    async def invoke(request: Request, name: str) -> HTTPResponse:
        _require_token(ctl, request, always=False)
        payload = checked_event(request.body)
        qualifier = request.args.get("Qualifier") or "$LATEST"
        request_id = request.headers.get("x-easyfaas-request-id") or ctl.invoker.ids.new()
        invoke_type = request.headers.get("x-easyfaas-invoke-type", "common")
        if invoke_type == "event":
            inv_id = await ctl.queue.enqueue(name, qualifier, payload,
                                             request.headers.get("idempotency-key"))
            return _json({"invocationId": inv_id}, 202, {"X-easyfaas-Request-Id": request_id})
        if invoke_type != "common":
            raise InvalidParameter(f"X-easyfaas-Invoke-Type must be common or event, "
                                   f"not {invoke_type!r}")
        result = await _to_the_end(ctl.invoker.call(name, qualifier, payload, request_id))
        return _invoke_response(request, result)

    @app.get("/v1/invocations/<inv_id>")
    async def invocation(request: Request, inv_id: str) -> HTTPResponse:
        _require_token(ctl, request, always=False)
        return _json(await ctl.queue.status(inv_id))


def _add_management_routes(app: Sanic, ctl: Controller) -> None:
    @app.route("/v1/functions/<name>", methods=["POST", "PUT"])
    async def put(request: Request, name: str) -> HTTPResponse:
        _require_token(ctl, request)
        existed = name in ctl.registry.functions
        record = await put_function(ctl.stubs, name, request.body)
        return _json(lambda_shape(record), 200 if existed else 201)

    @app.delete("/v1/functions/<name>")
    async def delete(request: Request, name: str) -> HTTPResponse:
        _require_token(ctl, request)
        await peer_call(ctl.stubs, "get", name=name)
        await peer_call(ctl.stubs, "delete", name=name)
        return HTTPResponse(status=204)

    @app.get("/v1/functions")
    async def list_functions(request: Request) -> HTTPResponse:
        _require_token(ctl, request, always=False)
        header = await peer_call(ctl.stubs, "list")
        return _json({"Functions": [lambda_shape(r) for r in header["functions"]]})

    @app.get("/v1/functions/<name>")
    async def get_function(request: Request, name: str) -> HTTPResponse:
        _require_token(ctl, request, always=False)
        header = await peer_call(ctl.stubs, "get", name=name)
        return _json(lambda_shape(header["function"]))

    @app.get("/v1/functions/<name>/logs")
    async def logs(request: Request, name: str) -> HTTPResponse:
        _require_token(ctl, request, always=False)
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
        text = ctl.metrics.render(ctl.scheduler.counts(), await ctl.queue.depth())
        return HTTPResponse(text, content_type="text/plain; version=0.0.4")


async def _to_the_end(call: Coroutine[Any, Any, T]) -> T:
    """Await ``call`` in a task of its own, which the caller hanging up does not cancel.

    A call the engine has accepted runs to its end, as through the trigger: a function is not
    killed halfway through its work because a client went away, its log is kept, and its
    sandbox stays warm (cancelling the call would have to destroy it: the handler may still be
    running in there).
    """
    task = asyncio.ensure_future(call)
    _orphans.add(task)
    task.add_done_callback(_orphans.discard)
    return await asyncio.shield(task)


def _invoke_response(request: Request, result: CallResult) -> HTTPResponse:
    headers = {"X-easyfaas-Request-Id": result.request_id,
               "X-easyfaas-Function-Exectime": f"{result.exectime_ms:.3f}"}
    if result.function_error:
        headers["X-easyfaas-Function-Error"] = result.function_error
    log_b64 = base64.b64encode(result.log_tail().encode()).decode()
    if request.headers.get("log-type", "").lower() == "tail":
        headers["X-easyfaas-Log-Result"] = log_b64
    if request.headers.get("log-to-body", "").lower() == "true":
        return _json({"FunctionError": result.function_error or "", "LogResult": log_b64,
                      "Payload": result.body.decode("utf-8", "replace")}, headers=headers)
    return HTTPResponse(result.body, headers=headers, content_type="application/json")
