"""Image transformation networks of the paper (§3.1 and supplementary material).

One module, `TransformNet`, serves both architectures, which are registered by name
(`config.model.task`) with documented defaults for every option:

* `style` (`style_net`): reflection-pad 40 px; 32x9x9 s1; 64x3x3 s2; 128x3x3 s2; five residual
  blocks (two unpadded 3x3 convs, centre-cropped identity, no ReLU after the add); 64x3x3 and
  32x3x3 convs of stride 1/2; 3x9x9 s1. Output size = input size.
* `sr` (`sr_net`): 64x9x9; four residual blocks of 64 channels; log2(scale) convs of stride 1/2
  with 64 channels; 3x9x9. Output size = scale x input size.

Normalisation + ReLU follow every conv except the last and the second conv of each residual
block. Inputs are RGB NHWC in [0, 255]; they are mapped to [-1, 1] on entry.

Output mapping (documented deviation): `127.5 * (tanh(x) + 1)`, i.e. exactly onto (0, 255). The
paper's code uses `150 * tanh(x)` around the mean pixel and clips when saving; our range needs no
clipping, so the losses see exactly the image that is saved.

Options (`config.model`, defaults in `ARCHITECTURES`): `norm` = batch (paper) | instance (Ulyanov et
al.) | instance_floor (instance norm with a learned variance floor per channel, which stops the bright
discs: `layers.FlooredInstanceNorm`, results/discs/README.md) | conditional_instance and
conditional_instance_floor (a gamma and beta per style, Dumoulin et al. 2017; the net then takes
style weights and `num_styles` says how many); `upsample` = transpose (paper, fractionally strided
conv) | resize_conv (nearest x2 then 3x3 conv; avoids checkerboard artefacts); `padding` = paper
(one big reflection pad, unpadded residual convs) | reflect_same (reflection padding at every conv);
`width` multiplies every hidden width; `scale` is the SR factor (1 for style). Norms and upsamplings
are registry entries (`variants.NORMS`, `variants.UPSAMPLES`) that own their facts; the net holds
their names. The layers in order are `layer_plan(net)`, which `TransformNet.__call__` and the ONNX
export both walk, so the topology is written once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from fastnst import layers, variants
from fastnst.errors import ConfigError

ModuleDef = Any


PADDINGS = ("paper", "reflect_same")


def _reflect_to_multiple(x: jax.Array, mult: int) -> jax.Array:
    """Reflection padding at the bottom and right up to a multiple of `mult`, for any (symbolic) size."""
    def index(n):
        i = jnp.arange(n + (-n % mult))
        return jnp.where(i < n, i, 2 * (n - 1) - i)

    return jnp.take(jnp.take(x, index(x.shape[1]), axis=1), index(x.shape[2]), axis=2)


def _reflect(x: jax.Array, pad: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect") if pad else x


def _conv(x: jax.Array, features: int, kernel: int, *, name: str, reflect: bool, stride: int = 1,
          pad: bool = True, dtype=jnp.float32) -> jax.Array:
    """A conv with `kernel // 2` padding (reflected or zero) or none (`pad=False`)."""
    p = kernel // 2 if pad else 0
    if reflect and p:
        x, p = _reflect(x, p), 0
    return layers.Conv(features, kernel, strides=stride, padding=p, dtype=dtype, name=name)(x)


def _norm(module: nn.Module, x: jax.Array, style: jax.Array | None) -> jax.Array:
    """A norm layer on x; the style weights go only to a conditional one (a multi-style net)."""
    return module(x) if style is None else module(x, style)


class ResidualBlock(nn.Module):
    """Two 3x3 convs with normalisation, ReLU between them, identity added (no ReLU after).

    With `paper_padding` the convs are unpadded (each side shrinks by 2) and the identity is
    centre-cropped to match; otherwise both convs reflection-pad.
    """

    channels: int
    norm: str  # a `variants.NORMS` name
    paper_padding: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False, style: jax.Array | None = None) -> jax.Array:
        pad, reflect = not self.paper_padding, not self.paper_padding
        d = self.dtype
        y = _conv(x, self.channels, 3, name="conv0", reflect=reflect, pad=pad, dtype=d)
        make, (n0, n1) = variants.norm(self.norm).make, RES_NORMS
        y = nn.relu(_norm(make(train, n0, d), y, style))
        y = _norm(make(train, n1, d), _conv(y, self.channels, 3, name="conv1", reflect=reflect,
                                                      pad=pad, dtype=d), style)
        if self.paper_padding:
            x = x[:, 2:-2, 2:-2, :]
        return x + y


@dataclasses.dataclass(frozen=True)
class Block:
    """One step of the network: `conv` (a conv, then its norm and ReLU when `norm` names one),
    `res` (a residual block of `features` channels) or `up` (x2 upsampling to `features`, norm, ReLU).
    `name` is the parameter scope of its conv, block or upsampling, `norm` that of its norm layer."""

    kind: str
    name: str
    features: int
    kernel: int = 3
    stride: int = 1
    norm: str | None = None


def layer_plan(net) -> tuple[Block, ...]:
    """The network's layers in order, between the input mapping and padding (`TransformNet`) and
    the final crop and tanh: the one description of its topology."""
    return (Block("conv", "conv_in", net.stem, 9, norm="norm_in"),
            *(Block("conv", f"down{i}", c, 3, 2, f"norm_down{i}") for i, c in enumerate(net.down)),
            *(Block("res", f"res{i}", net.res_channels) for i in range(net.num_res)),
            *(Block("up", f"up{i}", c, norm=f"norm_up{i}") for i, c in enumerate(net.up)),
            Block("conv", "conv_out", 3, 9))


RES_NORMS = ("norm0", "norm1")  # the norm layers inside a residual block, in order


def norm_scopes(net) -> tuple[tuple[str, ...], ...]:
    """The parameter scope of every norm layer of the net (e.g. ('norm_in',), ('res0', 'norm0'))."""
    scopes = []
    for b in layer_plan(net):
        scopes += [(b.name, n) for n in RES_NORMS] if b.kind == "res" else [(b.norm,)] if b.norm else []
    return tuple(scopes)


class TransformNet(nn.Module):
    """Conv encoder, residual blocks, up-sampling decoder, scaled tanh.

    Attributes:
      stem: channels of the first 9x9 conv.
      down: channels of each stride-2 3x3 conv.
      res_channels / num_res: residual blocks.
      up: channels of each x2 up-sampling layer.
      norm: the normalisation's name in `variants.NORMS`.
      upsample: the up-sampling's name in `variants.UPSAMPLES`.
      padding: 'paper' or 'reflect_same' (see the module docstring).
      num_styles: styles of a multi-style net (a conditional `norm`); 1 otherwise.
    """

    stem: int = 32
    down: tuple[int, ...] = (64, 128)
    num_res: int = 5
    res_channels: int = 128
    up: tuple[int, ...] = (64, 32)
    norm: str = "batch"
    upsample: str = "transpose"
    padding: str = "paper"
    num_styles: int = 1
    dtype: Any = jnp.float32  # computation dtype (bfloat16 for mixed precision); parameters stay float32

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False, style: jax.Array | None = None) -> jax.Array:
        """`style`: the style weights of a multi-style net ([S] or [N, S]), None otherwise."""
        if (style is not None) != is_multistyle(self):
            raise ValueError("style weights go with a multi-style (conditional norm) network, "
                             "and only there")
        chex.assert_rank(images, 4)
        chex.assert_axis_dimension(images, 3, 3)
        _, h, w, _ = images.shape
        mult = 2 ** len(self.down)
        paper = self.padding == "paper"
        x = (images / 127.5 - 1.0).astype(self.dtype)
        # Sizes not divisible by the total stride: reflect-pad up to a multiple, crop back at the end.
        if isinstance(h, int) and isinstance(w, int):
            ph, pw = -h % mult, -w % mult
            x = jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect") if ph or pw else x
        else:  # symbolic sizes (`jax.export`): the same reflection as a gather, with no comparisons
            x = _reflect_to_multiple(x, mult)
        x = _reflect(x, 2 * self.num_res * mult if paper else 0)

        make_norm = variants.norm(self.norm).make
        for blk in layer_plan(self):
            if blk.kind == "res":
                x = ResidualBlock(blk.features, self.norm, paper, self.dtype, name=blk.name)(x, train, style)
                continue
            if blk.kind == "up":
                x = variants.upsample(self.upsample).make(blk.features, edge_pad=not paper, name=blk.name,
                                                          dtype=self.dtype)(x)
            else:
                x = _conv(x, blk.features, blk.kernel, name=blk.name, reflect=not paper, stride=blk.stride,
                          dtype=self.dtype)
            if blk.norm:
                x = nn.relu(_norm(make_norm(train, blk.norm, self.dtype), x, style))
        x = x.astype(jnp.float32)

        factor = 2 ** len(self.up) // mult  # 1 for style transfer, the SR scale for SR
        x = x[:, : h * factor, : w * factor]
        return 127.5 * (jnp.tanh(x) + 1.0)


# --------------------------------------------------------------------------- architectures


def _width(n: int, width: float) -> int:
    return max(1, int(round(n * width)))


def style_net(*, norm: str = "batch", upsample: str = "transpose", padding: str = "paper",
              width: float = 1.0, scale: int = 1, num_styles: int = 1) -> TransformNet:
    """The paper's style-transfer network (width 1.0), or a narrower/wider variant; with
    a conditional norm (`norm="conditional_instance_floor"`), one network for `num_styles` styles."""
    if scale != 1:
        raise ConfigError(f"model.scale must be 1 for a style network, got {scale}")
    if num_styles != int(num_styles) or not 1 <= num_styles <= 1024:
        raise ConfigError(f"model.num_styles must be an integer in [1, 1024], got {num_styles}")
    if num_styles > 1 and not variants.norm(norm).multistyle:
        raise ConfigError(f"model.num_styles is {num_styles}: several styles need "
                          f"model.norm={_multistyle_kinds()}")
    c = lambda n: _width(n, width)  # noqa: E731
    return TransformNet(stem=c(32), down=(c(64), c(128)), num_res=5, res_channels=c(128),
                        up=(c(64), c(32)), num_styles=int(num_styles), **_parts(norm, upsample, padding))


def sr_net(scale: int = 4, *, norm: str = "batch", upsample: str = "transpose", padding: str = "paper",
           width: float = 1.0) -> TransformNet:
    """The paper's super-resolution network for an upsampling factor of 2, 4 or 8."""
    if scale not in (2, 4, 8):
        raise ConfigError(f"model.scale must be 2, 4 or 8 for super-resolution, got {scale}")
    if variants.norm(norm).multistyle:
        raise ConfigError(f"model.norm={norm} (several styles) is for style networks")
    c = _width(64, width)
    return TransformNet(stem=c, down=(), num_res=4, res_channels=c, up=(c,) * int(math.log2(scale)),
                        **_parts(norm, upsample, padding))


