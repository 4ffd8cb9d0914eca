"""Figures written by the trainer, the optimiser and the benchmarks (matplotlib, Agg backend)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from fastnst.images import atomic_write_bytes


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def loss_curves(rows: Sequence[Mapping], path: str | Path, *, x: str = "step") -> Path:
    """Log-scale curves of every loss column in `rows` (dicts with `x` and loss values)."""
    plt = _figure()
    skip = {x, "images_per_s", "bad_files"}
    keys = [k for k in rows[0] if k not in skip] if rows else []
    fig, ax = plt.subplots(figsize=(6, 3.5))
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
