"""The engine's framing client against a real unix-socket server: answers, timeouts."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from _controller_fakes import run, short_dir
from waiting import async_wait_until

from easyfaas import wire


async def _server(path: str) -> asyncio.AbstractServer:
    """``echo`` answers at once, ``slow`` after ``delay`` seconds, ``never`` not at all."""

    async def handle(header: wire.Header, payload: bytes,
                     conn: wire.Connection) -> tuple[dict[str, Any], bytes]:
        if header["op"] == "slow":
            await asyncio.sleep(header["delay"])  # the peer's work, the timing under test
        elif header["op"] == "never":
            await asyncio.Event().wait()
        return {"op": header["op"]}, payload

    return await wire.start_server(path, handle)


@asynccontextmanager
async def _client() -> AsyncIterator[wire.Client]:
    """A client of ``_server`` on a fresh socket; both closed on the way out."""
    root = short_dir()
    path = str(root / "s.sock")
    server = await _server(path)
    client = wire.Client(path)
    try:
        yield client
    finally:
        await client.close()
        server.close()
        shutil.rmtree(root)


@run
async def test_each_call_times_out_on_its_own_deadline() -> None:
    loop = asyncio.get_running_loop()
    async with _client() as client:
        # A long wait first, then a shorter one: the shorter times out first, by its own clock.
        long = asyncio.ensure_future(client.call_raw({"op": "never"}, timeout=30))
        started = loop.time()
        with pytest.raises(TimeoutError):
            await client.call_raw({"op": "never"}, timeout=0.3)
        assert 0.25 <= loop.time() - started < 20
        assert not long.done()
        # An answer in time is the answer; a late one is dropped; the client goes on.
        header, body = await client.call_raw({"op": "slow", "delay": 0.05}, b"x", timeout=20)
        assert (header["op"], body) == ("slow", b"x")
        with pytest.raises(TimeoutError):
            await client.call_raw({"op": "slow", "delay": 0.5}, timeout=0.1)
        assert (await client.call_raw({"op": "echo"}, b"y", timeout=5))[1] == b"y"
        # Answered after the late one on the same stream: that one came and was dropped.
        header, body = await client.call_raw({"op": "slow", "delay": 0.6}, b"z", timeout=20)
        assert (header["op"], body) == ("slow", b"z")
        long.cancel()
        # Finished calls leave nothing behind, however many there were.
        for _ in range(200):
            await client.call_raw({"op": "echo"}, timeout=5)
        assert client._deadlines == []


@run
async def test_a_call_cancelled_while_sending_leaves_no_timeout_behind() -> None:
    """A caller cancelled while its big request waits for the peer to read (flow control)
    has no answer to wait for: nothing of it may time out later."""
    root = short_dir()
    path = str(root / "s.sock")
    accepted: list[asyncio.StreamWriter] = []

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_unix_server(never_reads, path)
    client = wire.Client(path)
    try:
        call = asyncio.ensure_future(client.call_raw({"op": "x"}, b"x" * (16 << 20), timeout=30))
        # Its deadline is in once it has written what the socket takes and waits to send the
        # rest: the push, the write and the wait for flow control are one step of its task.
        await async_wait_until(lambda: bool(client._deadlines))
        assert not call.done()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert client._deadlines == []
    finally:
        await client.close()
        for writer in accepted:
            writer.close()
        server.close()
        shutil.rmtree(root)


@run
async def test_a_timeout_with_a_start_runs_from_that_start() -> None:
    """A request the peer holds behind another gets its whole timeout from when it starts."""
    loop = asyncio.get_running_loop()
    async with _client() as client:
        start: asyncio.Future[None] = loop.create_future()
        held = asyncio.ensure_future(client.call_raw({"op": "never"}, timeout=0.2, start=start))
        # Far past its timeout, but not started: no clock runs for it yet.
        with pytest.raises(TimeoutError):
            await client.call_raw({"op": "never"}, timeout=0.5)
        assert not held.done() and client._deadlines == []
        start.set_result(None)
        started = loop.time()
        with pytest.raises(TimeoutError):
            await held
        assert 0.15 <= loop.time() - started < 20
        # Answered before its start: no timeout is left to fire later.
        start = loop.create_future()
        header, _ = await client.call_raw({"op": "echo"}, timeout=0.2, start=start)
        after: asyncio.Future[None] = loop.create_future()
        start.add_done_callback(lambda _: after.set_result(None))  # runs after the client's
        start.set_result(None)
        await after
        assert header["op"] == "echo" and client._deadlines == []


@run
async def test_every_answer_is_told_also_one_whose_caller_left() -> None:
    """``on_answer`` hears each answer frame, the late answer of a timed-out call too (a peer
    that answers in order has then started the next request)."""
    async with _client() as client:
        told: list[None] = []
        client.on_answer = lambda: told.append(None)
        with pytest.raises(TimeoutError):
            await client.call_raw({"op": "slow", "delay": 0.3}, timeout=0.05)
        # Answered after the late one on the same stream: that one came, was dropped, was told.
        await client.call_raw({"op": "slow", "delay": 0.5}, timeout=20)
        assert len(told) == 2


@run
async def test_wait_lost_returns_once_the_connection_is_gone() -> None:
    async with _client() as client:
        await client.wait_lost()  # no connection yet: at once
        await client.call("echo")
        waiting = asyncio.ensure_future(client.wait_lost())
        await asyncio.sleep(0)  # let it start waiting
        assert not waiting.done()
        assert client._protocol is not None and client._protocol.transport is not None
        client._protocol.transport.close()  # the connection drops (here from this side)
        await asyncio.wait_for(waiting, 10)
        assert not client.connected
        # The next call connects again, and waiting follows the new connection.
        await client.call("echo")
        assert client.connects == 2
        again = asyncio.ensure_future(client.wait_lost())
        await asyncio.sleep(0)
        assert not again.done()
        again.cancel()


class _InOrderPeer:
    """A peer that answers only when the test says so (``answer``), and keeps a record of
    answers it has not sent (``record``) the way a runner does."""

    def __init__(self) -> None:
        self.requests: list[wire.Header] = []
        self.record: list[tuple[wire.Header, bytes]] = []
        self.writer: asyncio.StreamWriter | None = None
        self.got = asyncio.Condition()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        while (frame := await wire.read_frame(reader)) is not None:
            async with self.got:
                self.requests.append(frame[0])
                self.got.notify_all()

    async def wait_requests(self, n: int) -> None:
        async with self.got:
            await self.got.wait_for(lambda: len(self.requests) >= n)

    def answer(self, rid: int) -> tuple[wire.Header, bytes]:
        return {"ok": True, "id": rid}, str(rid).encode()

    def send(self, *rids: int) -> None:
        assert self.writer is not None
        self.writer.write(b"".join(wire.encode(*self.answer(rid)) for rid in rids))


@run
async def test_answers_from_the_peers_record_count_once_and_only_for_calls_sent() -> None:
    """``recover``: a call about to time out takes its answer from the peer's record, and a
    lost connection's calls too; the same answer arriving later is not told twice; records of
    calls never sent here, or answered already, are passed over."""
    root = short_dir()
    path = str(root / "s.sock")
    peer = _InOrderPeer()
    server = await asyncio.start_unix_server(peer.serve, path)
    client = wire.Client(path)
    told: list[None] = []
    client.on_answer = lambda: told.append(None)
    client.recover = lambda: list(peer.record)
    try:
        first = asyncio.ensure_future(client.call_raw({"op": "a"}, timeout=0.2))
        second = asyncio.ensure_future(client.call_raw({"op": "b"}))
        await peer.wait_requests(2)
        # Kept back and recorded, with one from before this client and one never sent.
        peer.record = [peer.answer(0), peer.answer(1), peer.answer(99)]
        assert await first == peer.answer(1)  # its deadline passed: the record had it
        assert len(told) == 1
        peer.send(1, 2)  # sent after all
        assert await second == peer.answer(2)
        assert len(told) == 2
        # The connection is lost: the call the record answers answers, the other one fails.
        third = asyncio.ensure_future(client.call_raw({"op": "c"}))
        fourth = asyncio.ensure_future(client.call_raw({"op": "d"}))
        await peer.wait_requests(4)
        peer.record = [peer.answer(2), peer.answer(3)]
        assert peer.writer is not None
        peer.writer.close()
        assert await third == peer.answer(3)
        with pytest.raises(ConnectionError):
            await fourth
        assert len(told) == 3
    finally:
        await client.close()
        server.close()
        shutil.rmtree(root)
