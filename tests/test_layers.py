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


def test_floored_instance_norm_matches_numpy_and_limits_the_gain_of_a_flat_channel():
    """Against a float64 NumPy reference with a different floor per channel; and the point of the
    floor: a nearly flat channel (std 0.01) comes out near its own scale, not at unit variance, while
    a channel that varies much more than its floor is normalised almost as instance norm does."""
    import flax.linen as nn

    from fastnst.layers import FlooredInstanceNorm

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 7, 3)) * np.array([0.01, 1.0, 30.0]) + np.array([5.0, -2.0, 0.5])
    layer = FlooredInstanceNorm()
    params = {"scale": np.array([1.5, 0.5, 2.0]), "bias": np.array([0.1, -0.2, 0.3]),
              "log_floor": np.log(np.array([1.0, 0.5, 2.0]))}
    y = np.asarray(layer.apply({"params": jax.tree.map(jnp.float32, params)}, jnp.float32(x)))
    mean = x.mean(axis=(1, 2), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(1, 2), keepdims=True)
    want = (x - mean) / np.sqrt(var + 1e-5 + np.exp(params["log_floor"])) * params["scale"] + params["bias"]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)  # float32 rounding of a few ops, any CPU
    normalised = (y - params["bias"]) / params["scale"]
    assert normalised[..., 0].std() < 0.02  # the flat channel: std 0.01 / sqrt(1 + 1e-4), not 1
    plain = np.asarray(nn.InstanceNorm().apply({"params": {"scale": jnp.ones(3), "bias": jnp.zeros(3)}},
                                               jnp.float32(x)))
    # var 900 against a floor of 2: 1 - sqrt(900 / 902) = 1.1e-3 of each value, not rounding
    np.testing.assert_allclose(normalised[..., 2], plain[..., 2], rtol=2e-3, atol=2e-3)
