"""The trigger's HTTP/1.1 layer on a real loopback socket, spoken to byte by byte."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import pytest
from waiting import async_wait_until

from easyfaas import http1
from easyfaas.http1 import HttpResponse

TIMEOUT = 10.0


def echo(request: http1.Request) -> HttpResponse:
    body = json.dumps({"method": request.method, "path": request.path,
                       "query": request.query_args(), "headers": request.headers,
                       "body": request.body.decode("latin-1"), "ip": request.client_ip})
    return HttpResponse(200, [("content-type", "application/json")], body.encode())


async def _echo(request: http1.Request) -> HttpResponse:
    return echo(request)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> tuple[int, dict[str, str], bytes]:
        """One response, framed by its Content-Length (or none, for statuses without a body)."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        status_line, *lines = head.decode().split("\r\n")[:-2]
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
        size = int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(size), TIMEOUT)
        return int(status_line.split()[1]), headers, body

    async def closed(self) -> bool:
        """True once the server has closed the connection (and sent nothing more)."""
        return await asyncio.wait_for(self.reader.read(), TIMEOUT) == b""


def serve(handler: Callable[[http1.Request], Awaitable[HttpResponse]],
          test: Callable[[Callable[[], Awaitable[Client]]], Awaitable[None]],
          run_to_end: bool = False) -> None:
    async def main() -> None:
        async with http1.serving(handler, "127.0.0.1:0", run_to_end=run_to_end) as addr:
            host, port = addr.rsplit(":", 1)

            async def connect() -> Client:
                return Client(*await asyncio.open_connection(host, int(port)))

            await test(connect)

    asyncio.run(main())


