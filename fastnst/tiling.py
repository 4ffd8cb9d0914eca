"""Inference on images of any size within a memory budget: overlapping tiles, stitched exactly.

A transformation network in inference mode with batch norm is a pure convolutional map: an
output pixel depends only on input pixels within the receptive-field radius `receptive_radius(net)`
(57 px for the paper's style network, 15 px for its SR x4 network, computed from the
architecture below). So each tile is run with a margin of at least that radius around its core
and only the core is kept. The image is first padded to a multiple of the network's total stride
exactly as the network pads it, and windows start on the stride grid and share one shape, so the
stitched output equals the whole-image output up to float rounding (one compilation).

Instance norm normalises with statistics of the whole (padded) activation, which a tile does not
see. `_exact_stats` computes them first, layer by layer: for each norm layer in execution order,
every tile runs up to that layer (earlier layers normalised with their exact statistics) and sums
its input over the tile's own share of the layer's activation (its core mapped onto the layer's
grid, plus the border padding for tiles on the image's edge). Every tile is then normalised with
the same statistics, so the stitched output equals whole-image inference too, at the cost of one
partial pass per norm layer (docs/tiling.md has the measurements and the cheaper estimates that
were tried and dropped).
"""

from __future__ import annotations

import functools
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fastnst import nets
from fastnst.errors import ConfigError


def receptive_radius(net: nets.TransformNet) -> int:
    """How far (input pixels) an output pixel can see: sum over convs of (k // 2) x input stride."""
    j, r = 1.0, 4.0  # conv_in 9x9
    for _ in net.down:
        r += j
        j *= 2
    r += net.num_res * 2 * j  # two 3x3 convs per residual block
    for _ in net.up:
        r += j  # a 3x3 (transposed or resize-) conv reaches one low-resolution pixel
        j /= 2
    r += 4 * j  # conv_out 9x9
    return int(math.ceil(r))


