"""Inference on images of any size within a memory budget: the network run stage by stage, exactly.

A stage ends at every layer that needs whole-image statistics (instance norm) and at the output.
Stage k computes the input of norm layer k over the whole (padded) image, window by window, from
the buffered inputs of the earlier norm layers it reads (found from the traced computation, not
from a description of the architecture) and, for the first stage, the photo. Each window keeps
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
import tempfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from fastnst import nets
from fastnst.errors import ConfigError


def activation_bytes(net: nets.TransformNet, h: int, w: int) -> int:
    """Bytes of the float32 activations of one h x w input run whole (h, w multiples of the total
    stride): the input of every layer that owns a kernel (convolutions of every kind) plus the
    output, each sized from the network itself (two shape-only probes, `_probe_shapes`), so an
    architecture option tiling has never seen is counted like the rest."""
    seen, outs = _probe_shapes(net)
    grids = [(calls[0][0], calls[1][0]) for calls in seen.values() if calls[0][2]] + [outs]
    total = 0
    for s1, s2 in grids:
        stride, pad = _geometry(net, (s1[1], s2[1]))
        total += s1[3] * round(h / stride + 2 * pad) * round(w / stride + 2 * pad)
    return 4 * total


def env_budget() -> int | None:
    """`$FASTNST_MEMORY_BUDGET_MB` in bytes (None when unset); ConfigError unless a positive number."""
    text = os.environ.get("FASTNST_MEMORY_BUDGET_MB", "").strip()
    if not text:
        return None
    try:
        mb = float(text)
    except ValueError:
        mb = float("nan")
    if not math.isfinite(mb) or mb <= 0:
        raise ConfigError(f"FASTNST_MEMORY_BUDGET_MB must be a positive number of megabytes, got {text!r}")
    return int(mb * 2**20)


def default_budget() -> int:
    """Working-memory budget in bytes: half the accelerator's memory, or a quarter of the RAM
    (at most 1.5 GiB) on the CPU; `$FASTNST_MEMORY_BUDGET_MB` overrides."""
    env = env_budget()
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


# --------------------------------------------------------------------------- the network's stages

# Stages end where whole-image statistics are needed. Batch norm in inference is pointwise, so a
# batch-norm network is one stage: the whole network per window (no buffers), with its full reach.
_STATS_NORMS = (nn.InstanceNorm,)
OUTPUT = "output"


def _norm_name(context) -> str | None:
    """The path of a normalisation layer with whole-image statistics being called, else None."""
    if isinstance(context.module, _STATS_NORMS) and context.method_name == "__call__":
        return "/".join(context.module.path)
    return None


@dataclasses.dataclass(frozen=True)
class Layer:
    """The grid a stage writes: the input of one norm layer, or the network's output (`OUTPUT`)."""

    name: str
    channels: int
    stride: float  # input pixels per layer pixel (1/scale after SR upsampling)
    pad: int  # layer rows = input rows / stride + 2 pad (the network's own padding, shrunk by VALID convs)
    stats: bool  # instance norm: normalised with whole-image statistics

    def origin(self, y: int) -> int:
        """The whole-image layer row of row 0 of a window that starts at input row `y`."""
        return round(y / self.stride)

    def size(self, n: int) -> int:
        """Layer rows of an n-row input (or window)."""
        return round(n / self.stride) + 2 * self.pad


def _mult(net: nets.TransformNet) -> int:
    return 2 ** len(net.down)


@functools.lru_cache(maxsize=32)
def _abstract_variables(net: nets.TransformNet):
    return jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 8 * _mult(net), 8 * _mult(net), 3)))


@functools.lru_cache(maxsize=8)
def _probe_variables(net: nets.TransformNet):
    """Weights of the network's shape for measuring halos, LeCun-normal kernels as at
    initialisation, so that activations stay near unit scale and the output's tanh does not
    saturate (a saturated pixel would hide how far a change reaches). Drawn with NumPy: compiling
    the network's initialisers takes seconds."""
    rng = np.random.default_rng(0)

    def draw(path, leaf):
        name = getattr(path[-1], "key", None)
        if name == "kernel":
            return (rng.normal(size=leaf.shape) / math.sqrt(math.prod(leaf.shape[:-1]))).astype(np.float32)
        return np.full(leaf.shape, 1.0 if name in ("scale", "var") else 0.0, np.float32)

    return jax.tree_util.tree_map_with_path(draw, _abstract_variables(net))


