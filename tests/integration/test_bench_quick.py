"""``bench.run --quick`` produces every figure and ratio, the chart, and the docs table.

It asserts shapes and sanity, never absolute speeds: these machines are noisy.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
SYSTEMS = ["engine_http", "engine_invoke", "floor", "sanic", "functions_framework", "fork"]
HANDLERS = ["hello", "primes"]
HTTP_FIGURES = ["c1.p50_ms", "c1.p99_ms", "c32.rps", "c32.p99_ms", "c1.steal_ms"]
OTHER_FIGURES = [
    "interpreter.python3_c_pass_ms", "interpreter.python3_I_S_c_pass_ms",
    "engine.cold_start.code_dir_ms", "engine.cold_start.pool_ms",
    "engine.cold_start.empty_pool_ms", "engine.deploy_to_serving_ms",
    "engine.memory.idle_pss_mib", "engine.memory.sandbox_pss_mib",
    "engine.memory.sandbox_private_mib", "engine.memory.sandboxes_per_gib",
    "engine.async.enqueue_rps"]
ENGINE_RATIOS = ["p50_vs_functions_framework", "p50_vs_sanic", "p99_vs_p50", "c32_rps_vs_sanic",
                 "c32_rps_vs_functions_framework"]
OTHER_RATIOS = ["cold_start.pool_vs_python3", "cold_start.empty_pool_vs_python3",
                "deploy_to_serving_ms", "idle_pss_mib", "sandbox_private_mib",
                "sandboxes_per_gib"]


def _harness_processes() -> set[int]:
    """Processes the harness may start: baseline servers and engines on its tmp dirs."""
    marks = (str(ROOT / "bench" / "servers"), "/tmp/efbench")
    found = set()
    for p in psutil.process_iter(["cmdline"]):
        if any(m in arg for arg in p.info["cmdline"] or [] for m in marks):
            found.add(p.pid)
    return found


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench")
    before = _harness_processes()
    proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert _harness_processes() <= before, "bench left processes behind"
    return out, json.loads((out / "latest.json").read_text())


def _assert_figure(key: str, fig: dict[str, Any]) -> None:
    assert "error" not in fig, f"{key}: {fig.get('error')}"
    assert fig["runs"], key
    # Time stolen by a hypervisor is 0 on bare metal and in quiet spells; every other figure
    # is a duration, a rate or a size.
    low = 0 if key.endswith(".steal_ms") else 1e-9
    assert low <= fig["min"] <= fig["median"] <= fig["max"], f"{key}: {fig}"
    assert isinstance(fig["unit"], str) and fig["unit"], key


def test_every_figure_is_measured(quick: tuple[Path, dict[str, Any]]) -> None:
    _, result = quick
    keys = [f"{s}.{h}.{f}" for s in SYSTEMS for h in HANDLERS for f in HTTP_FIGURES]
    for key in keys + OTHER_FIGURES:
        assert key in result["figures"], f"missing figure {key}"
        _assert_figure(key, result["figures"][key])
    assert result["mode"] == "quick"


def test_every_ratio_has_a_value_and_a_verdict(quick: tuple[Path, dict[str, Any]]) -> None:
    _, result = quick
    names = [f"{e}.{h}.{r}" for e in SYSTEMS[:2] for h in HANDLERS for r in ENGINE_RATIOS]
    for name in names + OTHER_RATIOS:
        ratio = result["ratios"][name]
        assert isinstance(ratio["value"], float) and ratio["value"] > 0, (name, ratio)
        assert isinstance(ratio["met"], bool), (name, ratio)
        assert ratio["target"].split()[0] in ("<=", ">="), (name, ratio)
    # The machine's own tail, and the engine's against it: figures without a target.
    untargeted = [f"floor.{h}.p99_vs_p50" for h in HANDLERS]
    untargeted += [f"{e}.{h}.p99_vs_floor_p99" for e in SYSTEMS[:2] for h in HANDLERS]
    for name in untargeted:
        ratio = result["ratios"][name]
        assert isinstance(ratio["value"], float) and ratio["value"] > 0, (name, ratio)
        assert ratio["target"] is None and ratio["met"] is None, (name, ratio)


def test_machine_facts_and_engine_processes(quick: tuple[Path, dict[str, Any]]) -> None:
    _, result = quick
    machine = result["machine"]
    assert machine["cores"] >= 1 and machine["cpu_model"] and machine["kernel"]
    assert machine["python"].startswith("3.") and len(machine["load_average_at_start"]) == 3
    switch = machine["switch_round_trip_us"]
    assert 0 < switch["start"] < 10_000 and 0 < switch["end"] < 10_000, switch
    names = " ".join(p["name"] for p in result["engine_idle_processes"])
    assert "up" in names and all(p["pss_mib"] > 0 for p in result["engine_idle_processes"])


def test_the_measured_sandboxes_kept_their_isolation(quick: tuple[Path, dict[str, Any]]) -> None:
    _, result = quick
    iso = result["isolation"]
    assert "error" not in iso, iso
    labels = {sb["label"].split("@")[0] for sb in iso["sandboxes"]}
    assert labels == set(HANDLERS), iso
    for sb in iso["sandboxes"]:
        assert all(sb["checks"].values()), sb
    assert iso["intact"] is True
    verdict = result["ratios"]["isolation.measured_sandboxes_intact"]
    assert verdict["met"] is True and verdict["value"] == len(iso["sandboxes"]), verdict


def test_chart_is_a_png(quick: tuple[Path, dict[str, Any]]) -> None:
    out, _ = quick
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_docs_table_is_rendered_from_the_results(quick: tuple[Path, dict[str, Any]],
                                                 tmp_path: Path) -> None:
    out, result = quick
    doc = tmp_path / "performance.md"
    shutil.copy(ROOT / "docs" / "performance.md", doc)
    subprocess.run([sys.executable, "-m", "bench.run", "--write-docs", "--out", str(out),
                    "--docs", str(doc)], cwd=ROOT, check=True, capture_output=True, timeout=60)
    text = doc.read_text()
    section = text.split("<!-- bench:begin -->")[1].split("<!-- bench:end -->")[0]
    sanic_p50 = result["figures"]["sanic.hello.c1.p50_ms"]["median"]
    assert f"| sanic | hello | {sanic_p50:g} (" in section
    assert "| cold_start.pool_vs_python3 |" in section
    assert "| host steal ms (c=1) |" in section
    floor = [result["figures"][f"floor.hello.{k}"] for k in ("c1.p50_ms", "c1.p99_ms",
                                                              "c1.steal_ms")]
    row = next(line for line in section.splitlines() if line.startswith("| floor | hello |"))
    assert row.split(" | ")[2:5] == [f"{f['median']:g} ({f['min']:g}–{f['max']:g})"
                                     for f in floor], row
    assert text.startswith("# Performance")  # the hand-written part is kept
