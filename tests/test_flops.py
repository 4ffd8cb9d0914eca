"""FLOP counts against hand counts, and the throughput row's arithmetic."""

import jax
import jax.numpy as jnp
import pytest

from fastnst import bench_train, flops, vgg

# VGG-16's convolutions up to relu4_3: (input channels, output channels, pooled before it)
_VGG = [(3, 64, 0), (64, 64, 0), (64, 128, 1), (128, 128, 0), (128, 256, 1), (256, 256, 0),
        (256, 256, 0), (256, 512, 1), (512, 512, 0), (512, 512, 0)]


def test_vgg_forward_count_equals_the_hand_count():
    """2 x H x W x 9 x Cin x Cout per 3x3 'same' conv, the side halved at each pooling."""
    size, hand = 64, 0.0
    for cin, cout, pooled in _VGG:
        size //= 2 if pooled else 1
        hand += 2 * size * size * 9 * cin * cout
    got = flops.jaxpr_flops(lambda p, x: vgg.features(p, x, ["relu4_3"]), vgg.random_params(),
                            jnp.zeros((1, 64, 64, 3)))
    assert got == pytest.approx(hand, rel=1e-9)


def test_products_and_scans_are_counted():
    a, b = jnp.zeros((3, 5, 7)), jnp.zeros((3, 7, 11))
    assert flops.jaxpr_flops(lambda x, y: jnp.einsum("bij,bjk->bik", x, y), a, b) == 2 * 3 * 5 * 7 * 11

    def scanned(x, y):
        return jax.lax.scan(lambda c, _: (c, x[0] @ y[0]), 0.0, None, length=4)[1]

    assert flops.jaxpr_flops(scanned, a, b) == 4 * 2 * 5 * 7 * 11
    x, k = jnp.zeros((2, 9, 9, 4)), jnp.zeros((3, 3, 4, 6))
    conv = flops.jaxpr_flops(lambda x, k: jax.lax.conv_general_dilated(
        x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")), x, k)
    assert conv == 2 * (2 * 7 * 7 * 6) * (3 * 3 * 4)


def test_throughput_rows_are_consistent():
    """A tiny style network on the CPU: FLOPs per image do not depend on the batch (XLA's count
    within 2%), TFLOP/s = FLOPs per image x images/s, and the fraction is of the measured peak."""
    loss = {"content": 1.0, "content_layers": ("relu2_2",), "style": 1.0, "style_layers": ("relu1_2",),
            "tv": 1e-5}
    variant = {"norm": "instance", "upsample": "resize_conv", "padding": "reflect_same", "width": 0.125}
    rows = bench_train.throughput(loss, batches=(1, 2), size=32, variant=variant, steps_per_call=2, calls=1,
                                  photos=3)
    assert [r["batch"] for r in rows] == [1, 2]
    for r in rows:
        per = r["gflop_per_image_xla"] or r["gflop_per_image_traced"]
        assert r["images_per_s"] > 0 and per > 0
        assert r["achieved_tflop_s"] == pytest.approx(per * r["images_per_s"] / 1e3, rel=1e-9)
        assert r["fraction_of_peak"] == pytest.approx(r["achieved_tflop_s"] / r["peak_tflop_s"], rel=1e-9)
        assert 0 < r["fraction_of_peak"] < 1.5  # (a matmul is the CPU's practical peak; noise allowed)
    if rows[0]["gflop_per_image_xla"]:
        assert rows[0]["gflop_per_image_xla"] == pytest.approx(rows[1]["gflop_per_image_xla"], rel=0.02)
    assert rows[0]["gflop_per_image_rule"] == rows[1]["gflop_per_image_rule"]
    md = bench_train.throughput_markdown(rows, {"device": "cpu", "platform": "cpu", "jax": jax.__version__})
    assert md.count("\n| style |") == 2