_PROBE_SIZES = (16, 32)  # x the total stride: two input sizes whose shapes give strides and paddings


@functools.lru_cache(maxsize=32)
def _probe_shapes(net: nets.TransformNet) -> tuple[dict, tuple]:
    """For each of two input sizes, the input shape of every module call (path -> [(shape, is an
    instance norm, owns a kernel)]) and the output shape: two shape-only runs (`jax.eval_shape`)
    of the network."""
    seen: dict[str, list] = {}

    def interceptor(next_fun, args, kwargs, context):
        if args and getattr(args[0], "ndim", 0) == 4 and context.method_name == "__call__":
            m = context.module
            seen.setdefault("/".join(m.path), []).append(
                (args[0].shape, isinstance(m, _STATS_NORMS), m.has_variable("params", "kernel")))
        return next_fun(*args, **kwargs)

    variables, outs = _abstract_variables(net), []
    for n in _PROBE_SIZES:
        with nn.intercept_methods(interceptor):
            outs.append(jax.eval_shape(net.apply, variables,
                                       jax.ShapeDtypeStruct((1, n * _mult(net), n * _mult(net), 3),
                                                            jnp.float32)).shape)
    return seen, tuple(outs)


def _geometry(net, rows: tuple[int, int]) -> tuple[float, float]:
    """(stride, padding) of a grid with `rows` rows for the two probe sizes: grid rows =
    input rows / stride + 2 padding."""
    n1, n2 = (n * _mult(net) for n in _PROBE_SIZES)
    stride = (n2 - n1) / (rows[1] - rows[0])
    return stride, (rows[0] - n1 / stride) / 2


@functools.lru_cache(maxsize=32)
def border(net: nets.TransformNet) -> int:
    """The network's own padding at the image's border, in input pixels (40 for the paper's style
    network): the most by which any layer's input extends past the image."""
    out = 0.0
    for calls in _probe_shapes(net)[0].values():
        rows = tuple(c[0][1] for c in calls[-2:])
        if len(rows) == 2 and rows[0] != rows[1]:
            stride, pad = _geometry(net, rows)
            out = max(out, pad * stride)
    return int(math.ceil(out))


@functools.lru_cache(maxsize=32)
def layers(net: nets.TransformNet) -> tuple[Layer, ...]:
    """The stages' grids in execution order: every instance norm's input, then the output."""
    seen, outs = _probe_shapes(net)
    grids = [(name, calls[0][0], calls[1][0]) for name, calls in seen.items() if calls[0][1]]
    out = []
    for name, s1, s2 in grids + [(OUTPUT, *outs)]:
        stride, pad = _geometry(net, (s1[1], s2[1]))
        if pad != int(pad):
            raise ValueError(f"layer {name}: padding {pad} is not a whole number of pixels")
        out.append(Layer(name, s1[3], stride, int(pad), name != OUTPUT))
    return tuple(out)


class _Reached(Exception):
    """Carries a stage's result out of the network at the norm layer where the stage ends."""

    def __init__(self, value):
        super().__init__()
        self.value = value


def _stage_output(net, k: int, variables, image, inputs: dict, stats: dict):
    """Stage k on one window: the input of norm layer k (the network's output for the last stage).

    Every earlier instance norm returns its buffered input from `inputs`, normalised with the
    whole-image `stats`, so nothing before it is computed (XLA drops the dead code); layers the
    stage does not read return zeros, also dead.
    """
    target = layers(net)[k].name

    def interceptor(next_fun, args, kwargs, context):
        name = _norm_name(context)
        if name is None:
            return next_fun(*args, **kwargs)
        if name == target:
            raise _Reached(args[0])
        if name not in inputs:
            return jnp.zeros_like(args[0])
        a, m, (mean, var) = inputs[name], context.module, stats[name]
        y = (a - mean) * jax.lax.rsqrt(var + m.epsilon)
        return y * m.get_variable("params", "scale") + m.get_variable("params", "bias")

    try:
        with nn.intercept_methods(interceptor):
            return net.apply(variables, image)
    except _Reached as r:
        return r.value


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run_stage(net, k: int, window: tuple[int, int], variables, image, inputs, stats, owned):
    """Stage k on one window of `window` input pixels; with instance norm at its end, also the
    count, mean and centred sum of squares of the output over the owned region
    [row0, row1, col0, col1]."""
    if image is None:
        image = jnp.zeros((1, *window, 3), jnp.float32)
    y = _stage_output(net, k, variables, image, inputs, stats)
    if not layers(net)[k].stats:
        return y, None
    rows = jnp.arange(y.shape[1])[:, None]
    cols = jnp.arange(y.shape[2])[None, :]
    mask = ((rows >= owned[0]) & (rows < owned[1]) & (cols >= owned[2]) & (cols < owned[3]))
    mask = mask.astype(jnp.float32)[None, :, :, None]
    n = jnp.sum(mask)
    mean = jnp.sum(y * mask, (0, 1, 2)) / n
    return y, (n, mean, jnp.sum(jnp.square((y - mean) * mask), (0, 1, 2)))


