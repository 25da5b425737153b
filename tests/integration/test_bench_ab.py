"""``bench.ab``: per-component CPU per warm call of engine trees, in alternating rounds.

Asserts that every run is measured and attributed to the components on its path, never speeds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _engines() -> set[int]:
    return {p.pid for p in psutil.process_iter(["cmdline"])
            if any("/tmp/efbench" in arg for arg in p.info["cmdline"] or [])}


def _ab(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench.ab", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.root
def test_every_run_is_measured_and_attributed_to_its_path(tmp_path: Path) -> None:
    before = _engines()
    proc = _ab("--rounds", "1", "--seconds", "1", "--out", str(tmp_path),
               f"one={ROOT}", f"two={ROOT}")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert _engines() <= before, "bench.ab left an engine behind"
    result = json.loads((tmp_path / "ab.json").read_text())
    assert result["trees"] == {"one": str(ROOT), "two": str(ROOT)}
    runs = result["runs"]
    assert sorted((r["tree"], r["path"], r["handler"]) for r in runs) == sorted(
        (tree, path, handler) for tree in ("one", "two") for path in ("trigger", "invoke")
        for handler in ("hello", "primes"))
    for r in runs:
        assert r["rps"] > 0, r
        assert r["cpu_us"]["controller"] > 0 and r["cpu_us"]["runners"] > 0, r
        if r["path"] == "trigger":
            assert r["cpu_us"]["httptrigger"] > 0, r
        else:  # the trigger serves none of these calls
            assert r["cpu_us"]["httptrigger"] < 1.0, r
    assert "one:" in proc.stdout and "two:" in proc.stdout  # the summary names both trees


def test_a_tree_that_is_no_checkout_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = _ab("--out", str(out), f"a={tmp_path}", timeout=60)
    assert proc.returncode == 2
    assert "expected NAME=TREE" in proc.stderr
    assert not out.exists()
