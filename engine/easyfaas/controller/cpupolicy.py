"""The controller's own CPU policy: ``SCHED_BATCH`` while it is busy with short calls only.

A woken ``SCHED_OTHER`` task may preempt the running one at once; a ``SCHED_BATCH`` task waits
until that one blocks or the scheduler's tick comes. Under load, every answer a runner sends
woke the controller, which preempted the runner (and the runner's next call, waiting behind it
in the sandbox), handled that one answer and slept again: one call per turn, on cold caches.
Batch, it handles the answers of a runner's whole run of calls in one turn (measured:
docs/performance.md, "Warm path").

What that costs shows when a sandbox computes for long: a batch controller woken by a request
waits for that sandbox's tick (4 ms at HZ=250) before it may run. So the controller is batch
only while at least two calls are in flight (under load; a lone request is answered as before)
and every one of them is of a function whose calls are short on average
(``scheduler.batch_below_ms``); a function whose calls are long, or not measured yet, keeps it
``SCHED_OTHER`` while one of its calls runs. The trigger stays ``SCHED_OTHER`` throughout: its
wake-up by a client preempts, and the controller then runs when the trigger blocks.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

log = logging.getLogger("easyfaas.controller")

# Calls in flight before the controller counts as busy.
BUSY_CALLS = 2


class BusyBatching:
    """Counts the calls in flight and switches the calling thread's policy (the event loop's:
    every call begins and ends there) as they come and go. ``begin`` returns the token that
    ``end`` takes back."""

    def __init__(self, enabled: bool, is_short: Callable[[str], bool]):
        # A policy set from outside (a unit's CPUSchedulingPolicy=) is the operator's: kept.
        self.enabled = enabled and os.sched_getscheduler(0) == os.SCHED_OTHER
        self.is_short = is_short
        self.calls = 0
        self.long_calls = 0
        self.batch = False

    def begin(self, function: str) -> bool:
        long = not self.is_short(function)
        self.calls += 1
        self.long_calls += long
        self._apply()
        return long

    def end(self, long: bool) -> None:
        self.calls -= 1
        self.long_calls -= long
        self._apply()

    def _apply(self) -> None:
        want = self.enabled and self.calls >= BUSY_CALLS and not self.long_calls
        if want == self.batch:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_BATCH if want else os.SCHED_OTHER,
                                  os.sched_param(0))
        except OSError as e:  # a seccomp filter, an RT policy set from outside: leave it be
            log.warning("cannot switch the controller's CPU policy (%s); keeping it", e)
            self.enabled = False
            return
        self.batch = want
