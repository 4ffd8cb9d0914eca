"""The network's interchangeable parts, one registry entry each, owning every fact about it.

A normalisation (`NormKind`, in `NORMS` under its config name `model.norm`) says how to build its
Flax module, whether it normalises with statistics of the whole image (tiling then ends a stage
at it and `normalise` applies the whole-image statistics to a window), how to write it as ONNX
nodes, which of its parameters are held per style (a multi-style network; `baked` names the kind
one chosen style becomes). An upsampling (`UpsampleKind`, in `UPSAMPLES` under `model.upsample`)
says how to build its module and how to write it as ONNX. `nets`, `stages` (tiling), `export`,
`styles`, `warmstart`, `schema` and `stylize` ask the entry, so a new kind is one entry here (and
its tests); `tests/test_variants.py` adds a group norm that way.

ONNX emitters take the graph builder of `export` (`g.op(kind, inputs, **attrs)` appends a node and
returns its output; `g.const(value, prefix, weight)` an initializer) and NCHW tensor names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fastnst import layers
from fastnst.errors import ConfigError

EPSILON = 1e-5
STYLE_INPUT = "style"  # the ONNX input of a multi-style graph: style weights [S]


@dataclasses.dataclass(frozen=True)
class NormKind:
    """A normalisation layer.

    make(train, name, dtype) -> the Flax module (called as `module(x)`, or `module(x, style)` when
      `per_style`); `module_type` is its class, by which traced module calls are recognised.
    image_stats: it normalises with statistics of the whole image (instance norm), not pointwise.
    normalise(x, mean, var, module) -> the layer's output for given per-channel statistics of its
      input over the whole image (tiling); None for kinds that cannot be tiled as they are.
    onnx(g, x, params, stats) -> ONNX nodes for the layer (params: its parameters; stats: its
      `batch_stats` or None).
    per_style: its parameters held per style, [S, C] (a multi-style network); `baked`: the kind
      that one chosen style (or a mix) becomes.
    """

    name: str
    make: Callable[[bool, str, Any], nn.Module]
    module_type: type
    image_stats: bool
    onnx: Callable
    normalise: Callable | None = None
    per_style: tuple[str, ...] = ()
    baked: str | None = None

    @property
    def multistyle(self) -> bool:
        return bool(self.per_style)


@dataclasses.dataclass(frozen=True)
class UpsampleKind:
    """An x2 upsampling layer: make(features, edge_pad=, name=, dtype=) -> the Flax module, and its
    ONNX nodes onnx(g, x, params, edge_pad=)."""

    name: str
    make: Callable[..., nn.Module]
    onnx: Callable


# --------------------------------------------------------------------------- ONNX pieces


def _onnx_weight(g, p, key: str, prefix: str):
    return g.const(np.asarray(p[key], np.float32), prefix, True)


def _onnx_affine(g, y, scale, shift):
    """y * scale + shift with [C] vectors broadcast over NCHW."""
    shape = g.const(np.array([1, -1, 1, 1], np.int64))
    return g.op("Add", [g.op("Mul", [y, g.op("Reshape", [scale, shape])]), g.op("Reshape", [shift, shape])])


def _batch_onnx(g, x, p, stats):
    inputs = [_onnx_weight(g, p, "scale", "scale"), _onnx_weight(g, p, "bias", "shift"),
              _onnx_weight(g, stats, "mean", "mean"), _onnx_weight(g, stats, "var", "var")]
    return g.op("BatchNormalization", [x, *inputs], epsilon=EPSILON)


def _instance_onnx(g, x, p, stats):
    del stats
    return g.op("InstanceNormalization", [x, _onnx_weight(g, p, "scale", "scale"),
                                          _onnx_weight(g, p, "bias", "shift")], epsilon=EPSILON)


def _floored_standardise(g, x, p):
    """(x - mean) / sqrt(var + eps + exp(log_floor)) per channel: ONNX's InstanceNormalization has
    one epsilon for all channels, so the statistics are written out."""
    shape = g.const(np.array([1, -1, 1, 1], np.int64))
    d = g.op("Sub", [x, g.op("ReduceMean", [x], axes=[2, 3], keepdims=1)])
    var = g.op("ReduceMean", [g.op("Mul", [d, d])], axes=[2, 3], keepdims=1)
    floor = (np.exp(np.asarray(p["log_floor"], np.float64)) + EPSILON).astype(np.float32)
    return g.op("Div", [d, g.op("Sqrt", [g.op("Add", [var, g.op("Reshape", [g.const(floor, "floor", True),
                                                                           shape])])])])


def _floored_onnx(g, x, p, stats):
    del stats
    return _onnx_affine(g, _floored_standardise(g, x, p), _onnx_weight(g, p, "scale", "scale"),
                        _onnx_weight(g, p, "bias", "shift"))


def _onnx_style_affine(g, y, p):
    """y * (style @ scale) + style @ bias: a conditional norm's [S, C] rows chosen by the style
    weights, the graph's second input."""
    gamma, beta = (g.op("MatMul", [STYLE_INPUT, _onnx_weight(g, p, k, k)]) for k in ("scale", "bias"))
    return _onnx_affine(g, y, gamma, beta)


