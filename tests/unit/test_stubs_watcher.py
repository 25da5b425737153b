"""Debouncing of code dir events: quiet time, and a cap for writers that never pause."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from easyfaas.stubs.watcher import Debouncer, Watcher


def test_quiet_period_merges_bursts() -> None:
    async def main() -> list[str]:
        fired: list[str] = []
        debouncer = Debouncer(fired.append, quiet=0.05, max_delay=1.0)
        for _ in range(5):
            debouncer.poke("a")
            debouncer.poke("b")
            await asyncio.sleep(0.01)  # a burst of events, closer than the quiet time
        assert fired == []
        deadline = time.monotonic() + 2
        while len(fired) < 2 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return fired

    assert sorted(asyncio.run(main())) == ["a", "b"]


def test_max_delay_caps_a_continuous_writer() -> None:
    async def main() -> float:
        fired: list[float] = []
        debouncer = Debouncer(lambda _: fired.append(time.monotonic()), quiet=0.1, max_delay=0.2)
        start = time.monotonic()
        while not fired and time.monotonic() - start < 2:
            debouncer.poke("a")  # never quiet for 0.1 s
            await asyncio.sleep(0.02)
        debouncer.cancel()
        assert fired, "never fired"
        return fired[0] - start

    assert 0.15 < asyncio.run(main()) < 1.0


def test_cancel_drops_pending() -> None:
    async def main() -> list[str]:
        fired: list[str] = []
        debouncer = Debouncer(fired.append, quiet=0.01, max_delay=0.01)
        debouncer.poke("a")
        debouncer.cancel()
        # "b" is due after "a" would have been: once "b" fired, a pending "a" would have too.
        debouncer.poke("b")
        deadline = time.monotonic() + 2
        while not fired and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return fired

    assert asyncio.run(main()) == ["b"]


def test_events_map_to_function_names_and_overflow_rescans(tmp_path: Path) -> None:
    queue_limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    (tmp_path / "fn" / "lib").mkdir(parents=True)

    async def main() -> tuple[list[str], int]:
        changed: list[str] = []
        overflows: list[None] = []
        watcher = Watcher(tmp_path, changed.append, lambda: overflows.append(None))
        watcher.start()
        try:
            (tmp_path / "fn" / "lib" / "m.py").write_text("x")
            (tmp_path / "fn" / ".m.py.swp").write_text("ignored: hidden")
            (tmp_path / ".upload-x").mkdir()
            deadline = time.monotonic() + 5
            while not changed and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            # Without yielding to the loop, queue more events than the kernel keeps.
            for i in range(queue_limit + 10):
                (tmp_path / "fn" / f"f{i % 2}").touch()
            while not overflows and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        finally:
            watcher.stop()
        return changed, len(overflows)

    changed, overflows = asyncio.run(main())
    assert set(changed) == {"fn"} and overflows == 1
