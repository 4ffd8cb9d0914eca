"""Inference on images of any size within a memory budget: the network run stage by stage, exactly.

A stage ends at every layer that needs whole-image statistics (instance norm), at the input of
every residual block after the first (the residual stream, so that no stage re-reads all earlier
blocks) and at the output. Stage k computes the input of layer k over the whole (padded) image,
window by window, from the buffered layers it reads (found from the traced computation, not from a
description of the architecture) and, for the first stage, the photo. Each window keeps
only its core; the halo each stage needs is measured from the network (`halo`: how far a change of
one input pixel moves that stage's output). Outputs go into a buffer per norm layer, in RAM while
the budget allows and otherwise in an unlinked temporary file (gone when closed, after Ctrl-C, even
after kill -9); a buffer is freed after the last stage that reads it.

Stage k accumulates layer k's statistics while it writes its buffer, per window over the part of
the activation the window owns (the regions partition the layer, its padding included). Per window
the device returns the count, mean and centred sum of squares in float32; windows are combined in
float64 with Chan et al.'s pairwise update, so the variance never subtracts two large sums
(E[x^2] - E[x]^2 would lose digits for channels whose mean is large next to their spread). The
next stage normalises with them as it reads its windows. Batch norm in inference is pointwise, so
a batch-norm network is one stage: the whole network per window, with its full reach, no buffers.

Compute per pixel is the untiled network's plus each stage's small halo; every window of a stage
has one shape (one compilation per stage). docs/tiling.md has the measurements.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from fastnst import envvars, images, nets, trim
from fastnst.buffers import Arena, Buffer, layout, to_device
from fastnst.errors import ConfigError
from fastnst.stages import (
    OUTPUT,
    Layer,
    activation_bytes,
    border,
    halo,
    layers,
    reads,
    run_stage,
    total_stride,
)


def default_budget() -> int:
    """Working-memory budget in bytes: half the accelerator's memory, or a quarter of the RAM
    (at most 1.5 GiB) on the CPU; `$FASTNST_MEMORY_BUDGET_MB` overrides."""
    env = envvars.memory_budget()
    if env:
        return env
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"] * 0.5)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        ram = 8 * 2**30
    return int(min(ram / 4, 1.5 * 2**30))


def fits(net: nets.TransformNet, h: int, w: int, budget: int, batch: int = 1) -> bool:
    """Whether `batch` images of h x w can run whole within `budget` bytes."""
    mult = 2 ** len(net.down)
    return batch * activation_bytes(net, h + (-h % mult), w + (-w % mult)) <= budget


# --------------------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Stage:
    """How stage k runs: what it reads, its halo, and its windows (core box, window box) in input
    pixels of the stride-padded image; all windows of a stage share one shape."""

    layer: Layer
    reads_image: bool
    reads: tuple[str, ...]
    halo: int
    tiles: tuple[tuple[tuple[int, int, int, int], tuple[int, int, int, int]], ...]
    trim: trim.Trim | None = None  # a one-stage network's layers cropped per window

    @property
    def window(self) -> tuple[int, int]:
        y0, y1, x0, x1 = self.tiles[0][1]
        return y1 - y0, x1 - x0


def _bytes_per_pixel(net, k: int) -> float:
    """Working bytes of stage k per window pixel when the stage is one conv: what it reads and
    writes (float32) x 3 for XLA's temporaries (the conv's packed input, the upsampling's phase
    stacks)."""
    ls = {lay.name: lay for lay in layers(net)}
    reads_image, names = reads(net, k)
    out = layers(net)[k]
    floats = 3 * reads_image + sum(ls[n].channels / ls[n].stride ** 2 for n in names)
    return 12 * (floats + out.channels / out.stride ** 2)


def _window_bytes(net, k: int, h: int, w: int) -> int:
    """Working bytes of stage k on an h x w window; the whole network's activations when the
    network is one stage (no instance norm)."""
    if len(layers(net)) == 1:
        return activation_bytes(net, h, w)
    return int(_bytes_per_pixel(net, k) * h * w)


def _cores(fit, hp: int, wp: int, h: int, least: int, mult: int) -> list:
    """The largest full-width band core and the largest square core whose windows fit ([None] if
    neither does)."""
    out = []
    if fit(max(least, 2 * h + 8 * mult), wp):
        rows = 8 * mult
        while rows < hp and fit(rows + mult + 2 * h, wp):
            rows += mult
        out.append((rows, wp))
    side = 8 * mult
    if fit(max(side + 2 * h, least), max(side + 2 * h, least)):
        while side < max(hp, wp) and fit(side + mult + 2 * h, side + mult + 2 * h):
            side += mult
        out.append((side, side))
    return out or [None]


def _core_and_window(hp: int, wp: int, core, h: int, least: int, mult: int):
    """Balanced core sizes and the window shape that holds a core and its halo."""
    core = (_balanced(hp, min(core[0], hp), mult), _balanced(wp, min(core[1], wp), mult))
    return core, (min(hp, max(core[0] + 2 * h, least)), min(wp, max(core[1] + 2 * h, least)))


def _cost(hp: int, wp: int, core, *, h: int, least: int, mult: int) -> float:
    """Pixels computed per output pixel with these cores, x 1.03 for cores narrower than the image
    (their reads are row by row and their windows are copied)."""
    if core is None:
        return math.inf
    (ch, cw), (wh, ww) = _core_and_window(hp, wp, core, h, least, mult)
    return (-(-hp // ch) * wh) * (-(-wp // cw) * ww) / (hp * wp) * (1.0 if cw == wp else 1.03)


def _fits(net, k: int, share: int, h: int, w: int) -> bool:
    return _window_bytes(net, k, h, w) <= share


def _balanced(n_px: int, core: int, mult: int) -> int:
    """The core size that splits n_px into the fewest cores of at most `core` px, evenly (multiples
    of `mult`), so that no thin last row or column of windows is wasted."""
    n = -(-n_px // core)
    return -(-n_px // (n * mult)) * mult


def _tiles(hp: int, wp: int, core: tuple[int, int], window: tuple[int, int], mult: int) -> tuple:
    ch, cw = core
    wh, ww = window
    mh, mw = (wh - ch) // 2 // mult * mult, (ww - cw) // 2 // mult * mult
    out = []
    for y0 in range(0, hp, ch):
        for x0 in range(0, wp, cw):
            y1, x1 = min(y0 + ch, hp), min(x0 + cw, wp)
            wy0, wx0 = min(max(0, y0 - mh), hp - wh), min(max(0, x0 - mw), wp - ww)
            out.append(((y0, y1, x0, x1), (wy0, wy0 + wh, wx0, wx0 + ww)))
    return tuple(out)


def plan(net: nets.TransformNet, hp: int, wp: int, budget: int, tile: int | None = None) -> list[Stage]:
    """The stages for an hp x wp image (multiples of the total stride): windows as large as the
    budget allows (half of it when buffers take the other half; full-width bands when they fit),
    or cores of at most `tile` px.

    Raises:
      ConfigError: the budget is too small for the smallest window of some stage.
    """
    mult, ls = total_stride(net), layers(net)
    pad_px = border(net)  # windows at the border hold the network's padding
    stages = []
    share = budget if len(ls) == 1 else budget // 2  # the other half holds buffers
    for k, lay in enumerate(ls):
        h = halo(net, k)
        least = -(-int(pad_px + 2 * h + mult) // mult) * mult
        fit = functools.partial(_fits, net, k, share)
        if tile:
            core = (-(-tile // mult) * mult,) * 2
        else:  # full-width bands (contiguous reads) unless squares compute 3% fewer halo pixels
            core = min(_cores(fit, hp, wp, h, least, mult),
                       key=functools.partial(_cost, hp, wp, h=h, least=least, mult=mult))
            if core is None:
                side = max(8 * mult + 2 * h, least)
                need = _window_bytes(net, k, side, side) * budget / share / 2**20
                raise ConfigError(f"a memory budget of {budget / 2**20:.0f} MB is too small for one tile "
                                  f"(needs about {need:.0f} MB); raise the budget or use --max-size")
        core, window = _core_and_window(hp, wp, core, h, least, mult)
        tiles = _tiles(hp, wp, core, window, mult)
        crops = trim.plan(net, tiles, hp, wp) if len(ls) == 1 else None
        stages.append(Stage(lay, *reads(net, k), h, tiles, crops))
    return stages


def _combine(acc, n, mean, m2):
    """Chan et al.'s pairwise update of (count, mean, centred sum of squares), in float64."""
    n, mean, m2 = float(n), np.asarray(mean, np.float64), np.asarray(m2, np.float64)
    if acc is None:
        return n, mean, m2
    na, ma, m2a = acc
    total = na + n
    d = mean - ma
    return total, ma + d * (n / total), m2a + m2 + d * d * (na * n / total)