def _multistyle_kinds() -> str:
    return " or ".join(k for k, v in variants.NORMS.items() if v.multistyle)


def _parts(norm: str, upsample: str, padding: str) -> dict:
    variants.norm(norm), variants.upsample(upsample)  # unknown kinds: one line naming the known ones
    if padding not in PADDINGS:
        raise ConfigError(f"model.padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    return dict(norm=norm, upsample=upsample, padding=padding)


@dataclasses.dataclass(frozen=True)
class Architecture:
    """A named network builder and the default of every option it takes."""

    builder: Callable[..., TransformNet]
    defaults: Mapping[str, Any]


_COMMON = dict(norm="batch", upsample="transpose", padding="paper", width=1.0)
ARCHITECTURES: dict[str, Architecture] = {
    "style": Architecture(style_net, {**_COMMON, "scale": 1, "num_styles": 1}),
    "sr": Architecture(sr_net, {**_COMMON, "scale": 4}),
}


def model_config(model: Mapping) -> dict:
    """`config.model` validated and completed with the architecture's defaults.

    Raises:
      ConfigError: unknown `task`, unknown key, or a value of the wrong type or out of range.
    """
    model = dict(model)
    task = model.get("task")
    if task not in ARCHITECTURES:
        raise ConfigError(f"model.task must be one of {', '.join(ARCHITECTURES)}, got {task!r}")
    defaults = ARCHITECTURES[task].defaults
    unknown = sorted(set(model) - set(defaults) - {"task"})
    if unknown:
        raise ConfigError(f"unknown model key(s) {unknown} for task {task!r}; known: "
                          f"{', '.join(defaults)}")
    out = {"task": task, **defaults, **model}
    for key, default in defaults.items():
        value = out[key]
        if isinstance(default, str) and not isinstance(value, str):
            raise ConfigError(f"model.{key} must be a string, got {value!r}")
        if isinstance(default, int | float) and (isinstance(value, bool) or
                                                 not isinstance(value, int | float)):
            raise ConfigError(f"model.{key} must be a number, got {value!r}")
    if not (math.isfinite(out["width"]) and 0 < out["width"] <= 16):
        raise ConfigError(f"model.width must be in (0, 16], got {out['width']}")
    if out["scale"] != int(out["scale"]):
        raise ConfigError(f"model.scale must be an integer, got {out['scale']}")
    out["scale"], out["width"] = int(out["scale"]), float(out["width"])
    if "num_styles" in out:
        if isinstance(out["num_styles"], float) and out["num_styles"] != int(out["num_styles"]):
            raise ConfigError(f"model.num_styles must be an integer, got {out['num_styles']}")
        out["num_styles"] = int(out["num_styles"])
    build(out)  # option values (norm, upsample, padding, scale) are checked by the builder
    return out


def build(model: Mapping, *, dtype=jnp.float32) -> TransformNet:
    """Builds the network named by `model['task']` with its options (defaults filled in), computing
    in `dtype` (parameters are float32 either way)."""
    task = model.get("task")
    if task not in ARCHITECTURES:
        raise ConfigError(f"model.task must be one of {', '.join(ARCHITECTURES)}, got {task!r}")
    arch = ARCHITECTURES[task]
    opts = {k: model.get(k, v) for k, v in arch.defaults.items()}
    net = arch.builder(**opts)
    return net if dtype == jnp.float32 else net.clone(dtype=dtype)


def init(net: TransformNet, rng: jax.Array, size: int = 64, scale: int = 1) -> dict:
    """Initial variables (`params`, plus `batch_stats` for batch norm)."""
    x = jnp.zeros((1, size // scale, size // scale, 3), jnp.float32)
    return net.init(rng, x, style=style_weights(net, 0) if is_multistyle(net) else None)


def per_style(net: TransformNet, params) -> Any:
    """A tree like `params` of bools: True at the parameters held per style ([S, C]: the
    `variants.NormKind.per_style` parameters of every norm layer of a multi-style net)."""
    scopes, names = set(norm_scopes(net)), set(variants.norm(net.norm).per_style)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: (tuple(k.key for k in path[:-1]) in scopes and path[-1].key in names), params)


def is_multistyle(net: TransformNet) -> bool:
    """Whether the net takes style weights (conditional instance norm)."""
    return variants.norm(net.norm).multistyle


def style_weights(net: TransformNet, index: int) -> jax.Array:
    """One-hot style weights [1, S] selecting style `index` of a multi-style net."""
    return jax.nn.one_hot(jnp.asarray([index]), net.num_styles, dtype=jnp.float32)
