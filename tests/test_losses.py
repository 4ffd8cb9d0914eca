"""Losses against NumPy references, and their invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastnst import losses

RNG = np.random.default_rng(0)


def _gram_np(f):
    n, h, w, c = f.shape
    psi = f.reshape(n, h * w, c).astype(np.float64)
    return np.einsum("npc,npd->ncd", psi, psi) / (c * h * w)


def test_feature_and_pixel_loss_match_numpy():
    a, b = RNG.normal(size=(3, 5, 6, 7)), RNG.normal(size=(3, 5, 6, 7))
    ref = np.mean([np.sum((a[i] - b[i]) ** 2) / a[i].size for i in range(3)])
    np.testing.assert_allclose(losses.feature_loss(jnp.asarray(a), jnp.asarray(b)), ref, rtol=1e-5)
    np.testing.assert_allclose(losses.pixel_loss(jnp.asarray(a), jnp.asarray(b)), ref, rtol=1e-5)


def test_gram_matches_numpy_and_is_symmetric_psd():
    f = RNG.uniform(0, 3, size=(2, 7, 5, 6)).astype(np.float32)
    g = np.asarray(losses.gram(jnp.asarray(f)))
    np.testing.assert_allclose(g, _gram_np(f), rtol=1e-5)
    np.testing.assert_allclose(g, np.transpose(g, (0, 2, 1)), rtol=1e-6)
    assert np.linalg.eigvalsh(g.astype(np.float64)).min() > -1e-6


def test_style_loss_with_different_sizes_matches_numpy():
    pred = {"a": RNG.normal(size=(2, 8, 9, 4)), "b": RNG.normal(size=(2, 4, 5, 6))}
    style = {"a": RNG.normal(size=(1, 13, 11, 4)), "b": RNG.normal(size=(1, 7, 6, 6))}
    weights = {"a": 0.5, "b": 2.0}
    ref = sum(w * np.mean(np.sum((_gram_np(pred[k]) - _gram_np(style[k])) ** 2, axis=(1, 2)))
              for k, w in weights.items())
    grams = {k: losses.gram(jnp.asarray(v, jnp.float32)) for k, v in style.items()}
    got = losses.style_loss({k: jnp.asarray(v, jnp.float32) for k, v in pred.items()}, grams, weights)
    np.testing.assert_allclose(got, ref, rtol=1e-4)


def test_tv_matches_numpy_and_is_zero_on_constant():
    x = RNG.uniform(0, 255, size=(2, 6, 7, 3))
    ref = np.mean([np.sum(np.diff(x[i], axis=0) ** 2) + np.sum(np.diff(x[i], axis=1) ** 2)
                   for i in range(2)]) / x[0].size
    np.testing.assert_allclose(losses.tv_loss(jnp.asarray(x)), ref, rtol=1e-5)
    assert float(losses.tv_loss(jnp.full((1, 9, 9, 3), 77.0))) == 0.0


def test_zero_on_identical_inputs_and_finite_gradients():
    f = {"r": jnp.asarray(RNG.uniform(size=(2, 4, 4, 3)), jnp.float32)}
    x = jnp.asarray(RNG.uniform(0, 255, size=(2, 8, 8, 3)), jnp.float32)
    grams = {"r": losses.gram(f["r"])}
    total, parts = losses.total_loss({"content": 1.0, "style": 1.0, "pixel": 1.0}, pred=x,
                                     pred_feats=f, content_feats=f, style_grams=grams, target=x)
    assert float(total) == pytest.approx(0.0, abs=1e-10)
    assert set(parts) == {"content", "style", "pixel"}

    def loss(x, f):
        return losses.total_loss({"content": 2.0, "style": 3.0, "tv": 1e-4}, pred=x,
                                 pred_feats=f, content_feats={"r": f["r"] * 0.5},
                                 style_grams={"r": grams["r"] * 2.0})[0]

    gx, gf = jax.grad(loss, argnums=(0, 1))(x, f)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gf["r"]))


def test_total_is_sum_of_weighted_parts():
    pred = {"r": jnp.asarray(RNG.normal(size=(1, 4, 4, 2)), jnp.float32)}
    content = {"r": jnp.asarray(RNG.normal(size=(1, 4, 4, 2)), jnp.float32)}
    x = jnp.asarray(RNG.uniform(0, 255, size=(1, 5, 5, 3)), jnp.float32)
    w = {"content": 3.0, "tv": 1e-3, "style": 0.0}
    total, parts = losses.total_loss(w, pred=x, pred_feats=pred, content_feats=content)
    assert set(parts) == {"content", "tv"}
    np.testing.assert_allclose(parts["content"], 3.0 * losses.feature_loss(pred["r"], content["r"]),
                               rtol=1e-6)
    np.testing.assert_allclose(total, parts["content"] + parts["tv"], rtol=1e-6)
    with pytest.raises(ValueError, match="unknown loss term"):
        losses.total_loss({"bogus": 1.0}, pred=x)


@pytest.fixture
def brightness_term():
    """A test-only loss term: one function, one registry entry; removed afterwards."""

    @losses.register("brightness")
    def brightness(*, pred):
        return jnp.mean(pred) / 255.0

    yield brightness
    del losses.REGISTRY["brightness"]


def test_a_new_term_is_one_function_and_one_config_key(brightness_term, vgg_params, tmp_path):
    from fastnst.step import StepInputs, jit_step
    from tests.helpers import tiny_config, tiny_step

    cfg = tiny_config(tmp_path)
    cfg.loss.brightness = 0.5  # the config key
    t = tiny_step(vgg_params, cfg)
    assert t.spec.weight("brightness") == 0.5
    pred = t.net.apply({"params": t.state.params}, t.x, train=True)
    _, metrics = jit_step()(t.state, t.batch, StepInputs(vgg_params, t.grams, t.spec))
    assert set(metrics) == {"loss", "content", "style", "tv", "brightness"}
    np.testing.assert_allclose(metrics["brightness"], 0.5 * float(jnp.mean(pred)) / 255.0, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], sum(float(metrics[k]) for k in
                                                    ("content", "style", "tv", "brightness")), rtol=1e-5)


def test_loss_spec_rejects_unknown_keys_and_missing_inputs():
    from fastnst.errors import ConfigError

    with pytest.raises(ConfigError, match=r"unknown loss key\(s\) \['contnet'\]; known: content"):
        losses.LossSpec.from_config({"contnet": 1.0})
    with pytest.raises(ValueError, match="needs input"):
        losses.total_loss({"pixel": 1.0}, pred=jnp.zeros((1, 4, 4, 3)))
    # a misspelt input is an error, not silently dropped
    with pytest.raises(ValueError, match=r"no loss term reads input\(s\) \['targte'\]"):
        losses.total_loss({"pixel": 1.0}, pred=jnp.zeros((1, 4, 4, 3)), targte=jnp.zeros((1, 4, 4, 3)))


def test_a_term_declares_its_inputs_and_options():
    with pytest.raises(ValueError, match="keyword-only and named"):
        losses.register("loose")(lambda *, pred, **_: pred.mean())
    with pytest.raises(ValueError, match="keyword-only and named"):
        losses.register("positional")(lambda pred: pred.mean())
    assert "loose" not in losses.REGISTRY and "positional" not in losses.REGISTRY
    with pytest.raises(ValueError, match="already defined"):
        losses.register("tv")(lambda *, pred: pred.mean())
    # options live with the term: their config keys, defaults and types come from the registration
    assert losses.option_keys()["stability_noise"] == ("stability", "noise")
    spec = losses.LossSpec.from_config({"stability": 1.0, "stability_shift": 3})
    assert spec.option("stability", "shift") == 3 and spec.option("stability", "noise") == 8.0
    assert losses.LossSpec.from_config({"tv": 1.0, "stability_shift": 3}).options == ()  # term off


def test_an_images_objective_leaves_out_the_terms_that_regularise_a_network():
    """Stability and spike read the network (a second pass, its norm layers): an image alone has
    no such inputs, so L-BFGS and the evaluations score by the rest, and a video model (stability
    on) is scored by the same objective as its plain twin."""
    from fastnst import perceptual

    loss = {"content": 1.0, "style": 2.0, "tv": 1e-5, "stability": 50.0, "stability_shift": 2,
            "spike": 3.0, "content_layers": ("relu2_2",), "style_layers": ("relu1_2",)}
    full = losses.LossSpec.from_config(loss)
    image = full.of_image()
    assert dict(full.weights).keys() == {"content", "style", "tv", "stability", "spike"}
    assert dict(image.weights) == {"content": 1.0, "style": 2.0, "tv": 1e-5}
    assert image.options == () and image.style_layers == full.style_layers
    plain = {k: v for k, v in loss.items() if not k.startswith(("stability", "spike"))}
    for settings in (loss, plain):
        assert perceptual.of_model({"objective": perceptual.record(settings, 256)}) == (image, 256)
