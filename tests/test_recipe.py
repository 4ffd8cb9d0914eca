"""Several networks in one step (side by side) and the budgeted recipe job (issue 26)."""

import jax
import numpy as np

from fastnst import losses
from fastnst.step import (
    create_train_state,
    jit_side_by_side_step,
    jit_step,
    side_by_side_step,
    stack_states,
    unstack_state,
)
from tests.helpers import tiny_config, tiny_step


def _three_models(vgg_params, tmp_path, lr=1e-4):
    t = tiny_step(vgg_params, tiny_config(tmp_path), lr=lr)
    states = [create_train_state(t.net, jax.random.key(k), lr=lr) for k in range(3)]
    rng = np.random.default_rng(1)
    styles = [rng.uniform(0, 255, (32, 32, 3)).astype(np.float32) for _ in range(3)]
    grams = [losses.style_targets(vgg_params, s, t.spec.style_layers, 32) for s in styles]
    return t, states, grams


def test_side_by_side_step_equals_separate_steps(vgg_params, tmp_path):
    t, states, grams = _three_models(vgg_params, tmp_path)
    stacked = stack_states(states)  # (before the separate steps, which donate their states)
    alone = []
    for s, g in zip(states, grams, strict=True):
        for _ in range(2):
            s, m = jit_step()(s, t.batch, vgg_params, g, t.spec, None, "float32")
        alone.append((s, m))
    together = jax.tree.map(lambda *x: np.stack(x), *grams)
    for _ in range(2):
        stacked, ms = jit_side_by_side_step()(stacked, t.batch, vgg_params, together, t.spec, None, "float32")
    assert ms["loss"].shape == (3,)
    for i, (s, m) in enumerate(alone):
        # vmap batches the convolutions differently, so float32 sums are ordered differently:
        # equal to rounding (relative 1e-4 after two Adam steps), not bit for bit.
        np.testing.assert_allclose(ms["loss"][i], m["loss"], rtol=1e-4)
        mine = unstack_state(stacked, i)
        # Compared through the outputs with a small lr, not leaf by leaf: Adam's first steps move
        # every parameter by about +-lr whatever the size of its gradient, so where a gradient is
        # rounding noise (e.g. a conv bias right before an instance norm) the sign is arbitrary.
        # With lr 1e-4 that moves outputs by at most ~0.01 of 255.
        np.testing.assert_allclose(t.net.apply({"params": mine.params}, t.x),
                                   t.net.apply({"params": s.params}, t.x), atol=0.05)
        assert int(mine.step) == 2
    # each network took its own step (towards its own style from its own start)
    assert len({round(float(v), 3) for v in ms["style"]}) == 3


def test_side_by_side_shares_the_content_pass(vgg_params, tmp_path):
    """VGG's first convolution (3 -> 64 channels) runs once on the N content targets, and once on
    the M x N outputs of the networks: the content pass is not repeated per model."""
    t, states, grams = _three_models(vgg_params, tmp_path)
    together = jax.tree.map(lambda *x: np.stack(x), *grams)
    jaxpr = jax.make_jaxpr(side_by_side_step, static_argnums=(4, 6))(
        stack_states(states), t.batch, vgg_params, together, t.spec, None, "float32")
    n = t.batch["target"].shape[0]
    firsts = []

    def walk(jx):
        for eq in jx.eqns:
            if eq.primitive.name == "conv_general_dilated" and eq.invars[1].aval.shape[-2:] == (3, 64):
                firsts.append(eq.invars[0].aval.shape[0])
            for v in eq.params.values():
                if hasattr(v, "jaxpr"):
                    walk(v.jaxpr)

    walk(jaxpr.jaxpr)
    assert sorted(firsts)[:2] == [n, 3 * n], firsts
    assert firsts.count(n) == 1, firsts


def _side_by_side_config(tmp_path, steps=4):
    from fastnst import images

    cfg = tiny_config(tmp_path, steps=steps)
    rng = np.random.default_rng(5)
    cfg.style_images = tuple(str(images.save_image(tmp_path / f"{n}.png", rng.uniform(0, 255, (48, 48, 3))))
                             for n in ("dots", "waves"))
    return cfg


def test_train_side_by_side_exports_each_network_and_resumes_bit_identically(tmp_path, weights_cache):
    import json

    from fastnst import modelfile, stylize, train

    cfg = _side_by_side_config(tmp_path)
    straight = train.train_and_evaluate(cfg, tmp_path / "straight", progress=False)
    assert [p.name for p in straight.model_paths] == ["model_dots.msgpack", "model_waves.msgpack"]
    a, b = (modelfile.load_model(p) for p in straight.model_paths)
    assert a.meta["style_image"].endswith("dots.png") and a.meta["steps"] == 4
    assert set(a.meta["final_metrics"]) == {"loss", "content", "style", "tv"}
    photo = np.random.default_rng(0).uniform(0, 255, (32, 32, 3))
    assert not np.allclose(stylize.apply(a, photo), stylize.apply(b, photo))
    line = json.loads((tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()[-1])
    assert abs(line["loss"] - line["dots/loss"] - line["waves/loss"]) < 1e-3 * line["loss"]

    def stop_at_2(step, flag):
        if step == 2:
            flag.set = True

    assert train.train_and_evaluate(cfg, tmp_path / "resumed", progress=False, on_step=stop_at_2).interrupted
    resumed = train.train_and_evaluate(cfg, tmp_path / "resumed", progress=False)
    for p, q in zip(straight.model_paths, resumed.model_paths, strict=True):
        for x, y in zip(jax.tree.leaves(modelfile.load_model(p).variables),
                        jax.tree.leaves(modelfile.load_model(q).variables), strict=True):
            np.testing.assert_array_equal(x, y)


def test_side_by_side_config_rules(tmp_path):
    import pytest

    from fastnst import schema
    from fastnst.errors import ConfigError

    cfg = _side_by_side_config(tmp_path)
    assert schema.validate(cfg).side_by_side == 2
    same = cfg.copy_and_resolve_references()
    same.style_images = (cfg.style_images[0], cfg.style_images[0])
    with pytest.raises(ConfigError, match="share a name"):
        schema.validate(same)
    nostyle = cfg.copy_and_resolve_references()
    nostyle.loss.style = 0.0
    with pytest.raises(ConfigError, match="need the style loss"):
        schema.validate(nostyle)
