"""The real controller service (sanic on port 0 + controller.sock) against fake stubs/funclet."""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket

import orjson
import pytest
from _controller_helpers import fakes
from waiting import async_wait_until

from easyfaas import funclog, wire
from easyfaas.controller import api

pytestmark = pytest.mark.root

record, run, running_controller = fakes.record, fakes.run, fakes.running_controller
INVOKE = "/v1/functions/{}/invocations"


@run
async def test_sync_invoke_success_with_headers_and_log_tail() -> None:
    async with running_controller([record("hello")]) as h:
        status, headers, body = await h.request(
            "POST", INVOKE.format("hello"), b'{"name":"x"}',
            {"X-easyfaas-Request-Id": "req-1", "Log-Type": "Tail"})
        assert status == 200
        assert json.loads(body)["event"] == {"name": "x"}
        assert headers["X-easyfaas-Request-Id"] == "req-1"
        assert float(headers["X-easyfaas-Function-Exectime"]) > 0
        assert "X-easyfaas-Function-Error" not in headers
        assert base64.b64decode(headers["X-easyfaas-Log-Result"]) == b"handled req-1\n"
        # Second call is warm: same sandbox, one acquire.
        _, _, again = await h.request("POST", INVOKE.format("hello"))
        assert json.loads(again)["sandbox"] == json.loads(body)["sandbox"]
        assert h.funclet.acquired == ["hello@1"]
        log_text = await _wait_log(h, "hello", "REPORT RequestId: req-1")
        assert "START RequestId: req-1 Version: 1\nhandled req-1\nEND RequestId: req-1" in log_text
        assert "Memory Size: 128 MB" in log_text


async def _wait_log(h: fakes.Harness, name: str, needle: str) -> str:
    text = ""

    async def has() -> bool:
        nonlocal text
        _, _, body = await h.request("GET", f"/v1/functions/{name}/logs?lines=50")
        text = body.decode()
        return needle in text
    await async_wait_until(has)
    return text


class VanishingFunclet(fakes.FakeFunclet):
    """Hands out sandboxes whose runner is gone before the controller connects: its socket
    path no longer exists (ENOENT, where a dead runner's refusal is ECONNREFUSED)."""

    async def handle(self, header: dict, payload: bytes, writer: object) -> tuple[dict, bytes]:
        answer, body = await super().handle(header, payload, writer)  # type: ignore[arg-type]
        if header["op"] == "acquire":
            runner = self.runners[answer["sandbox"]["id"]]
            runner.kill()
            os.unlink(runner.path)
        return answer, body


@run
async def test_a_sandbox_whose_runner_is_gone_before_loading_is_a_function_error() -> None:
    async with running_controller([record("f")], funclet_class=VanishingFunclet) as h:
        status, headers, body = await h.request("POST", INVOKE.format("f"))
        assert status == 200 and headers["X-easyfaas-Function-Error"] == "Unhandled", body
        assert json.loads(body)["errorType"] == "Runtime.ExitError", body
        await async_wait_until(lambda: h.funclet.destroyed == ["sb1"], "its sandbox to go")


@run
async def test_function_error_timeout_crash_and_oom_answer_200_unhandled() -> None:
    async with running_controller([record("f", timeout=0.3)]) as h:
        async def call(event: dict) -> tuple[dict, dict]:
            status, headers, body = await h.request(
                "POST", INVOKE.format("f"), orjson.dumps(event), {"X-easyfaas-Request-Id": "r"})
            assert status == 200 and headers["X-easyfaas-Function-Error"] == "Unhandled"
            return headers, json.loads(body)

        _, err = await call({"fail": "bad input"})
        assert err == {"errorMessage": "bad input", "errorType": "ValueError"}
        _, err = await call({"sleep": 5})
        assert err == {"errorMessage": "r Task timed out after 0.30 seconds",
                       "errorType": "TimeoutError"}
        assert h.funclet.destroyed == ["sb1"]  # the timed-out sandbox was killed
        _, err = await call({"crash": True})
        assert err["errorType"] == "Runtime.ExitError"
        _, err = await call({"oom": True})
        assert err["errorType"] == "Runtime.OutOfMemory" and "128 MB" in err["errorMessage"]
        # Reborn: the next call gets a fresh sandbox and works.
        status, _, body = await h.request("POST", INVOKE.format("f"))
        assert status == 200 and json.loads(body)["sandbox"] == "sb4"
        assert sorted(h.funclet.destroyed) == ["sb1", "sb2", "sb3"]
        _, _, metrics = await h.request("GET", "/metrics")
        for outcome in ("ok", "error", "timeout", "crash", "oom"):
            assert f'function="f",outcome="{outcome}"}} 1' in metrics.decode()


