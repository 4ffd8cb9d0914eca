"""The network's stages, measured from the network itself: where whole-image statistics are
needed, each stage's grid (stride, padding, channels), what each stage reads, how far a change
reaches through it (its halo), and the activation bytes of a whole-image run. Shape-only probes
(`jax.eval_shape`) and traced programs, not a description of the architecture, so a new layer
or option is covered without editing this module. `tiling` plans and runs windows with them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jcore

from fastnst import nets, variants
from fastnst.errors import ConfigError


def activation_bytes(net: nets.TransformNet, h: int, w: int) -> int:
    """Bytes of the float32 activations of one h x w input run whole (h, w multiples of the total
    stride): every kernel-owning layer's input plus the output, sized from the network itself (two
    shape-only probes, `probe_shapes`), so an architecture option tiling has never seen counts too."""
    seen, outs = probe_shapes(net)
    grids = [(calls[0][0], calls[1][0]) for calls in seen.values() if calls[0][2]] + [outs]
    total = 0
    for s1, s2 in grids:
        stride, pad = geometry(net, (s1[1], s2[1]))
        total += s1[3] * round(h / stride + 2 * pad) * round(w / stride + 2 * pad)
    return 4 * total


# Stages end where whole-image statistics are needed (`NormKind.image_stats`). Batch norm in inference
# is pointwise: a batch-norm network is one stage, the whole network per window, with its full reach.
OUTPUT = "output"


def _stats_kind(net, module) -> variants.NormKind | None:
    """The net's norm kind if `module` is one of its norm layers with whole-image statistics."""
    kind = variants.norm(net.norm)
    return kind if kind.image_stats and variants.is_layer_of(module, kind) else None


def _norm_name(net, context) -> str | None:
    """The path of a normalisation layer with whole-image statistics being called, else None."""
    if context.method_name == "__call__" and _stats_kind(net, context.module) is not None:
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

    def owned(self, core, window, hp: int, wp: int) -> tuple[int, int, int, int]:
        """The window-relative layer rows/cols whose whole-image activations a window (core box,
        window box, in input pixels of an hp x wp image) accounts for: its core mapped onto the
        layer's grid, plus the padded border where the core touches the image's."""
        (y0, y1, x0, x1), (wy0, _, wx0, _) = core, window

        def span(a, b, wa, full):
            lo = 0 if a == 0 else self.origin(a) + self.pad
            hi = self.size(full) if b >= full else self.origin(b) + self.pad
            return lo - self.origin(wa), hi - self.origin(wa)

        return (*span(y0, y1, wy0, hp), *span(x0, x1, wx0, wp))


def total_stride(net: nets.TransformNet) -> int:
    return 2 ** len(net.down)


@functools.lru_cache(maxsize=32)
def abstract_variables(net: nets.TransformNet):
    """The network's variables as shapes and dtypes only (`jax.eval_shape` of its init)."""
    return jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, 8 * (m := total_stride(net)), 8 * m, 3)))


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

    return jax.tree_util.tree_map_with_path(draw, abstract_variables(net))


_PROBE_SIZES = (16, 32)  # x the total stride: two input sizes whose shapes give strides and paddings


@functools.lru_cache(maxsize=32)
def probe_shapes(net: nets.TransformNet) -> tuple[dict, tuple]:
    """For each of two input sizes, the input shape of every module call (path -> [(shape, is an
    instance norm, owns a kernel)]) and the output shape: two shape-only runs (`jax.eval_shape`)
    of the network."""
    if (kind := variants.norm(net.norm)).image_stats and kind.normalise is None:
        hint = ": choose a style first (styles.select)" if kind.multistyle else ""
        raise ConfigError(f"model.norm={net.norm} cannot run window by window{hint}")
    seen: dict[str, list] = {}

    def interceptor(next_fun, args, kwargs, context):
        if args and getattr(args[0], "ndim", 0) == 4 and context.method_name == "__call__":
            m = context.module
            seen.setdefault("/".join(m.path), []).append(
                (args[0].shape, _stats_kind(net, m) is not None, m.has_variable("params", "kernel")))
        return next_fun(*args, **kwargs)

    variables, outs = abstract_variables(net), []
    for n in _PROBE_SIZES:
        with nn.intercept_methods(interceptor):
            side = n * total_stride(net)
            outs.append(jax.eval_shape(net.apply, variables,
                                       jax.ShapeDtypeStruct((1, side, side, 3), jnp.float32)).shape)
    return seen, tuple(outs)


def geometry(net, rows: tuple[int, int]) -> tuple[float, float]:
    """(stride, padding) of a grid with `rows` rows for the two probe sizes: grid rows =
    input rows / stride + 2 padding."""
    n1, n2 = (n * total_stride(net) for n in _PROBE_SIZES)
    stride = (n2 - n1) / (rows[1] - rows[0])
    return stride, (rows[0] - n1 / stride) / 2


@functools.lru_cache(maxsize=32)
def border(net: nets.TransformNet) -> int:
    """The network's own padding at the image's border, in input pixels (40 for the paper's style
    network): the most by which any layer's input extends past the image."""
    out = 0.0
    for calls in probe_shapes(net)[0].values():
        rows = tuple(c[0][1] for c in calls[-2:])
        if len(rows) == 2 and rows[0] != rows[1]:
            stride, pad = geometry(net, rows)
            out = max(out, pad * stride)
    return int(math.ceil(out))


def _layer(net, name: str, s1, s2, stats: bool) -> Layer:
    stride, pad = geometry(net, (s1[1], s2[1]))
    if pad != int(pad):
        raise ValueError(f"layer {name}: padding {pad} is not a whole number of pixels")
    return Layer(name, s1[3], stride, int(pad), stats)


