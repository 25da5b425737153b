"""The controller's own CPU policy (controller/cpupolicy.py), switched for real on a thread of
the test's own: SCHED_BATCH only while two or more calls are in flight and all are short."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from easyfaas.controller.cpupolicy import BusyBatching

SHORT = {"short": True, "long": False}


def on_a_thread(body: Callable[[], None]) -> None:
    """Run ``body`` on a new thread (the policy is per thread) and re-raise what it raised."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            body()
        except BaseException as e:  # noqa: BLE001 - handed to the test's thread
            failure.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]


def policy() -> int:
    return os.sched_getscheduler(0)


def test_batch_while_two_short_calls_are_in_flight() -> None:
    def body() -> None:
        p = BusyBatching(True, SHORT.__getitem__)
        first = p.begin("short")
        assert policy() == os.SCHED_OTHER  # one call: a request still preempts at once
        second = p.begin("short")
        assert policy() == os.SCHED_BATCH
        p.end(second)
        assert policy() == os.SCHED_OTHER
        p.end(first)
        assert policy() == os.SCHED_OTHER and p.calls == 0

    on_a_thread(body)


def test_a_long_call_in_flight_keeps_it_sched_other() -> None:
    def body() -> None:
        p = BusyBatching(True, SHORT.__getitem__)
        calls = [p.begin("short"), p.begin("short")]
        assert policy() == os.SCHED_BATCH
        long = p.begin("long")
        assert policy() == os.SCHED_OTHER
        more = p.begin("short")
        assert policy() == os.SCHED_OTHER
        p.end(long)
        assert policy() == os.SCHED_BATCH
        for token in [*calls, more]:
            p.end(token)
        assert policy() == os.SCHED_OTHER and p.long_calls == 0

    on_a_thread(body)


def test_off_it_never_switches() -> None:
    def body() -> None:
        p = BusyBatching(False, SHORT.__getitem__)
        tokens = [p.begin("short") for _ in range(3)]
        assert policy() == os.SCHED_OTHER
        for token in tokens:
            p.end(token)

    on_a_thread(body)


def test_a_policy_set_from_outside_is_kept() -> None:
    def body() -> None:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        p = BusyBatching(True, SHORT.__getitem__)
        tokens = [p.begin("short") for _ in range(3)]
        assert policy() == os.SCHED_IDLE
        for token in tokens:
            p.end(token)
        assert policy() == os.SCHED_IDLE

    on_a_thread(body)