@run
async def test_log_to_body() -> None:
    async with running_controller([record("f")]) as h:
        _, _, body = await h.request("POST", INVOKE.format("f"), b'{"fail":"x"}',
                                     {"Log-To-Body": "true"})
        answer = json.loads(body)
        assert answer["FunctionError"] == "Unhandled"
        assert json.loads(answer["Payload"])["errorMessage"] == "x"
        assert base64.b64decode(answer["LogResult"]) == b"about to fail\n"


@run
async def test_platform_errors() -> None:
    async with running_controller([record("f", max_instances=1)],
                                  scheduler={"queue_size": 0}) as h:
        cases = [
            (INVOKE.format("f"), b"{not json", {}, 400, "InvalidRequestContentException"),
            (INVOKE.format("nope"), b"{}", {}, 404, "ResourceNotFoundException"),
            (INVOKE.format("f") + "?Qualifier=7", b"{}", {}, 404, "ResourceNotFoundException"),
            (INVOKE.format("f"), b"{}", {"X-easyfaas-Invoke-Type": "x"}, 400,
             "InvalidParameterValueException"),
        ]
        for path, body, headers, status, code in cases:
            got, _, answer = await h.request("POST", path, body, headers)
            error = json.loads(answer)
            assert (got, error["Code"], error["Status"]) == (status, code, status)
            assert set(error) == {"Code", "Message", "Cause", "Status", "Type"}
        busy = fakes.asyncio.ensure_future(h.request("POST", INVOKE.format("f"),
                                                     b'{"sleep": 0.5}'))
        await async_wait_until(lambda: h.funclet.acquired == ["f@1"])
        got, _, answer = await h.request("POST", INVOKE.format("f"))
        assert got == 429 and json.loads(answer)["Code"] == "TooManyRequestsException"
        assert (await busy)[0] == 200


@run
async def test_async_invoke_and_status() -> None:
    async with running_controller([record("f")]) as h:
        status, _, body = await h.request("POST", INVOKE.format("f"), b'{"n": 7}',
                                          {"X-easyfaas-Invoke-Type": "event",
                                           "Idempotency-Key": "k1"})
        assert status == 202
        inv_id = json.loads(body)["invocationId"]
        _, _, again = await h.request("POST", INVOKE.format("f"), b'{"n": 7}',
                                      {"X-easyfaas-Invoke-Type": "event",
                                       "Idempotency-Key": "k1"})
        assert json.loads(again)["invocationId"] == inv_id
        state: dict = {}

        async def done() -> bool:
            nonlocal state
            _, _, raw = await h.request("GET", f"/v1/invocations/{inv_id}")
            state = json.loads(raw)
            return bool(state["status"] == "succeeded")
        await async_wait_until(done)
        assert state["result"]["event"] == {"n": 7} and state["attempts"] == 1
        assert set(state) == {"invocationId", "function", "status", "result", "error",
                              "attempts", "createdAt", "updatedAt"}
        assert (await h.request("GET", "/v1/invocations/nope"))[0] == 404


@run
async def test_management_needs_the_token_and_maps_to_stubs() -> None:
    async with running_controller([record("old")]) as h:
        code = base64.b64encode(b"PK-zip").decode()
        body = orjson.dumps({"Runtime": "python3", "Handler": "index.handler", "Code": code})
        path = "/v1/functions/new"
        assert (await h.request("POST", path, body))[0] == 403
        assert (await h.request("POST", path, body, {"Authorization": "Bearer nope"}))[0] == 403
        status, _, answer = await h.request("POST", path, body, h.auth())
        assert status == 201 and json.loads(answer)["Configuration"]["FunctionName"] == "new"
        assert h.stubs.puts == [{"name": "new", "zip": b"PK-zip",
                                 "body": {"Runtime": "python3", "Handler": "index.handler"}}]
        status, _, answer = await h.request("PUT", path, body, h.auth())
        assert status == 200 and json.loads(answer)["Configuration"]["Version"] == "2"
        bad = orjson.dumps({"Runtime": "cobol", "Code": code})
        status, _, answer = await h.request("POST", path, bad, h.auth())
        assert status == 400 and "cobol" in json.loads(answer)["Message"]
        status, _, answer = await h.request("GET", "/v1/functions")
        assert sorted(f["Configuration"]["FunctionName"]
                      for f in json.loads(answer)["Functions"]) == ["new", "old"]
        assert (await h.request("DELETE", "/v1/functions/old"))[0] == 403
        assert (await h.request("DELETE", "/v1/functions/old", None, h.auth()))[0] == 204
        assert (await h.request("GET", "/v1/functions/old"))[0] == 404
        assert (await h.request("DELETE", "/v1/functions/old", None, h.auth()))[0] == 404