def _window_inputs(st: Stage, win, image, buffers: dict, by_name: dict, scratch: dict):
    """Window `win`'s inputs on the device: the buffered layers it reads (file buffers read into
    `scratch`, reused by later windows) and, for the first stage, the photo."""
    wy0, wy1, wx0, wx1 = win
    ins = {}
    for n in st.reads:
        src = by_name[n]
        r0, c0 = src.origin(wy0), src.origin(wx0)
        a = buffers[n].read(r0, r0 + src.size(wy1 - wy0), c0, c0 + src.size(wx1 - wx0), out=scratch.get(n))
        if buffers[n].array is None:  # read from the file into memory the next window reuses
            scratch[n] = a
        ins[n] = to_device(a[None], scratch, n + "/aligned")
    img = to_device(image[None, wy0:wy1, wx0:wx1], scratch, "image") if st.reads_image else None
    return ins, img


def _stage_windows(net, variables, k: int, st: Stage, image, buffers: dict, by_name: dict, stats: dict,
                   padded: tuple[int, int], out_dtype) -> tuple | None:
    """Runs stage k's windows into its buffer; returns the combined statistics (None without).

    Pipelined, since XLA runs a dispatched program on its own threads: window i's inputs are read
    while window i-1 computes, and window i-1's output is written while window i computes, so
    waiting on the disk (reads, and writes throttled by the kernel's write-back) overlaps the
    compute instead of adding to it. One program runs at a time (window i is dispatched after
    window i-1's result is back), and two sets of input memory alternate, because a window's
    inputs are used in place until its result is read.
    """
    lay, dest = st.layer, buffers[st.layer.name]
    st_stats = {n: tuple(jnp.asarray(a) for a in stats[n]) for n in st.reads if n in stats}
    scratch: tuple[dict, dict] = ({}, {})
    acc, pending = None, None  # pending: window i-1's (result on the device, statistics, window, owned)

    def fetch(y, s, *where):  # a window's result back on the host (waits for it)
        return np.asarray(y), None if s is None else jax.device_get(s), *where

    def write(acc, y, s, win, owned, at):  # window `win`'s core (at `at` in y) into the buffer
        r0, _, c0, _ = owned
        block = y[0, at[0]:at[1], at[2]:at[3]]
        if lay.name == OUTPUT and out_dtype == np.uint8:
            block = images.to_uint8(block)
        dest.write(lay.origin(win[0]) + r0, lay.origin(win[2]) + c0, block)
        return acc if s is None else _combine(acc, *s)

    for i, (core, win) in enumerate(st.tiles):
        ins, img = _window_inputs(st, win, image, buffers, by_name, scratch[i % 2])
        done = fetch(*pending) if pending is not None else None  # window i-1's result
        owned = at = lay.owned(core, win, *padded)
        crops = ()
        if st.trim is not None:  # the trimmed output starts `shift` rows/cols later
            at = tuple(int(a) for a in np.subtract(owned, np.repeat(st.trim.shift[i], 2)))
            crops = (st.trim.sizes, jnp.asarray(st.trim.offsets[i]))
        pending = (*run_stage(net, k, st.window, variables, img, ins, st_stats, jnp.asarray(at), *crops),
                   win, owned, at)
        if done is not None:
            acc = write(acc, *done)
    return write(acc, *fetch(*pending))


