"""The bright-disc detector against pictures whose discs are known."""

import numpy as np
import pytest

from fastnst import discs


def _textured(h=120, w=160, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(128, 30, (h, w, 3)), 0, 255).astype(np.float32)


def _disc(h, w, cy, cx, r):
    yy, xx = np.mgrid[:h, :w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_a_painted_disc_is_found_with_its_area_and_a_blown_out_sky_is_not():
    photo = _textured()
    disc = _disc(120, 160, 40, 50, 12)
    out = photo.copy()
    out[disc] = 250.0
    got = discs.disc_area(out, photo)
    assert got["count"] == 1
    # the whole disc, rim included (a neighbouring bright pixel of the texture may join it)
    assert disc.mean() <= got["area"] <= 1.05 * disc.mean()
    assert discs.disc_area(photo, photo) == {"area": 0.0, "count": 0}
    sky = photo.copy()
    sky[disc] = 250.0  # the photo itself is blown out there: not the network's doing
    assert discs.disc_area(out, sky)["area"] == 0.0
    cyan = photo.copy()
    cyan[disc] = (0.0, 252.0, 252.0)  # saturated, flat, luminance 177: a disc all the same
    assert discs.disc_area(cyan, photo)["count"] == 1
    blue = photo.copy()
    blue[:60] = (90.0, 160.0, 235.0)  # a clear blue sky, bright in one channel and flat, kept: no disc
    white = np.where(disc[..., None], 250.0, blue)  # ... with a white disc painted into it: one
    assert discs.disc_area(blue, blue)["area"] == 0.0 and discs.disc_area(white, blue)["count"] == 1
    assert disc.mean() <= discs.disc_area(white, blue)["area"] <= 1.05 * disc.mean()


def test_specks_and_dark_or_textured_patches_are_not_discs():
    photo = _textured(seed=1)
    out = photo.copy()
    out[_disc(120, 160, 60, 80, 1)] = 255.0  # a speck below min_area
    out[_disc(120, 160, 30, 30, 12)] = 40.0  # flat but dark
    bright_noisy = _disc(120, 160, 90, 120, 12)
    out[bright_noisy] = 230.0 + np.random.default_rng(2).normal(0, 20, (int(bright_noisy.sum()), 3))
    assert discs.disc_area(np.clip(out, 0, 255), photo)["area"] == 0.0
    two = photo.copy()
    two[_disc(120, 160, 30, 30, 10) | _disc(120, 160, 90, 120, 10)] = 252.0
    assert discs.disc_area(two, photo)["count"] == 2


def test_spike_term_against_numpy_and_what_the_step_feeds_it(vgg_params, tmp_path):
    """The spike penalty (losses.spike_term) against a NumPy float64 reference on a map with one
    planted spike; in the train step it reads every instance norm's output (none of a batch-norm
    net: refused), and a few steps on it alone shrink it."""
    import jax
    import jax.numpy as jnp

    from fastnst import losses
    from fastnst.step import StepInputs, jit_step
    from tests.helpers import tiny_config, tiny_step

    rng = np.random.default_rng(0)
    y = rng.normal(0.0, 1.0, (2, 16, 16, 4)).astype(np.float32)
    y[0, 3:6, 3:6, 1] += 40.0  # a disc in channel 1 of image 0: 9 of 256 pixels hold most of its variance

    def reference(maps, t):
        total = 0.0
        for a in maps:
            a = np.asarray(a, np.float64)
            z = (a - a.mean(axis=(1, 2), keepdims=True)) / (a.std(axis=(1, 2), keepdims=True) + 1e-3)
            total += np.mean(np.maximum(np.abs(z) - t, 0.0) ** 2)
        return total / len(maps)

    got = float(losses.spike_term(norm_outputs=(jnp.asarray(y), jnp.asarray(y[:, ::2])), spike_threshold=3.0))
    assert got == pytest.approx(reference([y, y[:, ::2]], 3.0), rel=1e-5) and got > 1e-3
    assert float(losses.spike_term(norm_outputs=(jnp.asarray(y[1:]),), spike_threshold=6.0)) == 0.0

    cfg = tiny_config(tmp_path)
    cfg.model.norm = "instance"
    cfg.loss.update(content=0.0, style=0.0, tv=0.0, spike=100.0, spike_threshold=1.5)
    t = tiny_step(vgg_params, cfg, lr=3e-3)
    inputs = StepInputs(vgg_params, t.grams, t.spec)
    _, captured = t.net.apply({"params": t.state.params}, t.x, train=True, mutable=["intermediates"],
                              capture_intermediates=True)
    norms = [v for path, v in jax.tree_util.tree_leaves_with_path(captured["intermediates"])
             if "norm" in jax.tree_util.keystr(path)]  # (norm_in, res0/norm0, ...: only norms say norm)
    assert len(norms) == 15  # in, 2 down, 10 residual, 2 up: each instance norm's output
    state, first = jit_step()(t.state, t.batch, inputs)
    assert set(first) == {"loss", "spike"} and float(first["spike"]) == pytest.approx(
        100.0 * reference(norms, 1.5), rel=1e-4)
    for _ in range(5):
        state, last = jit_step()(state, t.batch, inputs)
    assert float(last["spike"]) < 0.8 * float(first["spike"])
    cfg.model.norm = "batch"
    with pytest.raises(ValueError, match="whole-image normalisation"):
        jit_step()(tiny_step(vgg_params, cfg).state, t.batch, StepInputs(vgg_params, t.grams, t.spec))
    from fastnst import schema
    from fastnst.errors import ConfigError

    with pytest.raises(ConfigError, match=r"loss.spike acts on instance norms' outputs; model.norm='batch'"):
        schema.validate(cfg)  # (and a config says so before any work)


def test_the_spike_term_reads_each_whole_image_norm_once():
    """A conditional instance norm holds an instance norm inside: the step's capture filter takes
    the layer's output, not the inner one's as a second (15 norms for every whole-image kind)."""
    import jax
    import jax.numpy as jnp

    from fastnst import nets, step, variants

    for norm in [k for k, v in variants.NORMS.items() if v.image_stats]:
        extra = {"num_styles": 2} if variants.NORMS[norm].multistyle else {}
        net = nets.build(dict(task="style", scale=1, norm=norm, upsample="resize_conv", padding="paper",
                              width=0.25, **extra))
        kw = {"style": nets.style_weights(net, 0)} if nets.is_multistyle(net) else {}
        _, st = net.apply(nets.init(net, jax.random.key(0), 32), jnp.zeros((1, 32, 32, 3)),
                          mutable=["intermediates"], capture_intermediates=step._whole_image_norms, **kw)
        assert len(jax.tree.leaves(st["intermediates"])) == 15, norm