@run
async def test_invoke_token_is_enforced_when_configured() -> None:
    async with running_controller([record("f")], api={"invoke_requires_token": True}) as h:
        assert (await h.request("POST", INVOKE.format("f")))[0] == 403
        assert (await h.request("GET", "/v1/functions/f"))[0] == 403
        assert (await h.request("POST", INVOKE.format("f"), b"{}", h.auth()))[0] == 200


@run
async def test_new_version_swaps_without_downtime_and_delete_destroys() -> None:
    async with running_controller([record("f")]) as h:
        slow = fakes.asyncio.ensure_future(h.request("POST", INVOKE.format("f"),
                                                     b'{"sleep": 0.3}'))
        await async_wait_until(lambda: h.funclet.acquired == ["f@1"])
        h.stubs.publish(record("f", 2))

        async def serves_v2() -> bool:
            _, _, body = await h.request("POST", INVOKE.format("f"))
            return bool(json.loads(body)["version"] == 2)
        await async_wait_until(serves_v2)
        status, _, old = await slow
        assert status == 200 and json.loads(old)["version"] == 1
        await async_wait_until(lambda: "sb1" in h.funclet.destroyed)
        h.stubs.remove("f")
        await async_wait_until(lambda: h.funclet.live() == [])
        assert (await h.request("POST", INVOKE.format("f")))[0] == 404


@run
async def test_ops_routes() -> None:
    async with running_controller([record("f")]) as h:
        await h.request("POST", INVOKE.format("f"))
        status, _, body = await h.request("GET", "/v1/runtimes")
        runtimes = json.loads(body)
        assert status == 200 and runtimes["funclet"]["backend"] == "fake"
        assert [(s["function"], s["state"]) for s in runtimes["sandboxes"]] == [("f", "warm")]
        status, headers, body = await h.request("GET", "/metrics")
        text = body.decode()
        assert 'easyfaas_invocations_total{function="f",outcome="ok"} 1' in text
        assert 'easyfaas_cold_starts_total{function="f"} 1' in text
        assert 'easyfaas_sandboxes{state="warm"} 1' in text
        assert "easyfaas_async_queue_depth" in text
        # A measured call that only computed: the function's share and the cap it sets.
        await h.request("POST", INVOKE.format("f"), b'{"usage": [0.01, 0.01]}')
        _, _, body = await h.request("GET", "/metrics")
        cap = 4 * len(os.sched_getaffinity(0))  # the default instances_per_cpu, share 1
        assert 'easyfaas_function_cpu_share{function="f"} 1.000' in body.decode()
        assert f'easyfaas_function_cpu_instance_cap{{function="f"}} {cap}' in body.decode()


@run
async def test_healthz_waits_for_a_registered_trigger() -> None:
    async with running_controller([record("f")], missing=("httptrigger",),
                                  http={"listen": "127.0.0.1:0"}) as h:
        status, _, body = await h.request("GET", "/healthz")
        assert status == 503 and json.loads(body)["missing"] == ["httptrigger"]
        client = wire.Client(str(h.cfg.socket("controller")))
        await client.call("register", component="httptrigger")
        assert (await h.request("GET", "/healthz"))[0] == 200
        await client.close()

        async def unhealthy() -> bool:
            return (await h.request("GET", "/healthz"))[0] == 503
        await async_wait_until(unhealthy)


