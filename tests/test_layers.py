"""The CPU matmul forms of convolution equal XLA's convolution, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastnst.layers import conv2d

CASES = [((2, 9, 11, 8), (3, 3, 8, 6), 1, "gemm"), ((2, 9, 11, 8), (3, 3, 8, 6), 2, "gemm"),
         ((1, 12, 13, 8), (9, 9, 8, 3), 1, "col2im")]


@pytest.mark.parametrize("shape,kshape,stride,impl", CASES)
def test_matmul_conv_matches_xla(shape, kshape, stride, impl):
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), kshape)
    np.testing.assert_allclose(conv2d(x, w, stride, impl=impl), conv2d(x, w, stride, impl="xla"),
                               rtol=1e-5, atol=1e-4)

    def loss(impl):
        return lambda x, w: jnp.sum(jnp.sin(conv2d(x, w, stride, impl=impl)))

    ours = jax.grad(loss(impl), (0, 1))(x, w)
    ref = jax.grad(loss("xla"), (0, 1))(x, w)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-4)
