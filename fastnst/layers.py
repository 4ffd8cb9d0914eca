"""A 2-D convolution layer that XLA:CPU runs fast, shared by the transformation nets and VGG-16.

`Conv` has exactly `nn.Conv`'s parameters (`kernel` HWIO, `bias`) and initialisers, so weights and
checkpoints are interchangeable. On accelerators it is `lax.conv_general_dilated`. On the CPU three
things differ (why, and the measurements: docs/cpu_performance.md):

* Zero padding is passed to the convolution's `padding` attribute, never applied with `jnp.pad`,
  and a VALID convolution is computed with one extra row of zero padding that is cropped off:
  XLA:CPU runs convolutions with a non-zero padding attribute several times faster.
* The kernel gradient is one matrix product per tap over the flattened batch and positions
  (custom VJP), much faster than XLA's.
* The input gradient of a stride-1 conv is a padded conv of the output gradient with the flipped,
  transposed kernel, materialised behind an optimisation barrier, because XLA:CPU runs its own
  transposed form (`01oi` dimension labels) far slower inside loops such as the L-BFGS line search.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

_DN = ("NHWC", "HWIO", "NHWC")


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, padding: int = 0, *,
           impl: str = "auto") -> jax.Array:
    """Cross-correlation of NHWC `x` with an HWIO `kernel`, `padding` zeros on every side.

    impl: 'auto' ('cpu' on the CPU backend, else 'xla'), 'xla' (plain `lax.conv_general_dilated`,
    XLA's gradient) or 'cpu' (the forms described in the module docstring; same values).
    """
    if impl == "auto":
        impl = "cpu" if jax.default_backend() == "cpu" else "xla"
    if impl == "xla":
        return _xla_conv(x, kernel, stride, ((padding, padding), (padding, padding)))
    if impl == "cpu":
        return _cpu_conv(x, kernel, stride, padding)
    raise ValueError(f"unknown conv impl {impl!r}")


def _xla_conv(x, kernel, stride, padding):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), padding, dimension_numbers=_DN)


def _padded_conv(x, kernel, stride, padding):
    """`_xla_conv`, always with a non-zero padding attribute (see the module docstring)."""
    pads = padding if isinstance(padding, tuple) else ((padding, padding), (padding, padding))
    if any(pads[0]) or any(pads[1]):
        return _xla_conv(x, kernel, stride, pads)
    out_h = (x.shape[1] - kernel.shape[0]) // stride + 1
    return _xla_conv(x, kernel, stride, ((0, 1), (0, 0)))[:, :out_h]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _cpu_conv(x, kernel, stride, padding):
    return _padded_conv(x, kernel, stride, padding)


def _cpu_conv_fwd(x, kernel, stride, padding):
    return _padded_conv(x, kernel, stride, padding), (x, kernel)


def _cpu_conv_bwd(stride, padding, residuals, g):
    x, kernel = residuals
    kh, kw, cin, cout = kernel.shape
    if stride == 1:  # correlation with the flipped kernel; padding chosen so that dx matches x
        flipped = jax.lax.optimization_barrier(kernel[::-1, ::-1].transpose(0, 1, 3, 2))
        pads = [(k - 1 - padding, n - 1 + padding - (o - 1))
                for k, n, o in ((kh, x.shape[1], g.shape[1]), (kw, x.shape[2], g.shape[2]))]
        dx = _padded_conv(g, flipped, 1, tuple(pads))
    else:
        dx = jax.vjp(lambda a: _padded_conv(a, kernel, stride, padding), x)[1](g)[0]
    if cout <= 4:  # a GEMM with <= 4 columns per tap is slower than XLA's (the to-RGB conv)
        dk = jax.vjp(lambda k: _padded_conv(x, k, stride, padding), kernel)[1](g)[0]
        return dx, dk
    # dk[i, j] = sum over batch and output positions of x(shifted by i, j)^T g: one GEMM per tap.
    xp = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0))) if padding else x
    oh, ow = g.shape[1], g.shape[2]
    g2 = g.reshape(-1, cout)
    taps = [xp[:, i: i + stride * (oh - 1) + 1: stride, j: j + stride * (ow - 1) + 1: stride]
            .reshape(-1, cin).T @ g2 for i in range(kh) for j in range(kw)]
    return dx, jnp.stack(taps).reshape(kh, kw, cin, cout).astype(kernel.dtype)


_cpu_conv.defvjp(_cpu_conv_fwd, _cpu_conv_bwd)


class Conv(nn.Module):
    """Drop-in for `nn.Conv(features, (k, k), strides=s, padding=p)` with integer zero padding."""

    features: int
    kernel_size: int
    strides: int = 1
    padding: int = 0
    dtype: jnp.dtype = jnp.float32
    impl: str = "auto"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
        return conv2d(x, kernel, self.strides, self.padding, impl=self.impl) + bias.astype(self.dtype)


def _style_affine(module: nn.Module, style: jax.Array | None, c: int) -> tuple[jax.Array, jax.Array]:
    """A conditional norm's `scale` and `bias` parameters, one row per style ([S, C]), and the gamma
    and beta that the style weights `style` ([S] or [N, S]) choose: `style @ scale`, `style @ bias`,
    shaped [N, 1, 1, C]."""
    if style is None:
        raise ValueError("a multi-style network needs style weights (style=[S] or [N, S])")
    s = style.shape[-1]
    scale = module.param("scale", nn.initializers.ones_init(), (s, c))
    bias = module.param("bias", nn.initializers.zeros_init(), (s, c))
    w = jnp.reshape(jnp.asarray(style, jnp.float32), (-1, s))
    return (w @ scale)[:, None, None, :], (w @ bias)[:, None, None, :]


class ConditionalInstanceNorm(nn.Module):
    """Instance norm whose scale and shift depend on the style (Dumoulin et al. 2017, "A Learned
    Representation for Artistic Style"): one row of `scale` and `bias` per style ([S, C]). Called
    with style weights `style` ([S] or [N, S]; one-hot for one style, convex weights for a mix), it
    normalises like `nn.InstanceNorm` and applies `style @ scale` and `style @ bias`, so a mix is
    the convex combination of the styles' gamma and beta."""

    epsilon: float = 1e-5
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, style: jax.Array | None = None) -> jax.Array:
        gamma, beta = _style_affine(self, style, x.shape[-1])
        # Flax's own normalisation (no affine part), so one selected style equals an instance-norm
        # network with that style's gamma and beta up to float32 rounding
        y = nn.InstanceNorm(epsilon=self.epsilon, use_scale=False, use_bias=False, dtype=self.dtype,
                            name="normalize")(x)
        return (y * gamma.astype(y.dtype) + beta.astype(y.dtype)).astype(y.dtype)


def floored_normalise(x, mean, var, scale, bias, log_floor, epsilon):
    """(x - mean) / sqrt(var + epsilon + exp(log_floor)) * scale + bias, per channel."""
    y = (x - mean) * jax.lax.rsqrt(var + epsilon + jnp.exp(log_floor))
    return y * scale + bias


def _floored(module: nn.Module, x: jax.Array, scale, bias) -> jax.Array:
    """`floored_normalise` of NHWC x with its own per-image, per-channel statistics (in float32
    whatever the compute dtype, as nn.InstanceNorm) and `module`'s `log_floor` parameter ([C])."""
    log_floor = module.param("log_floor", nn.initializers.constant(np.log(module.floor_init)), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    mean = x32.mean(axis=(1, 2), keepdims=True)
    var = jnp.square(x32 - mean).mean(axis=(1, 2), keepdims=True)
    y = floored_normalise(x32, mean, var, scale, bias, log_floor, module.epsilon)
    return y.astype(module.dtype or x.dtype)


class FlooredInstanceNorm(nn.Module):
    """Instance norm that divides by sqrt(var + floor) with a learned floor per channel, not by
    sqrt(var + 1e-5): an image whose channel varies little is not amplified to unit variance.

    Plain instance norm scales every image's channel to unit variance, so a nearly flat channel
    (a sky, a wall) is amplified many times; a style network learns to stop that by painting a
    bright disc there, whose variance then dominates the channel's statistics for the whole image
    (results/discs/README.md). With a floor the network has a direct way to limit the gain.
    `floor_init` is the initial floor (exp(log_floor)), in units of the layer input's variance.
    """

    epsilon: float = 1e-5
    floor_init: float = 1.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones_init(), (c,))
        bias = self.param("bias", nn.initializers.zeros_init(), (c,))
        return _floored(self, x, scale, bias)


class ConditionalFlooredInstanceNorm(nn.Module):
    """`FlooredInstanceNorm` with a gamma and beta per style, as `ConditionalInstanceNorm`; the floor
    is one per channel, shared by the styles (it concerns the shared convolutions' activations)."""

    epsilon: float = 1e-5
    floor_init: float = 1.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, style: jax.Array | None = None) -> jax.Array:
        gamma, beta = _style_affine(self, style, x.shape[-1])
        return _floored(self, x, gamma, beta)


