"""sd_notify readiness and the event-loop watchdog, against a real datagram socket standing in
for systemd's ``$NOTIFY_SOCKET``."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator

import pytest

from easyfaas import notify


@pytest.fixture
def manager(monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """The service manager's end: a bound datagram socket named by ``$NOTIFY_SOCKET``."""
    directory = tempfile.mkdtemp(prefix="ef", dir="/tmp")  # unix socket paths are short
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = os.path.join(directory, "notify")
    sock.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield sock
    finally:
        sock.close()
        shutil.rmtree(directory)


def messages(sock: socket.socket, timeout: float) -> list[str]:
    """Every datagram that arrives within ``timeout`` seconds of the first one asked for."""
    out: list[str] = []
    sock.settimeout(timeout)
    try:
        while True:
            out.append(sock.recv(4096).decode())
            sock.settimeout(0.0)
    except (TimeoutError, BlockingIOError):
        return out


def test_ready_and_stopping_are_sent(manager: socket.socket) -> None:
    notify.ready("serving")
    notify.stopping()
    assert messages(manager, 2.0) == ["READY=1\nSTATUS=serving", "STOPPING=1"]


def test_interval_is_half_of_watchdog_usec(monkeypatch: pytest.MonkeyPatch,
                                           manager: socket.socket) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert notify.watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert notify.watchdog_interval() == 15.0


@pytest.mark.parametrize("env", [{}, {"WATCHDOG_USEC": "0"}, {"WATCHDOG_USEC": "soon"},
                                 {"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}])
def test_no_watchdog_when_none_is_armed_for_this_process(
    monkeypatch: pytest.MonkeyPatch, manager: socket.socket, env: dict[str, str]
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert notify.watchdog_interval() is None
    asyncio.run(asyncio.wait_for(notify.watchdog(), 2.0))  # returns at once: nothing to ping
    assert messages(manager, 0.1) == []


def test_no_watchdog_without_a_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert notify.watchdog_interval() is None


def test_watchdog_pings_while_the_loop_runs_and_stops_when_it_is_blocked(
    monkeypatch: pytest.MonkeyPatch, manager: socket.socket
) -> None:
    # A ping every 50 ms: fewer than the 10 datagrams a unix socket queues before a sender blocks.
    monkeypatch.setenv("WATCHDOG_USEC", "100000")

    async def scenario() -> tuple[list[str], list[str]]:
        pinger = asyncio.create_task(notify.watchdog())
        # The loop is free: pings flow. Wait for three of them (read on the loop, so the
        # pinger keeps running), with a timeout.
        manager.setblocking(False)
        loop = asyncio.get_running_loop()
        flowing = [(await asyncio.wait_for(loop.sock_recv(manager, 4096), 2.0)).decode()
                   for _ in range(3)]
        messages(manager, 0.0)  # drop any ping that queued meanwhile
        time.sleep(0.3)  # the loop is stuck (the condition under test): no ping may arrive
        during_block = messages(manager, 0.0)
        pinger.cancel()
        return flowing, during_block

    flowing, during_block = asyncio.run(scenario())
    assert len(flowing) >= 3 and set(flowing) == {"WATCHDOG=1"}
    assert during_block == []
