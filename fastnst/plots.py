"""Figures written by the trainer, the optimiser and the benchmarks.

Figures are built with matplotlib's object API (`Figure` + the Agg canvas), never through pyplot,
so writing a file does not change the process's backend or close a notebook's figures.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from fastnst.images import atomic_write_bytes


def _figure(figsize=(6, 3.5)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())


def loss_curves(rows: Sequence[Mapping], path: str | Path, *, x: str = "step") -> Path:
    """Log-scale curves of every loss column in `rows` (dicts with `x` and loss values)."""
    skip = {x, "images_per_s", "bad_files"}
    keys = [k for k in rows[0] if k not in skip] if rows else []
    fig, ax = _figure()
    for k in keys:
        pts = [(r[x], r[k]) for r in rows if k in r and r[k] > 0]
        if pts:
            ax.plot(*zip(*pts, strict=True), label=k)
    ax.set_yscale("log")
    ax.set_xlabel(x)
    ax.set_ylabel("weighted loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, Path(path))


def fig5_curves(rows: Sequence[Mapping], path: str | Path, *, title: str = "") -> Path:
    """Paper Fig. 5: L-BFGS objective per iteration (mean over photos, min-max band) against the
    network's mean objective (a horizontal line)."""
    import numpy as np

    curves = np.asarray([r["lbfgs"] for r in rows])
    it = np.arange(curves.shape[1])
    fig, ax = _figure()
    ax.plot(it, curves.mean(0), label=f"projected L-BFGS from noise (mean of {len(rows)})")
    ax.fill_between(it, curves.min(0), curves.max(0), alpha=0.2)
    network = np.mean([r["network"] for r in rows])
    ax.axhline(network, color="C3", ls="--", label="feed-forward network (mean)")
    ax.set_yscale("log")
    ax.set_xlabel("L-BFGS iteration")
    ax.set_ylabel("style transfer objective")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, Path(path))


def curves(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | Path, *,
           xlabel: str, ylabel: str, title: str = "", hline: tuple[str, float] | None = None) -> Path:
    """Named (x, y) curves on a log y axis, optionally with a labelled horizontal line."""
    fig, ax = _figure()
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, label=name)
    if hline:
        ax.axhline(hline[1], color="k", ls=":", label=hline[0])
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, Path(path))