def _live_inputs(closed) -> list[bool]:
    """Which inputs of a jaxpr its outputs depend on (backward liveness; an equation is kept whole)."""
    jaxpr = closed.jaxpr
    live = {v for v in jaxpr.outvars if not isinstance(v, jcore.Literal)}
    for eqn in reversed(jaxpr.eqns):
        if eqn.effects or any(v in live for v in eqn.outvars):
            live.update(v for v in eqn.invars if not isinstance(v, jcore.Literal))
    return [v in live for v in jaxpr.invars]


@functools.lru_cache(maxsize=128)
def reads(net: nets.TransformNet, k: int) -> tuple[bool, tuple[str, ...]]:
    """What stage k reads: (the photo?, the earlier norm layers whose buffers), from its traced
    computation."""
    ls = layers(net)
    n = 16 * _mult(net)
    f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
    inputs = {lay.name: f32(1, lay.size(n), lay.size(n), lay.channels) for lay in ls[:k]}
    stats = {lay.name: (f32(lay.channels), f32(lay.channels)) for lay in ls[:k] if lay.stats}
    variables = _abstract_variables(net)
    closed = jax.make_jaxpr(lambda v, x, i, s: _stage_output(net, k, v, x, i, s))(
        variables, f32(1, n, n, 3), inputs, stats)
    live = _live_inputs(closed)
    nv = len(jax.tree.leaves(variables))
    names = sorted(inputs)  # the dict's flattening order
    return live[nv], tuple(name for name, used in zip(names, live[nv + 1:], strict=False) if used)


