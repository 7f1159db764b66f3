"""PNG plots of traces and replays (matplotlib's Agg canvas, no display needed).

Figures are built on ``matplotlib.figure.Figure`` directly so that importing
this module never changes the global matplotlib backend.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Mapping, Sequence

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | os.PathLike[str]) -> str:
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(os.fspath(path), dpi=100)
    return os.fspath(path)


def _bucket(series: Sequence[int], width: int) -> list[float]:
    return [sum(series[i : i + width]) / width for i in range(0, len(series), width)]


def rate_plot(
    series: Sequence[int],
    path: str | os.PathLike[str],
    *,
    start: float | None = None,
    title: str = "Query rate",
    ylabel: str = "queries/s",
) -> str:
    """Per-second counts over time; long series are averaged into at most ~2000 points."""
    width = max(1, len(series) // 2000)
    ys = _bucket(list(series), width)
    xs = [i * width for i in range(len(ys))]
    fig = Figure(figsize=(10, 4))
    ax = fig.add_subplot()
    ax.plot(xs, ys, linewidth=0.8)
    when = ""
    if start is not None:
        when = " from " + datetime.datetime.fromtimestamp(start, datetime.UTC).strftime(
            "%Y-%m-%d %H:%M:%S UTC"
        )
    ax.set_xlabel(f"seconds{when}" + (f" ({width} s averages)" if width > 1 else ""))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def latency_cdf(
    latencies_ms: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    *,
    title: str = "Latency CDF",
) -> str:
    """One CDF curve per label (e.g. "slices", "reference"), log-scaled latency axis."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for label, values in latencies_ms.items():
        ys = sorted(values)
        if not ys:
            continue
        step = max(1, len(ys) // 5000)
        pts = ys[::step]
        fr = [(i * step + 1) / len(ys) for i in range(len(pts))]
        ax.plot([max(v, 1e-3) for v in pts], fr, label=f"{label} (n={len(ys)})")
    ax.set_xscale("log")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("fraction of answered queries")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    return _save(fig, path)