# --------------------------------------------------------------------------- inference


def _where(stages: list[Stage], hp: int, wp: int, ram: int, last_read: dict) -> tuple[set, int, list]:
    """Which buffers stay in RAM (in stage order, while `ram` bytes allow; freed after their last
    reader), the peak bytes they hold, and the rest as (name, bytes, written, last read) for
    `buffers.layout`."""
    in_ram, files, held, peak = set(), [], {}, 0
    for k, st in enumerate(stages[:-1]):
        n = 4 * st.layer.size(hp) * st.layer.size(wp) * st.layer.channels
        if n <= ram - sum(held.values()):
            in_ram.add(st.layer.name)
            held[st.layer.name] = n
            peak = max(peak, sum(held.values()))
        else:
            files.append((st.layer.name, n, k, last_read[st.layer.name]))
        held = {name: b for name, b in held.items() if last_read[name] > k}
    return in_ram, peak, files


# (Long: the buffers' lifetimes -- opened, read by later stages, freed after their last reader,
# closed on every way out -- are visible in one function; the plan and the windows are above.)
def apply_tiled(net: nets.TransformNet, variables, image: np.ndarray, *, budget: int | None = None,
                tile: int | None = None, ram: int | None = None, info: dict | None = None,
                out_dtype=np.float32) -> np.ndarray:
    """Runs `net` on one HxWx3 image (float32, or uint8 as decoded) stage by stage within `budget`
    bytes (default `default_budget()`); returns the (scale*H)x(scale*W)x3 float32 output, equal to
    the whole-image output up to float32 rounding. `out_dtype=np.uint8`: the output rounded as
    `images.to_uint8` rounds it, window by window (a quarter of the memory; the same bytes as
    rounding the float32 output afterwards).

    `tile` caps every stage's window core (px); `ram` caps the bytes of buffers kept in RAM (default
    half the budget less the output's size; the rest go to temporary files). `info`, when given,
    receives the number of stages and windows and the peak bytes of buffers in RAM and on disk.
    """
    mult = total_stride(net)
    budget = budget or default_budget()
    h, w = image.shape[:2]
    hp, wp = h + (-h % mult), w + (-w % mult)
    image = np.asarray(image)  # kept in its own dtype (a 100 MP photo is 1.2 GB as float32)
    if (hp, wp) != (h, w):  # the network's own reflection up to a multiple of its stride
        image = np.pad(image, ((0, hp - h), (0, wp - w), (0, 0)), mode="reflect")
    stages = plan(net, hp, wp, budget, tile)
    by_name = {st.layer.name: st.layer for st in stages}
    last_read = {name: k for k, st in enumerate(stages) for name in st.reads}
    f = 2 ** len(net.up) // mult
    out_dtype = np.dtype(out_dtype)
    if out_dtype not in (np.float32, np.uint8):
        raise ValueError(f"out_dtype must be float32 or uint8, got {out_dtype}")
    # The output (returned, so in RAM) counts against the buffers' share of the budget.
    ram_left = budget // 2 - hp * f * wp * f * 3 * out_dtype.itemsize if ram is None else ram
    in_ram, peak_ram, files = _where(stages, hp, wp, ram_left, last_read)
    buffers: dict[str, Buffer] = {}
    stats: dict[str, tuple] = {}
    arena = Arena(*layout(files)) if files else None  # one file for the buffers that are not in RAM
    try:
        for k, st in enumerate(stages):
            lay = st.layer
            shape = (lay.size(hp), lay.size(wp), lay.channels)
            buffers[lay.name] = (Buffer(shape, dtype=out_dtype) if lay.name == OUTPUT
                                 else Buffer(shape, None if lay.name in in_ram else arena, lay.name))
            acc = _stage_windows(net, variables, k, st, image, buffers, by_name, stats, (hp, wp), out_dtype)
            if acc is not None:
                n, mean, m2 = acc
                stats[lay.name] = (mean.astype(np.float32), (m2 / n).astype(np.float32))
            for n in [n for n, last in last_read.items() if last == k]:
                buffers.pop(n).close()
        if info is not None:
            info.update(stages=len(stages), windows=sum(len(st.tiles) for st in stages),
                        buffers_ram_mb=peak_ram / 2**20, buffers_disk_mb=(arena.span if arena else 0) / 2**20)
        return buffers[OUTPUT].array[: h * f, : w * f]
    finally:  # (RAM buffers go with their last reference)
        if arena is not None:
            arena.close()