@functools.lru_cache(maxsize=128)
def halo(net: nets.TransformNet, k: int) -> int:
    """How far (input pixels, rounded up to the total stride) a change of what stage k reads at one
    place moves its output: the margin a window needs around the part it keeps. Measured from the
    network, not from a description of its layers: every input of the stage gets a large change at
    the pixel covering one input position (every channel, so that a ReLU cannot hide it), and the
    output rows and columns that change bound the reach."""
    mult, ls = _mult(net), layers(net)
    out = ls[k]
    reads_image, names = reads(net, k)
    variables = _probe_variables(net)
    sources = ([Layer("image", 3, 1.0, 0, False)] if reads_image else []) + [
        lay for lay in ls[:k] if lay.name in names]
    rng = np.random.default_rng(0)
    n = 16 * mult + 2 * -(-border(net) // mult) * mult  # the change outside the network's border padding
    while True:
        y = n // 2  # the changed input position (a multiple of every stride)
        arrays = {s.name: rng.normal(size=(1, s.size(n), s.size(n), s.channels)).astype(np.float32)
                  for s in sources}
        if reads_image:
            arrays["image"] = rng.uniform(0, 255, (1, n, n, 3)).astype(np.float32)
        changed = {}
        for s in sources:
            r = math.floor(y / s.stride) + s.pad
            changed[s.name] = arrays[s.name].copy()
            changed[s.name][:, r, r] += 100.0
        stats = {s.name: (jnp.zeros(s.channels), jnp.ones(s.channels)) for s in sources if s.stats}
        outs = [np.asarray(_run_stage(net, k, (n, n), variables, a.get("image"), {s: a[s] for s in names},
                                      stats, jnp.zeros(4, jnp.int32))[0])
                for a in (arrays, changed)]
        diff = np.abs(outs[1] - outs[0])[0].max(-1) > 0
        lo_in = min(math.floor(y / s.stride) * s.stride for s in sources)
        hi_in = max((math.floor(y / s.stride) + 1) * s.stride for s in sources)
        reach, clipped = 0.0, False
        for axis in (0, 1):
            hit = np.flatnonzero(diff.any(axis=1 - axis))
            clipped |= hit.size > 0 and (hit[0] == 0 or hit[-1] == diff.shape[axis] - 1)
            for r in hit[[0, -1]] if hit.size else ():
                lo, hi = (r - out.pad) * out.stride, (r - out.pad + 1) * out.stride
                reach = max(reach, hi - lo_in, hi_in - lo)
        if not clipped:
            return -(-math.ceil(reach) // mult) * mult
        n *= 2


# --------------------------------------------------------------------------- buffers

BUFFER_PREFIX = "fastnst-tiles-"


def open_buffer_files() -> list[str]:
    """The tiling buffer files this process holds open (unlinked at creation, so an open descriptor
    is the only way one can still take disk space): empty after every `apply_tiled`."""
    fd = "/proc/self/fd"
    links = (os.readlink(os.path.join(fd, f)) for f in os.listdir(fd) if os.path.islink(os.path.join(fd, f)))
    return [t for t in links if BUFFER_PREFIX in t]


_ALIGN = 64  # XLA:CPU uses host memory aligned like this in place instead of copying it


def _empty(shape) -> np.ndarray:
    """An uninitialised float32 array whose data is `_ALIGN`-byte aligned."""
    n = math.prod(shape) * 4
    raw = np.empty(n + _ALIGN, np.uint8)
    off = -raw.ctypes.data % _ALIGN
    return raw[off: off + n].view(np.float32).reshape(shape)


def _to_device(a: np.ndarray) -> jax.Array:
    """A window for the device. On the CPU an aligned, contiguous float32 window is used in place
    (copying and page-faulting hundreds of MB per window took a third of the run); anything else is
    first copied into aligned memory. The caller keeps `a` unchanged until the result is read."""
    if not (a.dtype == np.float32 and a.flags.c_contiguous and a.ctypes.data % _ALIGN == 0):
        b = _empty(a.shape)
        b[...] = a
        a = b
    return jax.device_put(a, may_alias=True)


class _Buffer:
    """One layer's whole-image float32 activation (rows, cols, channels): an array in RAM, or an
    unlinked temporary file read and written with pread/pwrite (not mmap: mapped pages would count
    towards the process's resident memory; the page cache does not)."""

    def __init__(self, shape: tuple[int, int, int], in_ram: bool):
        self.shape = shape
        self.row_bytes = shape[1] * shape[2] * 4
        self.array = _empty(shape) if in_ram else None
        self.file = None
        if not in_ram:  # unlinked at once (named first, so that /proc/PID/fd shows what it is)
            fd, path = tempfile.mkstemp(prefix=BUFFER_PREFIX)
            os.unlink(path)
            self.file = os.fdopen(fd, "r+b")
            self.file.truncate(shape[0] * self.row_bytes)

    @property
    def nbytes(self) -> int:
        return self.shape[0] * self.row_bytes

    def write(self, r0: int, c0: int, block: np.ndarray) -> None:
        if self.array is not None:
            self.array[r0: r0 + block.shape[0], c0: c0 + block.shape[1]] = block
            return
        block = np.ascontiguousarray(block, np.float32)
        if c0 == 0 and block.shape[1] == self.shape[1]:
            _pwrite(self.file.fileno(), memoryview(block).cast("B"), r0 * self.row_bytes)
            return
        for i, row in enumerate(block):
            _pwrite(self.file.fileno(), memoryview(row).cast("B"),
                    (r0 + i) * self.row_bytes + c0 * self.shape[2] * 4)

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        if self.array is not None:
            return self.array[r0:r1, c0:c1]
        out = _empty((r1 - r0, c1 - c0, self.shape[2]))
        if c0 == 0 and c1 == self.shape[1]:
            _pread(self.file.fileno(), memoryview(out).cast("B"), r0 * self.row_bytes)
        else:
            for i in range(r1 - r0):
                _pread(self.file.fileno(), memoryview(out[i]).cast("B"),
                       (r0 + i) * self.row_bytes + c0 * self.shape[2] * 4)
        return out

    def close(self) -> None:
        self.array = None
        if self.file is not None:
            self.file.close()


def _pwrite(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _pread(fd: int, into: memoryview, offset: int) -> None:
    while into:
        n = os.preadv(fd, [into], offset)
        if n == 0:
            raise OSError("short read from a tiling buffer")
        into, offset = into[n:], offset + n


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
    mult, ls = _mult(net), layers(net)
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
        stages.append(Stage(lay, *reads(net, k), h, _tiles(hp, wp, core, window, mult)))
    return stages


def _owned(layer: Layer, core, window, hp: int, wp: int) -> tuple[int, int, int, int]:
    """The window-relative layer rows/cols whose whole-image activations this window accounts for:
    its core mapped onto the layer's grid, plus the padded border where the core touches the image's."""
    (y0, y1, x0, x1), (wy0, _, wx0, _) = core, window

    def span(a, b, wa, full):
        lo = 0 if a == 0 else layer.origin(a) + layer.pad
        hi = layer.size(full) if b >= full else layer.origin(b) + layer.pad
        return lo - layer.origin(wa), hi - layer.origin(wa)

    return (*span(y0, y1, wy0, hp), *span(x0, x1, wx0, wp))


def _combine(acc, n, mean, m2):
    """Chan et al.'s pairwise update of (count, mean, centred sum of squares), in float64."""
    n, mean, m2 = float(n), np.asarray(mean, np.float64), np.asarray(m2, np.float64)
    if acc is None:
        return n, mean, m2
    na, ma, m2a = acc
    total = na + n
    d = mean - ma
    return total, ma + d * (n / total), m2a + m2 + d * d * (na * n / total)


# --------------------------------------------------------------------------- inference


def apply_tiled(net: nets.TransformNet, variables, image: np.ndarray, *, budget: int | None = None,
                tile: int | None = None, ram: int | None = None, info: dict | None = None) -> np.ndarray:
    """Runs `net` on one HxWx3 image stage by stage within `budget` bytes (default
    `default_budget()`); returns the (scale*H)x(scale*W)x3 float32 output, equal to the whole-image
    output up to float32 rounding.

    `tile` caps every stage's window core (px); `ram` caps the bytes of buffers kept in RAM (default
    half the budget less the output's size; the rest go to temporary files). `info`, when given,
    receives the number of stages and windows and the peak bytes of buffers in RAM and on disk.
    """
    mult = _mult(net)
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
    # The output (returned, so in RAM) counts against the buffers' share of the budget.
    ram_left = budget // 2 - hp * f * wp * f * 12 if ram is None else ram
    buffers: dict[str, _Buffer] = {}
    stats: dict[str, tuple] = {}
    peak = {"ram": 0, "disk": 0}
    try:
        for k, st in enumerate(stages):
            lay = st.layer
            shape = (lay.size(hp), lay.size(wp), lay.channels)
            if lay.name == OUTPUT:
                dest = _Buffer(shape, in_ram=True)
            else:
                dest = _Buffer(shape, in_ram=4 * math.prod(shape) <= ram_left)
                ram_left -= dest.nbytes if dest.array is not None else 0
            buffers[lay.name] = dest
            for where in ("ram", "disk"):
                peak[where] = max(peak[where], sum(b.nbytes for n, b in buffers.items() if n != OUTPUT
                                                   and (b.array is not None) == (where == "ram")))
            st_stats = {n: tuple(jnp.asarray(a) for a in stats[n]) for n in st.reads if n in stats}
            acc = None
            for core, win in st.tiles:
                wy0, wy1, wx0, wx1 = win
                ins = {}
                for n in st.reads:
                    src = by_name[n]
                    r0, c0 = src.origin(wy0), src.origin(wx0)
                    ins[n] = _to_device(buffers[n].read(r0, r0 + src.size(wy1 - wy0),
                                                        c0, c0 + src.size(wx1 - wx0))[None])
                img = _to_device(image[None, wy0:wy1, wx0:wx1]) if st.reads_image else None
                owned = _owned(lay, core, win, hp, wp)
                y, s = _run_stage(net, k, st.window, variables, img, ins, st_stats, jnp.asarray(owned))
                r0, r1, c0, c1 = owned
                dest.write(lay.origin(wy0) + r0, lay.origin(wx0) + c0, np.asarray(y)[0, r0:r1, c0:c1])
                if s is not None:
                    acc = _combine(acc, *jax.device_get(s))
            if acc is not None:
                n, mean, m2 = acc
                stats[lay.name] = (mean.astype(np.float32), (m2 / n).astype(np.float32))
            for n in [n for n, last in last_read.items() if last == k]:
                ram_left += buffers[n].nbytes if buffers[n].array is not None else 0
                buffers.pop(n).close()
        if info is not None:
            info.update(stages=len(stages), windows=sum(len(st.tiles) for st in stages),
                        buffers_ram_mb=peak["ram"] / 2**20, buffers_disk_mb=peak["disk"] / 2**20)
        return buffers[OUTPUT].array[: h * f, : w * f]
    finally:
        for b in buffers.values():
            if b.array is None or b is not buffers.get(OUTPUT):
                b.close()