def _conditional_floored_onnx(g, x, p, stats):
    del stats
    return _onnx_style_affine(g, _floored_standardise(g, x, p), p)


def _conditional_onnx(g, x, p, stats):
    """gamma, beta = style @ [S, C] rows; the style weights are the graph's second input."""
    del stats
    ones, zeros = (g.const(np.full(p["scale"].shape[1], v, np.float32)) for v in (1.0, 0.0))
    return _onnx_style_affine(g, g.op("InstanceNormalization", [x, ones, zeros], epsilon=EPSILON), p)


def _transpose_onnx(g, x, p, *, edge_pad: bool):
    """flax's ConvTranspose(3x3, stride 2, 'SAME') = ONNX ConvTranspose with the kernel flipped,
    laid out (in, out, kh, kw), padding 0 before and 1 after (output 2n)."""
    del edge_pad
    w = np.ascontiguousarray(np.asarray(p["kernel"], np.float32)[::-1, ::-1].transpose(2, 3, 0, 1))
    return g.op("ConvTranspose", [x, g.const(w, "w", True), _onnx_weight(g, p, "bias", "b")],
                kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1])


def _resize_conv_onnx(g, x, p, *, edge_pad: bool):
    """Nearest x2 then a 3x3 conv; reflection padding of the upsampled image = edge padding."""
    up = g.op("Resize", [x, "", g.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest",
              coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    if edge_pad:
        up = g.op("Pad", [up, g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))], mode="edge")
    kernel = np.asarray(p["kernel"], np.float32).transpose(3, 2, 0, 1)
    return g.op("Conv", [up, g.const(kernel, "w", True), _onnx_weight(g, p, "bias", "b")],
                kernel_shape=[3, 3], pads=[0 if edge_pad else 1] * 4)


# --------------------------------------------------------------------------- the Flax side


def _instance_normalise(x, mean, var, module):
    y = (x - mean) * jax.lax.rsqrt(var + module.epsilon)
    return y * module.get_variable("params", "scale") + module.get_variable("params", "bias")


def _floored_normalise(x, mean, var, module):
    params = {k: module.get_variable("params", k) for k in ("scale", "bias", "log_floor")}
    return layers.floored_normalise(x, mean, var, epsilon=module.epsilon, **params)