_PHASE = np.array([[[1, 0, 0], [0, 1, 1]],
                   [[1, 1, 0], [0, 0, 1]]], np.float32)


class NearestUpConv(nn.Module):
    """Nearest-neighbour x2 upsampling followed by a 3x3 conv, computed without upsampling.

    Same parameters as `nn.Conv(features, (3, 3))` applied to the upsampled image, and the same
    result: each of the four output phases (row and column parity) reads only a 2x2 window of the
    low-resolution input, with a kernel made by summing taps. So one 2x2 conv of the input
    (padded by 1) with 4x the output channels, sliced per phase and interleaved, does it, with 4/9
    of the multiplications of the upsample-then-conv form and no 4x larger upsampled tensor. Zero
    padding of the upsampled image equals zero padding here; its reflection padding equals edge
    padding here (`edge_pad`).
    """

    features: int
    edge_pad: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        n, h, w, c = x.shape
        f = self.features
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, c, f))
        bias = self.param("bias", nn.initializers.zeros_init(), (f,)).astype(self.dtype)
        windows = jnp.einsum("pay,qbx,yxio->abipqo", _PHASE, _PHASE, kernel).reshape(2, 2, c, 4 * f)
        x, windows = x.astype(self.dtype), windows.astype(self.dtype)
        if self.edge_pad:
            y = conv2d(jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge"), windows)
        else:
            y = conv2d(x, windows, padding=1)
        y = y.reshape(n, h + 1, w + 1, 2, 2, f)  # phase (p, q) of pixel (i, j) is at (i + p, j + q)
        rows = [jnp.stack([y[:, p: p + h, q: q + w, p, q] for q in (0, 1)], axis=3) for p in (0, 1)]
        return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, f) + bias
