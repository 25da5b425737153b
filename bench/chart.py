"""The PNG chart: latency percentiles (c=1) and throughput (c=32) per system and handler."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from bench.measure import HANDLERS  # noqa: E402
from bench.report import SYSTEMS  # noqa: E402


def _bars(ax: Any, figs: dict[str, Any], handler: str, metrics: list[str], title: str) -> None:
    width = 0.8 / len(metrics)
    for i, metric in enumerate(metrics):
        figures = [figs.get(f"{s}.{handler}.{metric}", {}) for s in SYSTEMS]
        medians = [f.get("median", 0.0) for f in figures]
        # Error bars span the min..max of the runs: a noisy figure shows as a long bar.
        low = [m - f.get("min", m) for m, f in zip(medians, figures, strict=True)]
        high = [f.get("max", m) - m for m, f in zip(medians, figures, strict=True)]
        xs = [x + i * width for x in range(len(SYSTEMS))]
        ax.bar(xs, medians, width, yerr=[low, high], capsize=3, label=metric)
    ax.set_xticks([x + width * (len(metrics) - 1) / 2 for x in range(len(SYSTEMS))])
    ax.set_xticklabels(SYSTEMS, rotation=20, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def write(path: Path, figs: dict[str, Any]) -> None:
    """Bars at the median, whiskers at min/max; a failed figure is drawn as 0."""
    fig, axes = plt.subplots(len(HANDLERS), 2, figsize=(11, 4 * len(HANDLERS)), squeeze=False)
    for row, handler in zip(axes, HANDLERS, strict=True):
        _bars(row[0], figs, handler, ["c1.p50_ms", "c1.p99_ms", "c32.p99_ms"],
              f"{handler}: latency (ms, lower is better)")
        if any(f.get("median") for f in figs.values()):
            row[0].set_yscale("log")  # fork-per-request is ~100x slower than the rest
        _bars(row[1], figs, handler, ["c32.rps"], f"{handler}: throughput at c=32 (req/s)")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