# Module-level functions, not partials: a net's fields must compare equal across rebuilds so that
# jitted inference (static net) compiles once per shape.
def _batch(train: bool, name: str, dtype=None) -> nn.Module:
    """Batch norm (the paper's): batch statistics in training, running averages otherwise."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=EPSILON, dtype=dtype, name=name)


def _instance(train: bool, name: str, dtype=None) -> nn.Module:
    """Instance norm (Ulyanov et al., 2016): per-image statistics, always."""
    del train
    return nn.InstanceNorm(epsilon=EPSILON, dtype=dtype, name=name)


def _floored(train: bool, name: str, dtype=None) -> nn.Module:
    """Instance norm with a learned variance floor per channel (`layers.FlooredInstanceNorm`)."""
    del train
    return layers.FlooredInstanceNorm(epsilon=EPSILON, dtype=dtype, name=name)


def _conditional(train: bool, name: str, dtype=None) -> nn.Module:
    """Instance norm with a gamma and beta per style (Dumoulin et al. 2017)."""
    del train
    return layers.ConditionalInstanceNorm(epsilon=EPSILON, dtype=dtype, name=name)


def _conditional_floored(train: bool, name: str, dtype=None) -> nn.Module:
    """The floored instance norm with a gamma and beta per style."""
    del train
    return layers.ConditionalFlooredInstanceNorm(epsilon=EPSILON, dtype=dtype, name=name)


def _transpose(features: int, *, edge_pad: bool, name: str, dtype=None) -> nn.Module:
    """Stride-1/2 3x3 conv; same output size as torch's ConvTranspose2d(k=3, s=2, p=1, output_padding=1)."""
    del edge_pad
    return nn.ConvTranspose(features, (3, 3), strides=(2, 2), padding="SAME", dtype=dtype, name=name)


def _resize_conv(features: int, *, edge_pad: bool, name: str, dtype=None) -> nn.Module:
    """Nearest x2 then 3x3 conv (Odena et al., 2016), computed by `layers.NearestUpConv`."""
    return layers.NearestUpConv(features, edge_pad=edge_pad, dtype=dtype or jnp.float32, name=name)


NORMS: dict[str, NormKind] = {
    "batch": NormKind("batch", _batch, nn.BatchNorm, image_stats=False, onnx=_batch_onnx),
    "instance": NormKind("instance", _instance, nn.InstanceNorm, image_stats=True, onnx=_instance_onnx,
                         normalise=_instance_normalise),
    "instance_floor": NormKind("instance_floor", _floored, layers.FlooredInstanceNorm, image_stats=True,
                               onnx=_floored_onnx, normalise=_floored_normalise),
    "conditional_instance": NormKind("conditional_instance", _conditional, layers.ConditionalInstanceNorm,
                                     image_stats=True, onnx=_conditional_onnx, per_style=("scale", "bias"),
                                     baked="instance"),
    "conditional_instance_floor": NormKind("conditional_instance_floor", _conditional_floored,
                                           layers.ConditionalFlooredInstanceNorm, image_stats=True,
                                           onnx=_conditional_floored_onnx, per_style=("scale", "bias"),
                                           baked="instance_floor"),
}
UPSAMPLES: dict[str, UpsampleKind] = {
    "transpose": UpsampleKind("transpose", _transpose, _transpose_onnx),
    "resize_conv": UpsampleKind("resize_conv", _resize_conv, _resize_conv_onnx),
}


def _lookup(registry: Mapping, key: str, value):
    if value not in registry:
        raise ConfigError(f"model.{key} must be one of {', '.join(registry)}, got {value!r}")
    return registry[value]


def norm(name: str) -> NormKind:
    """The registry entry of `model.norm` = name (ConfigError naming the known kinds otherwise)."""
    return _lookup(NORMS, "norm", name)


def upsample(name: str) -> UpsampleKind:
    """The registry entry of `model.upsample` = name (ConfigError naming the known kinds otherwise)."""
    return _lookup(UPSAMPLES, "upsample", name)


def is_layer_of(module: nn.Module, kind: NormKind) -> bool:
    """Whether a traced module call is a norm layer of `kind` (not a module inside one)."""
    inside = isinstance(module.parent, tuple(k.module_type for k in NORMS.values()))
    return type(module) is kind.module_type and not inside
