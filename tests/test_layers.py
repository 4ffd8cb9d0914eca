"""The CPU form of the convolution equals XLA's plain convolution, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastnst.layers import conv2d

CASES = [  # x shape, kernel shape, stride, padding: each branch of the forward and the VJP
    ((2, 9, 11, 8), (3, 3, 8, 6), 1, 0), ((2, 9, 11, 8), (3, 3, 8, 6), 1, 1),
    ((2, 9, 11, 8), (3, 3, 8, 6), 2, 0), ((2, 10, 11, 8), (3, 3, 8, 6), 2, 1),
    ((1, 12, 13, 8), (9, 9, 8, 3), 1, 0), ((1, 12, 13, 3), (9, 9, 3, 8), 1, 4),
    ((2, 5, 7, 8), (2, 2, 8, 12), 1, 1),  # its input gradient needs no padding
]


@pytest.mark.parametrize("shape,kshape,stride,padding", CASES)
def test_cpu_conv_matches_xla(shape, kshape, stride, padding):
    x = jax.random.normal(jax.random.key(0), shape)
    w = jax.random.normal(jax.random.key(1), kshape)

    def conv(impl):
        return lambda x, w: conv2d(x, w, stride, padding, impl=impl)

    ours, ref = conv("cpu")(x, w), conv("xla")(x, w)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)

    def loss(impl):
        return lambda x, w: jnp.sum(jnp.sin(conv(impl)(x, w)))

    ours = jax.grad(loss("cpu"), (0, 1))(x, w)
    ref = jax.grad(loss("xla"), (0, 1))(x, w)
    for a, b in zip(ours, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-4)


def test_unknown_impl():
    with pytest.raises(ValueError, match="unknown conv impl"):
        conv2d(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2)), impl="gemm")
