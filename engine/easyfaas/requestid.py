"""Request ids for synchronous calls: UUID-shaped, unique, and cheap to make.

Every sync call gets one (logs, ``X-EasyFaaS-Request-Id``, the function's context). ``uuid4()``
asks the kernel for randomness on each call, which on the warm path cost as much as the rest of
the trigger's own work (docs/performance.md); these ids take a random prefix once per process
and count. They name a call, they guard nothing: async invocation ids, which the status query
takes, stay ``uuid4()`` (controller/queuedb.py).
"""

from __future__ import annotations

import itertools
import os


class RequestIds:
    """``xxxxxxxx-xxxx-4xxx-yxxx-<48-bit counter>``: a version-4-shaped UUID whose first 74 bits
    are random per instance. Make the instance in the process that uses it (after any fork)."""

    def __init__(self) -> None:
        r = os.urandom(10).hex()
        variant = "89ab"[int(r[15], 16) & 3]
        self._prefix = f"{r[:8]}-{r[8:12]}-4{r[12:15]}-{variant}{r[16:19]}-"
        self._counter = itertools.count(int(r[19], 16) << 40)

    def new(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFF:012x}"
