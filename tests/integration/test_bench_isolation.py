"""The bench's isolation check (``bench/isolation.py``) fails processes lacking what a sandbox has.

That it passes real sandboxes is checked on the ones ``bench.run --quick`` measured
(``test_bench_quick.py``).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import psutil
import pytest

from bench import isolation
from tests.waiting import wait_until

pytestmark = pytest.mark.root


@pytest.fixture
def sleeper(request: pytest.FixtureRequest) -> Iterator[int]:
    """A ``sleep`` started under the argv prefix the test is parametrised with; its pid."""
    proc = subprocess.Popen([*request.param, "sleep", "60"])
    try:
        # ``unshare --fork`` runs sleep as its child: check that, once it is there.
        pid = proc.pid
        if request.param:
            wait_until(lambda: _children(proc.pid), "unshare to start sleep")
            pid = _children(proc.pid)[0]
        yield pid
    finally:
        proc.kill()  # with --kill-child, unshare's death takes its sleep along
        proc.wait()


def _children(pid: int) -> list[int]:
    return [p.pid for p in psutil.Process(pid).children()]


@pytest.mark.parametrize("sleeper", [[]], indirect=True)
def test_a_plain_process_fails_every_check(sleeper: int) -> None:
    checks = isolation.check(sleeper, os.getpid(), 128)
    assert checks == dict.fromkeys(checks, False)
    assert set(checks) == {"own_namespaces", "unprivileged", "memory_limit", "pids_limit",
                           "read_only_code", "loopback_only"}


@pytest.mark.parametrize(
    "sleeper", [["unshare", "--mount", "--net", "--ipc", "--uts", "--pid", "--cgroup", "--fork",
                 "--kill-child"]],
    indirect=True)
def test_namespaces_alone_do_not_make_a_sandbox(sleeper: int) -> None:
    checks = isolation.check(sleeper, os.getpid(), 128)
    assert checks["own_namespaces"] and checks["loopback_only"]
    assert not (checks["unprivileged"] or checks["memory_limit"] or checks["read_only_code"])