@run
async def test_controller_socket_ops() -> None:
    async with running_controller([record("f", http=[{"path": "/hi", "methods": ["GET"]}])]) as h:
        client = wire.Client(str(h.cfg.socket("controller")))
        try:
            header, body = await client.call("invoke", b'{"a": 1}', function="f",
                                             request_id="s-1", log_tail=True)
            assert header["function_error"] is None and header["request_id"] == "s-1"
            assert header["log"] == "handled s-1\n" and json.loads(body)["event"] == {"a": 1}
            header, body = await client.call("invoke", b'{"fail": "no"}', function="f")
            assert header["function_error"] == "Unhandled" and header["log"] is None
            assert json.loads(body)["errorMessage"] == "no"
            with pytest.raises(wire.RemoteError) as info:
                await client.call("invoke", b"{}", function="ghost")
            assert info.value.error["type"] == "FunctionNotFound"
            header, _ = await client.call("routes")
            assert header["routes"] == [{"path": "/hi", "methods": ["GET"], "function": "f"}]
        finally:
            await client.close()


@run
async def test_caller_hanging_up_mid_call_lets_the_call_finish_in_its_sandbox() -> None:
    async with running_controller([record("f", max_instances=1)],
                                  scheduler={"queue_timeout_s": 2.0}) as h:
        host, port = h.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await fakes.asyncio.open_connection(host, int(port))
        body = b'{"sleep": 0.5}'
        writer.write(b"POST /v1/functions/f/invocations HTTP/1.1\r\nHost: x\r\n"
                     b"X-easyfaas-Request-Id: gone-1\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        await async_wait_until(lambda: h.funclet.events != [])
        writer.close()
        # The slot is not leaked: the next call waits for the first to finish, in the same
        # sandbox, which was neither killed nor replaced.
        status, _, answer = await h.request("POST", INVOKE.format("f"), b'{"n": 2}')
        assert status == 200 and json.loads(answer)["event"] == {"n": 2}
        assert json.loads(answer)["sandbox"] == "sb1"
        assert h.funclet.destroyed == [] and h.funclet.acquired == ["f@1"]
        assert "END RequestId: gone-1" in funclog.tail(h.cfg.state_dir, "f", 100)


@run
async def test_invoke_route_and_sanic_routes_share_one_api_port() -> None:
    """The invoke route is served on the engine's HTTP layer, every other route by the sanic
    app behind it: one keep-alive connection may mix them, and both speak the same errors."""
    async with running_controller([record("f")]) as h:
        host, port = h.url.removeprefix("http://").rsplit(":", 1)

        def exchange() -> list[tuple[int, dict[str, str], bytes]]:
            conn = http.client.HTTPConnection(host, int(port), timeout=10)
            answers = []
            for method, path, body in [("POST", INVOKE.format("f"), b'{"n": 1}'),
                                       ("GET", "/v1/functions/f", None),
                                       ("POST", INVOKE.format("f") + "?Qualifier=", b"{}"),
                                       ("GET", INVOKE.format("f"), None),
                                       ("GET", "/v1/no/such/route", None),
                                       ("POST", INVOKE.format("f"), b'{"n": 3}')]:
                conn.request(method, path, body)
                resp = conn.getresponse()
                answers.append((resp.status, dict(resp.getheaders()), resp.read()))
            conn.close()
            return answers

        answers = await fakes.asyncio.to_thread(exchange)
        statuses = [status for status, _, _ in answers]
        assert statuses == [200, 200, 200, 405, 404, 200], answers
        assert json.loads(answers[0][2])["event"] == {"n": 1}
        assert json.loads(answers[1][2])["Configuration"]["FunctionName"] == "f"
        assert answers[3][1]["allow"] == "POST"
        for status, _, body in answers[3:5]:
            error = json.loads(body)
            assert set(error) == {"Code", "Message", "Cause", "Status", "Type"}
            assert error["Status"] == status
        assert json.loads(answers[5][2])["event"] == {"n": 3}

        def oversized() -> bytes:
            # Announced only: the limit is checked on the head, before any of the body.
            with socket.create_connection((host, int(port)), timeout=10) as s:
                s.sendall(b"POST /v1/functions/f HTTP/1.1\r\nContent-Length: %d\r\n\r\n"
                          % (api.MAX_BODY + 1))
                return s.recv(65536)

        assert (await fakes.asyncio.to_thread(oversized)).startswith(b"HTTP/1.1 413 ")
