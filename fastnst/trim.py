"""Trimmed windows for a network that runs as one stage (no instance norm: the whole network per
window): every layer computes only the rows and columns that the window's kept output still
depends on, instead of the whole window.

A window carries the whole network's reach (56 px for the paper's style network) around its core,
but how far a change can still travel shrinks layer by layer: the first layers need it all, the
last 9x9 conv only 4 px. So before each of the network's top-level layers (its direct submodules:
convs, residual blocks, up-sampling layers) the activation is cropped to the core plus what the
rest of the network can reach. Like the stages, this comes from the network, not from a
description of it: the grids of the top-level layers from the two shape-only probes
(`stages.probe_shapes`), and each remaining reach as an upper bound, the sum over every later
layer that owns a kernel of (kernel size // 2) x its input stride. Rows beyond the crop are then
missing or, where the next conv pads, wrong; both lie beyond the remaining reach, so the kept
output is exact.

Every window of a stage keeps one compiled shape: the crops' sizes are static (the largest any
window needs) and their offsets are arguments, one per layer and axis. Where a core lies at the
image's border the crop keeps the layer's edge (the network's own padding there is part of the
result), and the crop slides inwards instead. Offsets move every grid by whole multiples of the
largest stride, so the down- and up-sampling phases stay those of the untrimmed window.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np

from fastnst import nets, stages


@dataclasses.dataclass(frozen=True)
class Point:
    """The input of one top-level layer: its grid (input pixels per layer pixel, the network's
    padding in layer pixels on each side) and how far a change there can move the output (input
    pixels, an upper bound)."""

    name: str
    stride: float
    pad: float
    reach: float

    def extent(self, n: int) -> tuple[float, float]:
        """The layer's rows for an n-row window, in input pixels relative to the window's start."""
        return -self.pad * self.stride, n + self.pad * self.stride


@functools.lru_cache(maxsize=32)
def points(net: nets.TransformNet) -> tuple[Point, ...]:
    """The top-level layers that contain a kernel, in call order, and their remaining reach."""
    seen, _ = stages.probe_shapes(net)
    params = stages.abstract_variables(net)["params"]
    calls = []  # (path, stride, pad, own kernel reach in input px)
    for name, probes in seen.items():
        if len(probes) < 2:
            continue
        stride, pad = stages.geometry(net, (probes[0][0][1], probes[1][0][1]))
        reach = 0.0
        if probes[0][2]:
            node = params
            for part in name.split("/"):
                node = node[part]
            reach = max(node["kernel"].shape[:2]) // 2 * stride
        calls.append((name, stride, pad, reach))
    out = []
    for i, (name, stride, pad, _) in enumerate(calls):
        inside = [c for c in calls[i:] if c[0] == name or c[0].startswith(name + "/")]
        if "/" not in name and any(c[3] for c in inside):
            out.append(Point(name, stride, pad, sum(c[3] for c in calls[i:])))
    return tuple(out)


@dataclasses.dataclass(frozen=True)
class Trim:
    """A stage's crops: `sizes[p]` = (layer name, rows, cols) kept at point p, the same for every window;
    `offsets[t, p]` = (row, col) where window t's crop starts in the layer as it arrives; `shift[t]`
    = (rows, cols) by which window t's output starts later than the untrimmed window's."""

    sizes: tuple[tuple[int, int], ...]
    offsets: np.ndarray
    shift: np.ndarray


def _axis(pts, out_grid, n: int, kept: list[tuple[float, float]]):
    """One axis: the static kept length (input px) at each point, and each window's crop offsets
    (layer px) and output shift (output px), for windows of n px whose kept output spans `kept`
    (input px, window-relative)."""
    unit = max(p.stride for p in pts)  # crops move every grid by whole multiples of the largest stride
    need = []  # per point: each window's needed [start, end) in input px
    for p in pts:
        lo, hi = p.extent(n)
        need.append([(lo + unit * max(0, math.floor((a - p.reach - lo) / unit)),
                      hi - unit * max(0, math.floor((hi - b - p.reach) / unit))) for a, b in kept])
    lengths, offsets = [], []
    cur = [pts[0].extent(n)] * len(kept)  # each window's layer as it arrives at the point, input px
    prev = pts[0]
    for p, want in zip(pts, need, strict=True):
        grow = p.pad * p.stride - prev.pad * prev.stride  # what the layers in between pad or cut
        cur = [(s - grow, e + grow) for s, e in cur]
        k = min(cur[0][1] - cur[0][0], max(e - s for s, e in want))
        starts = [min(s, ce - k) for (s, _), (_, ce) in zip(want, cur, strict=True)]
        for (s, e), (cs, ce), a in zip(want, cur, starts, strict=True):
            if not (cs <= a <= s and e <= a + k <= ce):
                raise AssertionError(f"trim at {p.name}: kept [{a}, {a + k}) outside [{cs}, {ce}) "
                                     f"or not covering [{s}, {e})")
        offsets.append([round((a - cs) / p.stride) for a, (cs, _) in zip(starts, cur, strict=True)])
        lengths.append(round(k / p.stride))
        cur, prev = [(a, a + k) for a in starts], p
    o_stride, o_pad = out_grid  # the output starts where the last kept layer leads, less its padding
    grow = o_pad * o_stride - prev.pad * prev.stride
    shifts = [round((s - grow + o_pad * o_stride) / o_stride) for s, _ in cur]
    return lengths, offsets, shifts


def plan(net: nets.TransformNet, tiles, hp: int, wp: int) -> Trim | None:
    """The crops for a one-stage network's windows `tiles` [(core box, window box)] (all of one
    shape) on an hp x wp image; None when the network has fewer than two top-level layers with
    kernels (nothing to trim)."""
    pts = points(net)
    if len(pts) < 2:
        return None
    out = stages.layers(net)[-1]
    wy0, wy1, wx0, wx1 = tiles[0][1]
    window = (wy1 - wy0, wx1 - wx0)
    # each window's kept output (the part it owns) in window-relative input pixels
    kept = [(np.subtract(out.owned(core, win, hp, wp), out.pad) * out.stride) for core, win in tiles]
    rows = _axis(pts, (out.stride, out.pad), window[0], [(k[0], k[1]) for k in kept])
    cols = _axis(pts, (out.stride, out.pad), window[1], [(k[2], k[3]) for k in kept])
    offsets = np.stack([np.asarray(rows[1], np.int32).T, np.asarray(cols[1], np.int32).T], -1)
    shift = np.stack([rows[2], cols[2]], -1).astype(np.int64)
    return Trim(tuple(zip([p.name for p in pts], rows[0], cols[0], strict=True)), offsets, shift)