def get(path: str = "/a", extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()


def test_keep_alive_serves_many_requests_on_one_connection() -> None:
    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        for i in range(3):
            await c.send(get(f"/n/{i}?a=1&b=&a=2"))
            status, headers, body = await c.response()
            seen = json.loads(body)
            assert (status, headers["connection"]) == (200, "keep-alive")
            assert seen["path"] == f"/n/{i}"
            assert seen["query"] == [["a", "1"], ["b", ""], ["a", "2"]]
            assert seen["ip"] == "127.0.0.1" and ["host", "x"] in seen["headers"]

    serve(_echo, test)


def test_pipelined_requests_are_answered_in_order() -> None:
    first_started = asyncio.Event()
    release_first = asyncio.Event()

    async def handler(request: http1.Request) -> HttpResponse:
        if request.path == "/slow":
            first_started.set()
            await release_first.wait()
        return echo(request)

    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        await c.send(get("/slow") + get("/fast") + get("/last"))
        await asyncio.wait_for(first_started.wait(), TIMEOUT)
        release_first.set()
        paths = [json.loads((await c.response())[2])["path"] for _ in range(3)]
        assert paths == ["/slow", "/fast", "/last"]

    serve(handler, test)


def test_bodies_by_length_and_chunked_and_percent_escapes_kept() -> None:
    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        await c.send(b"POST /p%20q HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        seen = json.loads((await c.response())[2])
        assert (seen["method"], seen["path"], seen["body"]) == ("POST", "/p%20q", "hello")
        await c.send(b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        assert json.loads((await c.response())[2])["body"] == "abcde"

    serve(_echo, test)


def test_head_and_204_have_no_body_and_keep_the_stream_in_step() -> None:
    async def handler(request: http1.Request) -> HttpResponse:
        if request.path == "/empty":
            return HttpResponse(204, [("content-length", "99")], b"ignored")
        return echo(request)

    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        await c.send(b"HEAD /h HTTP/1.1\r\n\r\n" + get("/empty") + get("/after"))
        head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: " in head
        head = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert head.startswith(b"HTTP/1.1 204 No Content\r\n")
        assert b"content-length" not in head.lower()
        assert json.loads((await c.response())[2])["path"] == "/after"

    serve(handler, test)


@pytest.mark.parametrize("request_bytes", [
    b"GET /old HTTP/1.0\r\n\r\n",
    b"GET /bye HTTP/1.1\r\nConnection: close\r\n\r\n",
])
def test_http10_and_connection_close_end_the_connection(request_bytes: bytes) -> None:
    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        await c.send(request_bytes)
        status, headers, _ = await c.response()
        assert (status, headers["connection"]) == (200, "close")
        assert await c.closed()

    serve(_echo, test)


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
    (b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"y" * (http1.MAX_HEAD + 1) + b"\r\n\r\n", 431),
    (b"POST / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (http1.MAX_BODY + 1), 413),
])
def test_bad_requests_get_an_error_and_the_connection_closes(request_bytes: bytes,
                                                             status: int) -> None:
    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        await c.send(request_bytes)
        got, headers, body = await c.response()
        assert (got, headers["connection"]) == (status, "close")
        assert json.loads(body)["Status"] == status
        assert await c.closed()

    serve(_echo, test)


def test_a_header_that_never_ends_is_refused_not_buffered() -> None:
    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        await c.send(b"GET / HTTP/1.1\r\nX-Endless: ")
        for _ in range(3):  # no CRLF ever: the parser has no complete header to report
            await c.send(b"z" * (http1.MAX_HEAD // 2))
        assert (await c.response())[0] == 431
        assert await c.closed()

    serve(_echo, test)


def test_a_chunked_body_over_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "MAX_BODY", 8)

    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        await c.send(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n")
        assert (await c.response())[0] == 413
        assert await c.closed()

    serve(_echo, test)


def test_a_request_that_does_not_arrive_in_time_is_408_and_idle_ones_close(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "REQUEST_TIMEOUT_S", 0.2)
    monkeypatch.setattr(http1, "KEEP_ALIVE_TIMEOUT_S", 0.2)

    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        slow = await connect()
        await slow.send(b"GET /half HTTP/1.1\r\nHost: x\r\n")  # and never the blank line
        assert (await slow.response())[0] == 408
        assert await slow.closed()
        idle = await connect()
        await idle.send(get())
        assert (await idle.response())[0] == 200
        assert await idle.closed()  # nothing more was sent: the keep-alive timeout closed it

    serve(_echo, test)


def test_the_idle_clock_runs_between_requests_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """The keep-alive timeout counts from the end of the last answer: neither an answer that
    takes longer than it nor a client that comes back often is cut off."""
    monkeypatch.setattr(http1, "KEEP_ALIVE_TIMEOUT_S", 0.3)

    async def handler(request: http1.Request) -> HttpResponse:
        if request.path == "/slow":
            await asyncio.sleep(0.8)  # the handler's work, longer than the idle timeout
        return echo(request)

    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        for _ in range(6):  # 0.1 s apart, 0.6 s in all: twice the idle timeout
            await c.send(get("/often"))
            assert (await c.response())[0] == 200
            await asyncio.sleep(0.1)  # the client's pace under test, not a wait for the server
        await c.send(get("/slow"))
        assert (await c.response())[0] == 200
        await c.send(get("/after"))
        assert json.loads((await c.response())[2])["path"] == "/after"
        assert await c.closed()  # and once idle for the timeout, it closes

    serve(handler, test)


def test_a_slow_body_that_keeps_moving_is_not_cut_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1, "REQUEST_TIMEOUT_S", 0.3)

    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        await c.send(b"POST /slow HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
        for piece in (b"s", b"l", b"o", b"w", b"!"):  # 0.75 s in all, 0.15 s between pieces
            await asyncio.sleep(0.15)  # the slow link under test, not a wait for the server
            await c.send(piece)
        assert json.loads((await c.response())[2])["body"] == "slow!"

    serve(_echo, test)


def test_expect_100_continue_is_answered_before_the_body() -> None:
    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        await c.send(b"POST /e HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        interim = await asyncio.wait_for(c.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        await c.send(b"ok")
        assert json.loads((await c.response())[2])["body"] == "ok"

    serve(_echo, test)


def test_handler_headers_cannot_break_the_framing() -> None:
    async def handler(request: http1.Request) -> HttpResponse:
        return HttpResponse(200, [("x-ok", "a\r\nInjected: yes"), ("bad name", "dropped"),
                                  ("Transfer-Encoding", "chunked"), ("Content-Length", "1"),
                                  ("Connection", "close")], b"four")

    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        await c.send(get() + get())
        for _ in range(2):
            status, headers, body = await c.response()
            assert (status, body) == (200, b"four")
            assert headers["x-ok"] == "aInjected: yes" and "injected" not in headers
            assert "bad name" not in headers and "transfer-encoding" not in headers
            assert (headers["content-length"], headers["connection"]) == ("4", "keep-alive")

    serve(handler, test)


def test_big_answers_to_a_slow_reader_arrive_whole_and_in_order() -> None:
    size = 4 * 1024 * 1024  # far over the transport's write buffer: writing pauses

    async def handler(request: http1.Request) -> HttpResponse:
        return HttpResponse(200, [], request.path[1:].encode() * size)

    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        await c.send(get("/a") + get("/b"))
        for letter in (b"a", b"b"):
            status, _, body = await c.response()
            assert (status, len(body), body.strip(letter)) == (200, size, b"")

    serve(handler, test)


def test_an_upgrade_is_ignored_and_the_connection_keeps_serving() -> None:
    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        await c.send(get("/u", "Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                               "HTTP2-Settings: AAMAAABkAAQAAP__\r\n") + get("/next"))
        assert json.loads((await c.response())[2])["path"] == "/u"
        assert json.loads((await c.response())[2])["path"] == "/next"

    serve(_echo, test)


def test_a_failing_handler_is_a_500_for_that_request_only() -> None:
    async def handler(request: http1.Request) -> HttpResponse:
        if request.path == "/bug":
            raise RuntimeError("a bug")
        return echo(request)

    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        await c.send(get("/bug") + get("/fine"))
        assert (await c.response())[0] == 500
        assert (await c.response())[0] == 200

    serve(handler, test)


def test_a_client_that_hangs_up_cancels_its_call() -> None:
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def handler(request: http1.Request) -> HttpResponse:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return echo(request)

    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        c = await connect()
        await c.send(get())
        await asyncio.wait_for(started.wait(), TIMEOUT)
        c.writer.close()
        await asyncio.wait_for(cancelled.wait(), TIMEOUT)

    serve(handler, test)


def test_a_run_to_end_server_finishes_the_call_of_a_client_that_hung_up() -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[str] = []

    async def handler(request: http1.Request) -> HttpResponse:
        started.set()
        await release.wait()
        finished.append(request.path)
        return echo(request)

    async def test(connect: Callable[[], Awaitable[Client]]) -> None:
        gone = await connect()
        await gone.send(get("/gone"))
        await asyncio.wait_for(started.wait(), TIMEOUT)
        gone.writer.close()
        await gone.writer.wait_closed()
        # Once the server has read the hang-up it holds the answer's task (a cancelled one
        # would not be held: this wait then times out).
        await async_wait_until(lambda: bool(http1._unanswered), timeout=TIMEOUT)
        held = list(http1._unanswered)
        release.set()
        await asyncio.wait_for(asyncio.gather(*held), TIMEOUT)
        assert finished == ["/gone"]
        # The server serves on.
        other = await connect()
        await other.send(get("/next"))
        assert (await other.response())[0] == 200

    serve(handler, test, run_to_end=True)


def test_stopping_finishes_the_answer_in_flight_then_closes() -> None:
    release = asyncio.Event()
    started = asyncio.Event()

    async def handler(request: http1.Request) -> HttpResponse:
        started.set()
        await release.wait()
        return echo(request)

    async def main() -> None:
        async with http1.serving(handler, "127.0.0.1:0") as addr:
            host, port = addr.rsplit(":", 1)
            busy = Client(*await asyncio.open_connection(host, int(port)))
            idle = Client(*await asyncio.open_connection(host, int(port)))
            await busy.send(get())
            await asyncio.wait_for(started.wait(), TIMEOUT)
            asyncio.get_running_loop().call_soon(release.set)
        # Out of the block: the server stopped; the busy connection got its answer first.
        status, headers, _ = await busy.response()
        assert (status, headers["connection"]) == (200, "close")
        assert await busy.closed() and await idle.closed()

    asyncio.run(main())


def test_encode_response_bytes() -> None:
    resp = HttpResponse(201, [("content-type", "text/plain")], b"hi")
    assert b"".join(http1.encode_response(resp, True, False)) == (
        b"HTTP/1.1 201 Created\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n"
        b"connection: keep-alive\r\n\r\nhi")
    unknown = HttpResponse(299, [], b"")
    assert http1.encode_response(unknown, False, False)[0].startswith(b"HTTP/1.1 299 \r\n")
