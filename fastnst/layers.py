"""A 2-D convolution layer that XLA:CPU runs fast, shared by the transformation nets and VGG-16.

`Conv` has exactly `nn.Conv`'s parameters (`kernel` HWIO, `bias`) and initialisers, so weights and
checkpoints are interchangeable. What differs is how the convolution is expressed:

* on accelerators, `lax.conv_general_dilated` (cuDNN and friends are fast);
* on the CPU, as matrix products, because XLA:CPU's convolutions run at 10-25 GFLOP/s on this
  machine while its matrix products reach ~90 (measured; see docs/cpu_performance.md):
  - small kernels with wide inputs: one GEMM per tap on a shifted (strided) view of the input,
    accumulated (`sum_ij x[i::s, j::s] @ W[i, j]`), which XLA fuses without an im2col copy;
  - few output channels (the final 9x9 conv to RGB): one GEMM to every tap's output
    (`x @ W` with kh*kw*Cout columns), then a shifted sum ("col2im");
  - few input channels (the first 9x9 conv from RGB, the first stride-2 conv): XLA's own
    convolution, which measured best there.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

_DN = ("NHWC", "HWIO", "NHWC")


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1, *, impl: str = "auto") -> jax.Array:
    """VALID cross-correlation of NHWC `x` with an HWIO `kernel` (pad beforehand)."""
    kh, kw, cin, cout = kernel.shape
    if impl == "auto":
        narrow = cin <= 4 or (stride > 1 and cin < 64)  # XLA's conv measured faster there
        impl = "xla" if jax.default_backend() != "cpu" or narrow else (
            "col2im" if cout <= 4 and stride == 1 else "gemm")
    if impl == "xla":
        return _xla_conv(x, kernel, stride)
    return _matmul_conv(x, kernel, stride, impl)


def _xla_conv(x, kernel, stride):
    return jax.lax.conv_general_dilated(x, kernel, (stride, stride), "VALID", dimension_numbers=_DN)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _matmul_conv(x, kernel, stride, impl):
    """A convolution computed as matrix products, with a hand-written gradient (autodiff of the
    per-tap form would materialise a full-size tensor per tap: far more memory)."""
    return _matmul_conv_raw(x, kernel, stride, impl)


def _matmul_conv_raw(x, kernel, stride, impl):
    kh, kw, cin, cout = kernel.shape
    n, h, w, _ = x.shape
    oh, ow = (h - kh) // stride + 1, (w - kw) // stride + 1
    if impl == "gemm":
        out = None
        for i in range(kh):
            for j in range(kw):
                view = x[:, i: i + stride * (oh - 1) + 1: stride, j: j + stride * (ow - 1) + 1: stride]
                term = view @ kernel[i, j]
                out = term if out is None else out + term
        return out
    if impl == "col2im":
        taps = x @ kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)
        taps = taps.reshape(n, h, w, kh, kw, cout)
        out = None
        for i in range(kh):
            for j in range(kw):
                term = taps[:, i: i + oh, j: j + ow, i, j, :]
                out = term if out is None else out + term
        return out
    raise ValueError(f"unknown conv impl {impl!r}")


def _matmul_conv_fwd(x, kernel, stride, impl):
    return _matmul_conv(x, kernel, stride, impl), (x, kernel)


def _matmul_conv_bwd(stride, impl, residuals, g):
    x, kernel = residuals
    kh, kw, _, _ = kernel.shape
    if impl != "gemm" or stride != 1:  # strided or to-RGB convs: XLA's own gradient
        return jax.vjp(lambda a, b: _xla_conv(a, b, stride), x, kernel)[1](g)
    # dx: full correlation of g with the flipped, transposed kernel, again as matrix products.
    gp = jnp.pad(g, ((0, 0), (kh - 1, kh - 1), (kw - 1, kw - 1), (0, 0)))
    dx = _matmul_conv_raw(gp, kernel[::-1, ::-1].transpose(0, 1, 3, 2), 1, "gemm")
    # dW[i, j] = sum over batch and positions of x(shifted by i, j)^T g.
    oh, ow = g.shape[1], g.shape[2]
    dk = jnp.stack([jnp.stack([jnp.einsum("nhwc,nhwd->cd", x[:, i: i + oh, j: j + ow], g)
                               for j in range(kw)]) for i in range(kh)])
    return dx.astype(x.dtype), dk.astype(kernel.dtype)


_matmul_conv.defvjp(_matmul_conv_fwd, _matmul_conv_bwd)


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
        if self.padding:
            p = self.padding
            x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        return conv2d(x, kernel, self.strides, impl=self.impl) + bias.astype(self.dtype)