@functools.lru_cache(maxsize=32)
def layers(net: nets.TransformNet) -> tuple[Layer, ...]:
    """The stages' grids in execution order: every instance norm's input, then the output; and
    the input of every top-level module that holds instance norms (a residual block) where it
    combines several buffers. That input is the residual stream: block i's is block i-1's input
    plus its normalised last conv, so without a buffer of its own every later stage would read
    all the earlier blocks' buffers again (26 reads of a 128-channel layer instead of 20 for the
    paper's 5 blocks) and all of them would stay alive until the up-sampling."""
    seen, outs = probe_shapes(net)
    norms = [name for name, calls in seen.items() if calls[0][1]]
    out: list[Layer] = []
    for name, calls in seen.items():
        holder = bool(name) and "/" not in name and any(n.startswith(name + "/") for n in norms)
        if not (calls[0][1] or holder):
            continue
        lay = _layer(net, name, calls[0][0], calls[1][0], stats=calls[0][1])
        if holder and len(_reads(net, tuple(out), lay)[1]) < 2:
            continue  # (block 0's input: one normalised buffer, as cheap to read as its own copy)
        out.append(lay)
    return (*out, _layer(net, OUTPUT, *outs, stats=False))


def _cropped(sizes: tuple[tuple[str, int, int], ...], offsets: jax.Array):
    """Within this context the input of each top-level layer named in `sizes` [(name, rows, cols)]
    is cropped to rows x cols starting at `offsets` [P, 2] (row, col)."""
    index = {name: i for i, (name, _, _) in enumerate(sizes)}

    def interceptor(next_fun, args, kwargs, context):
        i = index.get("/".join(context.module.path)) if context.method_name == "__call__" else None
        if i is None:
            return next_fun(*args, **kwargs)
        x = args[0]
        start, size = (0, offsets[i, 0], offsets[i, 1], 0), (x.shape[0], *sizes[i][1:], x.shape[3])
        return next_fun(jax.lax.dynamic_slice(x, start, size), *args[1:], **kwargs)

    return nn.intercept_methods(interceptor)


class _Reached(Exception):
    """Carries a stage's result out of the network at the norm layer where the stage ends."""

    def __init__(self, value):
        super().__init__()
        self.value = value


def _stage_output(net, k: int, variables, image, inputs: dict, stats: dict, crops=None):
    """Stage k on one window: the input of layer k (the network's output for the last stage);
    `_forward_to` with layer k as the target."""
    return _forward_to(net, layers(net)[k].name, variables, image, inputs, stats, crops)


def _forward_to(net, target: str, variables, image, inputs: dict, stats: dict, crops=None):
    """The network on one window up to the input of the layer (or top-level module) `target`.

    Every earlier instance norm returns its buffered input from `inputs`, normalised with the
    whole-image `stats`, and every earlier module in `inputs` (the residual stream) starts from
    its buffered input, so nothing before them is computed (XLA drops the dead code); norms the
    stage does not read return zeros, also dead. `crops` = (sizes, offsets): a one-stage network's
    layers trimmed to what the kept output needs (`_cropped`, planned by `trim`).
    """

    def interceptor(next_fun, args, kwargs, context):
        if context.method_name != "__call__" or not context.module.path:
            return next_fun(*args, **kwargs)
        name = "/".join(context.module.path)
        if name == target:
            raise _Reached(args[0])
        if _norm_name(net, context) is None:  # a module: from its buffered input (the residual stream)
            return next_fun(*((inputs[name], *args[1:]) if name in inputs else args), **kwargs)
        if name not in inputs:
            return jnp.zeros_like(args[0])
        mean, var = stats[name]
        return _stats_kind(net, context.module).normalise(inputs[name], mean, var, context.module)

    try:
        with nn.intercept_methods(interceptor), _cropped(*crops) if crops else contextlib.nullcontext():
            return net.apply(variables, image)
    except _Reached as r:
        return r.value


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 8))
def run_stage(net, k: int, window: tuple[int, int], variables, image, inputs, stats, owned,
               crop_sizes=None, crop_offsets=None):
    """Stage k on one window of `window` input pixels; with instance norm at its end, also the
    count, mean and centred sum of squares of the output over the owned region
    [row0, row1, col0, col1]. `crop_sizes` (static) and `crop_offsets`: its layers trimmed (`trim`)."""
    if image is None:
        image = jnp.zeros((1, *window, 3), jnp.float32)
    crops = (crop_sizes, crop_offsets) if crop_sizes else None
    y = _stage_output(net, k, variables, image, inputs, stats, crops)
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


def reads(net: nets.TransformNet, k: int) -> tuple[bool, tuple[str, ...]]:
    """What stage k reads: (the photo?, the earlier layers whose buffers), from its traced
    computation."""
    ls = layers(net)
    return _reads(net, ls[:k], ls[k])


@functools.lru_cache(maxsize=256)
def _reads(net: nets.TransformNet, before: tuple[Layer, ...], target: Layer) -> tuple[bool, tuple[str, ...]]:
    """What computing `target`'s input reads when the layers `before` are buffered."""
    n = 16 * total_stride(net)
    f32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
    inputs = {lay.name: f32(1, lay.size(n), lay.size(n), lay.channels) for lay in before}
    stats = {lay.name: (f32(lay.channels), f32(lay.channels)) for lay in before if lay.stats}
    variables = abstract_variables(net)
    closed = jax.make_jaxpr(lambda v, x, i, s: _forward_to(net, target.name, v, x, i, s))(
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
    mult, ls = total_stride(net), layers(net)
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
        outs = [np.asarray(run_stage(net, k, (n, n), variables, a.get("image"), {s: a[s] for s in names},
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