def margin(net: nets.TransformNet) -> int:
    """The tile margin: the receptive radius rounded up to the total stride."""
    mult = 2 ** len(net.down)
    return -(-receptive_radius(net) // mult) * mult


def activation_bytes(net: nets.TransformNet, h: int, w: int) -> int:
    """Bytes of all float32 activations of one h x w input: the sizing rule for tiles and budgets."""
    pad = 2 * net.num_res * 2 ** len(net.down) if net.padding == "paper" else 0
    area = (h + 2 * pad) * (w + 2 * pad)
    floats = 3 * area + net.stem * area
    scale = 1.0
    for c in net.down:
        scale /= 4
        floats += c * area * scale
    floats += net.num_res * 2 * net.res_channels * area * scale
    for c in net.up:
        scale *= 4
        floats += c * area * scale
    floats += 3 * area * scale
    return int(4 * floats)


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


def _tile_step(net: nets.TransformNet) -> int:
    return 8 * 2 ** len(net.down)


def min_tile_bytes(net: nets.TransformNet) -> int:
    """The budget the smallest tile (core of `_tile_step` px plus its margins) needs."""
    side = _tile_step(net) + 2 * margin(net)
    return activation_bytes(net, side, side)


def tile_size(net: nets.TransformNet, budget: int) -> int | None:
    """The largest tile core (a multiple of 8 x the stride) whose window fits the budget, or None
    when not even the smallest does (`min_tile_bytes`)."""
    step = _tile_step(net)
    m = margin(net)
    t = 0
    while activation_bytes(net, t + step + 2 * m, t + step + 2 * m) <= budget and t < 1 << 15:
        t += step
    return t or None


def _is_norm_call(context) -> bool:
    return isinstance(context.module, nn.InstanceNorm) and context.method_name == "__call__"


def _normalise(m: nn.InstanceNorm, x, mean, var):
    y = (x - mean) * jax.lax.rsqrt(var + m.epsilon)
    return y * m.get_variable("params", "scale") + m.get_variable("params", "bias")


@functools.partial(jax.jit, static_argnums=0)
def _plain_forward(net, variables, x):
    return net.apply(variables, x)


@functools.partial(jax.jit, static_argnums=0)
def _forward_with_stats(net, variables, x, stats):
    """The network on a window with every instance norm using the given statistics."""

    def interceptor(next_fun, args, kwargs, context):
        if not _is_norm_call(context):
            return next_fun(*args, **kwargs)
        return _normalise(context.module, args[0], *stats["/".join(context.module.path)])

    return nn.intercept_methods(interceptor)(lambda: net.apply(variables, x))()


class _Reached(Exception):
    """Carries a layer's sums out of a forward pass that stops at that layer."""

    def __init__(self, sums):
        super().__init__()
        self.sums = sums


@functools.partial(jax.jit, static_argnums=(0, 4))
def _layer_sums(net, variables, x, stats, layer, owned):
    """Runs the network on a window up to the instance norm `layer` (earlier norms using `stats`)
    and returns the sum, sum of squares and count of that layer's input over the owned region
    `owned` = [row0, row1, col0, col1]."""

    def interceptor(next_fun, args, kwargs, context):
        if not _is_norm_call(context):
            return next_fun(*args, **kwargs)
        key = "/".join(context.module.path)
        if key != layer:
            return _normalise(context.module, args[0], *stats[key])
        a = args[0].astype(jnp.float32)
        rows = jnp.arange(a.shape[1])[:, None]
        cols = jnp.arange(a.shape[2])[None, :]
        mask = ((rows >= owned[0]) & (rows < owned[1]) & (cols >= owned[2]) & (cols < owned[3]))
        mask = mask.astype(jnp.float32)[None, :, :, None]
        raise _Reached((jnp.sum(a * mask, (0, 1, 2)), jnp.sum(a * a * mask, (0, 1, 2)), jnp.sum(mask)))

    try:
        nn.intercept_methods(interceptor)(lambda: net.apply(variables, x))()
    except _Reached as r:
        return r.sums
    raise ValueError(f"no instance norm named {layer}")


def _norm_geometry(net, variables) -> dict[str, tuple[float, float]]:
    """Per instance-norm layer: (stride j, top padding p) of its input grid, from two dry runs
    (layer rows = input rows / j + 2 p)."""
    shapes = {}

    def interceptor(next_fun, args, kwargs, context):
        if _is_norm_call(context):
            shapes.setdefault("/".join(context.module.path), []).append(args[0].shape[1])
        return next_fun(*args, **kwargs)

    sizes = (64, 128)
    for n in sizes:
        with nn.intercept_methods(interceptor):
            jax.eval_shape(lambda x: net.apply(variables, x),
                           jax.ShapeDtypeStruct((1, n, 64, 3), jnp.float32))
    out = {}
    for key, (h1, h2) in shapes.items():
        j = (sizes[1] - sizes[0]) / (h2 - h1)
        out[key] = (j, (h1 - sizes[0] / j) / 2)
    return out


def _owned(geometry, core, window, hp: int, wp: int) -> dict:
    """Per norm layer, the window rows/cols whose global activations this tile accounts for: its
    core mapped onto the layer's grid, plus the padded border where the core touches the image's."""
    (y0, y1, x0, x1), (wy0, _, wx0, _) = core, window
    out = {}
    for key, (j, p) in geometry.items():
        def span(a, b, wa, full, j=j, p=p):
            lo = 0 if a == 0 else p + a / j
            hi = 2 * p + full / j if b >= full else p + b / j
            return lo - wa / j, hi - wa / j
        r0, r1 = span(y0, y1, wy0, hp)
        c0, c1 = span(x0, x1, wx0, wp)
        out[key] = jnp.asarray([r0, r1, c0, c1], jnp.float32)
    return out


def _tiles(hp: int, wp: int, core: int, m: int, mult: int = 4) -> list:
    """(core box, window box) pairs over an image of hp x wp (multiples of `mult`): cores of at most
    `core` px, balanced so that no thin last row or column of tiles is wasted, partition it; windows
    share one shape, start on the stride grid, and keep `m` px around their core except at the
    image's border."""
    def sizes(n_px):
        n = -(-n_px // core)
        return -(-n_px // (n * mult)) * mult

    ch, cw = sizes(hp), sizes(wp)
    wh, ww = min(ch + 2 * m, hp), min(cw + 2 * m, wp)
    out = []
    for y0 in range(0, hp, ch):
        for x0 in range(0, wp, cw):
            y1, x1 = min(y0 + ch, hp), min(x0 + cw, wp)
            wy0 = min(max(0, y0 - m), hp - wh)
            wx0 = min(max(0, x0 - m), wp - ww)
            out.append(((y0, y1, x0, x1), (wy0, wy0 + wh, wx0, wx0 + ww)))
    return out


def _window(image: np.ndarray, box) -> np.ndarray:
    """The window `box` of the image padded to a multiple of the stride: rows and columns past the
    image's end are its reflection, as the network pads (only windows at the border need it)."""
    y0, y1, x0, x1 = box
    h, w = image.shape[:2]
    win = image[y0:min(y1, h), x0:min(x1, w)]
    if y1 > h or x1 > w:  # the window holds the image's last rows/columns, which the reflection reads
        win = np.pad(win, ((0, max(0, y1 - h)), (0, max(0, x1 - w)), (0, 0)), mode="reflect")
    return win


def _exact_stats(net, variables, image: np.ndarray, hp: int, wp: int, tile: int) -> dict:
    """Whole-image instance-norm statistics, layer by layer: pass l runs every tile up to norm
    layer l (earlier layers normalised with their exact statistics) and sums its input over each
    tile's owned region; the regions partition the layer's whole activation, padding included."""
    boxes = _tiles(hp, wp, tile, margin(net), 2 ** len(net.down))
    geometry = _norm_geometry(net, variables)  # in execution order
    owned = [_owned(geometry, c, wb, hp, wp) for c, wb in boxes]
    stats = {}
    for layer in geometry:
        s1 = s2 = n = 0.0
        for i, (_, box) in enumerate(boxes):
            a, b, c = jax.device_get(_layer_sums(net, variables, jnp.asarray(_window(image, box)[None]),
                                                 stats, layer, owned[i][layer]))
            s1, s2, n = s1 + a.astype(np.float64), s2 + b.astype(np.float64), n + float(c)
        mean = s1 / n
        var = np.maximum(s2 / n - mean**2, 0.0)
        stats[layer] = (jnp.asarray(mean, jnp.float32).reshape(1, 1, 1, -1),
                        jnp.asarray(var, jnp.float32).reshape(1, 1, 1, -1))
    return stats


def uses_instance_norm(net: nets.TransformNet) -> bool:
    """Whether the network normalises with per-image statistics."""
    return net.norm is nets.instance_norm


def apply_tiled(net: nets.TransformNet, variables, image: np.ndarray, *, tile: int) -> np.ndarray:
    """Runs `net` on one HxWx3 image tile by tile (cores of `tile` px, a multiple of the stride);
    returns the stitched (scale*H)x(scale*W)x3 float32 output.

    For instance norm, every tile is normalised with the same whole-image statistics, computed
    exactly first (`_exact_stats`: one partial pass over the tiles per norm layer).
    """
    mult = 2 ** len(net.down)
    if tile % mult:
        raise ValueError(f"the tile size must be a multiple of {mult}")
    factor = 2 ** len(net.up) // mult
    h, w = image.shape[:2]
    hp, wp = h + (-h % mult), w + (-w % mult)
    image = np.asarray(image, np.float32)
    if uses_instance_norm(net):
        stats = _exact_stats(net, variables, image, hp, wp, tile)
        run = lambda x: _forward_with_stats(net, variables, x, stats)  # noqa: E731
    else:
        run = lambda x: _plain_forward(net, variables, x)  # noqa: E731
    out = np.empty((hp * factor, wp * factor, 3), np.float32)
    for (y0, y1, x0, x1), box in _tiles(hp, wp, tile, margin(net), mult):
        y = np.asarray(run(jnp.asarray(_window(image, box)[None]))[0])
        oy, ox = (y0 - box[0]) * factor, (x0 - box[2]) * factor
        out[y0 * factor: y1 * factor, x0 * factor: x1 * factor] = \
            y[oy: oy + (y1 - y0) * factor, ox: ox + (x1 - x0) * factor]
    return out[: h * factor, : w * factor]
