"""Many styles in one network: conditional instance norm, choosing and mixing styles, training
towards several style images at once, the model file, and `bin/stylize --style`."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastnst import data, images, modelfile, nets, schema, styles, stylize, train
from fastnst.errors import ConfigError
from tests.helpers import one_line_error, run_cli, tiny_config
from tests.test_tiling import TILED_MAX_DIFF

# Conditional vs baked instance norm: the same arithmetic in another order ((x-m)*r*g vs
# (x-m)*(r*g)), through 15 norm layers of a small random net. Measured on this CPU over 3 nets x 3
# styles: max 6.6e-4 on 0..255 (XLA optimisations on or off); allowed 4x that, as for tiling.
BAKED_MAX_DIFF = 2.7e-3


def _multistyle_model(num_styles=3, seed=0) -> modelfile.Model:
    """A small multi-style net with distinct random gamma/beta per style (not the initial ones, so
    selecting the wrong row would show)."""
    cfg = nets.model_config({"task": "style", "norm": "conditional_instance", "upsample": "resize_conv",
                             "padding": "reflect_same", "width": 0.25, "num_styles": num_styles})
    net = nets.build(cfg)
    variables = nets.init(net, jax.random.key(seed))
    rng = np.random.default_rng(seed)

    def jitter(leaf):
        return leaf + rng.normal(0, 0.3, leaf.shape).astype(np.float32) if leaf.ndim == 2 else leaf

    variables = jax.tree.map(jitter, jax.device_get(variables))
    return modelfile.Model(config=cfg, variables=variables,
                           meta={"styles": [f"s{i}" for i in range(num_styles)]})


def _photo(h=40, w=48, seed=1):
    small = np.random.default_rng(seed).uniform(0, 255, (5, 6, 3)).astype(np.float32)
    return images.resize(small, (h, w), method="bilinear")


def test_a_selected_style_is_the_conditional_net_with_that_gamma_and_beta():
    m = _multistyle_model()
    x = jnp.asarray(_photo()[None])
    net = m.net
    for i in range(3):
        direct = np.asarray(stylize.forward(net, m.variables, x, nets.style_weights(net, i)))
        baked = styles.select(m, f"s{i}")
        assert baked.config["norm"] == "instance" and baked.meta["style_mix"] == {f"s{i}": 1.0}
        np.testing.assert_allclose(np.asarray(stylize.apply(baked, x)), direct, atol=BAKED_MAX_DIFF)
    # the styles differ (the test would pass trivially otherwise)
    a, b = (np.asarray(stylize.apply(styles.select(m, s), x)) for s in ("s0", "s1"))
    assert np.abs(a - b).max() > 5
    # a mix is the convex combination of gamma and beta, per image of a batch too
    w = jnp.asarray([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]])
    two = np.asarray(stylize.forward(net, m.variables, jnp.concatenate([x, x]), w))
    np.testing.assert_allclose(np.asarray(stylize.apply(styles.select(m, "s0:0.7,s1:0.3"), x))[0], two[0],
                               atol=BAKED_MAX_DIFF)
    np.testing.assert_allclose(np.asarray(stylize.apply(styles.select(m, "2"), x))[0], two[1],
                               atol=BAKED_MAX_DIFF)
    # a baked model runs through tiling like any instance-norm model (over budget: windows)
    from fastnst import tiling

    big, one = _photo(96, 112), styles.select(m, "s1")
    budget = tiling.activation_bytes(one.net, 64, 64)
    assert not tiling.fits(one.net, 96, 112, budget)
    tiled, whole = stylize.apply(one, big, budget=budget), stylize.apply(one, big)
    np.testing.assert_allclose(np.asarray(tiled), np.asarray(whole), atol=TILED_MAX_DIFF)


def test_style_weights_are_parsed_and_checked():
    names = ["candy", "udnie", "mosaic"]
    np.testing.assert_allclose(styles.weights("udnie", names), [0, 1, 0])
    np.testing.assert_allclose(styles.weights("candy:0.7,udnie:0.3", names), [0.7, 0.3, 0])
    np.testing.assert_allclose(styles.weights("0:1,2:3", names), [0.25, 0, 0.75])  # normalised
    for bad, match in (("wave", "unknown style 'wave'"), ("3", "unknown style"), ("candy:-1", "must be"),
                       ("candy:x", "must be"), ("candy:0", "at least one"), ("candy:", "must be"),
                       ("", "at least one")):
        with pytest.raises(ConfigError, match=match):
            styles.weights(bad, names)
    m = _multistyle_model()
    with pytest.raises(ConfigError, match="holds 3 styles .*s0, s1, s2.*--style"):
        styles.select(m, None)
    with pytest.raises(ConfigError, match="multi-style model"):
        stylize.apply(m, _photo())
    with pytest.raises(ConfigError, match="holds one style"):
        styles.select(modelfile.load_model("the_scream"), "0")


def test_the_model_file_carries_the_style_names_and_old_files_load(tmp_path):
    m = _multistyle_model(2)
    path = modelfile.save_model(tmp_path / "m.msgpack", m.config, m.variables, meta=m.meta)
    again = modelfile.load_model(path)
    assert again.config["num_styles"] == 2 and styles.names(again) == ["s0", "s1"]
    # a v2 file (before multi-style models) loads unchanged; so do the shipped v1 files
    from flax import serialization

    single = modelfile.load_model("the_scream")
    blob = serialization.msgpack_restore(modelfile.save_model(tmp_path / "s.msgpack", single.config,
                                                              single.variables).read_bytes())
    cfg = json.loads(blob["config"])
    del cfg["num_styles"]
    blob.update(format="fastnst-model-v2", config=json.dumps(cfg))
    (tmp_path / "v2.msgpack").write_bytes(serialization.msgpack_serialize(blob))
    old = modelfile.load_model(tmp_path / "v2.msgpack")
    assert old.config["num_styles"] == 1
    x = _photo()
    np.testing.assert_array_equal(np.asarray(stylize.apply(old, x)), np.asarray(stylize.apply(single, x)))
    # a file whose gamma/beta rows do not match its num_styles is refused
    bad = modelfile.Model(config={**m.config, "num_styles": 3}, variables=m.variables, meta={})
    path = modelfile.save_model(tmp_path / "bad.msgpack", bad.config, bad.variables)
    with pytest.raises(Exception, match="shape"):
        modelfile.load_model(path)


def test_batches_give_each_sample_a_style_in_turn(tmp_path):
    from tests.helpers import write_photos

    src = data.FolderSource(write_photos(tmp_path / "p", 6))
    whole = data.Batches(src, batch_size=4, image_size=32, seed=0, workers=1, num_styles=3)
    parts = [data.Batches(src, batch_size=4, image_size=32, seed=0, workers=1, num_styles=3,
                          process_index=i, process_count=2) for i in range(2)]
    for step in range(3):
        got = whole.batch(step)["style"]
        np.testing.assert_array_equal(got, (np.arange(4) + 4 * step) % 3)
        np.testing.assert_array_equal(np.concatenate([p.batch(step)["style"] for p in parts]), got)
    for b in (whole, *parts):
        b.close()


def _tiny_multistyle(tmp_path, steps=6):
    c = tiny_config(tmp_path, steps=steps)
    dots = np.full((48, 48, 3), 30.0, np.float32)
    dots[::8, ::8] = [20, 240, 250]
    second = images.save_image(tmp_path / "dots.png", dots)
    c.style_images = (c.style_image, str(second))
    c.style_image = ""
    c.model.update(norm="conditional_instance", upsample="resize_conv", num_styles=2)
    return c


def test_multistyle_config_rules(tmp_path):
    c = _tiny_multistyle(tmp_path).to_dict()
    assert schema.validate(c).style_images == tuple(c["style_images"])
    single = {**c["model"], "norm": "instance", "num_styles": 1}
    for change, match in ((dict(style_images=c["style_images"][:1]), "holds 1 images but model.num_styles"),
                          (dict(style_images="a.jpg"), "list of image paths"),
                          (dict(model={**c["model"], "norm": "instance"}), "need model.norm=conditional"),
                          (dict(loss={**c["loss"], "style": 0.0}), "needs the style loss")):
        with pytest.raises(ConfigError, match=match):
            schema.validate({**c, **change})
    # with a single-style net, several style images are several networks trained side by side
    assert schema.validate({**c, "model": single}).side_by_side == len(c["style_images"])
    with pytest.raises(ConfigError, match="for style networks"):
        nets.model_config({"task": "sr", "norm": "conditional_instance"})


def test_train_several_styles_then_stylize_with_a_mix(tmp_path):
    cfg = _tiny_multistyle(tmp_path, steps=6)
    r = train.train_and_evaluate(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(row["loss"]) for row in rows) and rows[-1]["loss"] < rows[0]["loss"]
    m = modelfile.load_model(r.model_path)
    assert styles.names(m) == ["style", "dots"] and m.config["num_styles"] == 2
    sheet = images.load_image(tmp_path / "run" / "samples" / "step_0000006.png")
    assert sheet.shape[1] > sheet.shape[0]  # the first held-out photo in both styles, side by side

    photo = images.save_image(tmp_path / "in.png", _photo())
    out = tmp_path / "out.png"
    ok = run_cli("bin/stylize", f"--model={r.model_path}", str(photo), f"--out={out}",
                 "--style=style:0.5,dots:0.5")
    assert ok.returncode == 0, ok.stderr[-1500:]
    want = stylize.apply(styles.select(m, "style:0.5,dots:0.5"), images.load_image(photo))
    assert np.abs(images.load_image(out) - np.clip(np.round(np.asarray(want)), 0, 255)).max() <= 1
    for args, match in (([], "holds 2 styles"), (["--style=wave"], "unknown style 'wave'")):
        bad = run_cli("bin/stylize", f"--model={r.model_path}", str(photo), f"--out={tmp_path / 'x.png'}",
                      *args)
        assert bad.returncode == 1 and match in one_line_error(bad)


def test_adding_a_style_trains_only_its_gamma_and_beta(tmp_path):
    from fastnst import step, warmstart

    base = _tiny_multistyle(tmp_path / "base", steps=2)
    first_path = train.train_and_evaluate(base, tmp_path / "base_run", progress=False).model_path
    first = modelfile.load_model(first_path)
    waves = np.zeros((48, 48, 3), np.float32)
    waves[:, ::5] = [240, 240, 255]
    add = _tiny_multistyle(tmp_path / "add", steps=4)
    add.style_images = (str(images.save_image(tmp_path / "waves.png", waves)),)
    add.model.num_styles = 1  # (the run holds the file's 2 styles plus this one)
    add.init_from = str(first_path)
    cfg = schema.load(add)
    assert cfg.model["num_styles"] == 3 and cfg.start.old_styles == 2
    m = modelfile.load_model(train.train_and_evaluate(cfg, tmp_path / "add_run", progress=False).model_path)
    assert styles.names(m) == ["style", "dots", "waves"]
    old, new = (jax.tree_util.tree_leaves_with_path(v["params"]) for v in (first.variables, m.variables))
    changed_rows = 0
    for (path, a), (_, b) in zip(old, new, strict=True):
        a, b = np.asarray(a), np.asarray(b)
        if a.ndim == 2:  # gamma/beta: the old styles' rows exactly kept, the new row trained
            np.testing.assert_array_equal(b[:2], a, err_msg=jax.tree_util.keystr(path))
            changed_rows += not np.allclose(b[2], a.mean(0))
        else:  # every convolution frozen, bit for bit
            np.testing.assert_array_equal(b, a, err_msg=jax.tree_util.keystr(path))
    assert changed_rows > 10
    # the optimizer holds state for the gamma/beta leaves only
    state = step.create_train_state(m.net, jax.random.key(0), lr=1e-3, variables=m.variables,
                                    labels=warmstart.trainable(cfg.start))
    sizes = [np.size(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
    n_rows = sum(np.size(p) for p in jax.tree.leaves(m.variables["params"]) if np.ndim(p) == 2)
    assert sum(sizes) == 2 * n_rows  # Adam's two moments of the [S, C] leaves, nothing else


def test_fine_tuning_starts_from_the_given_model_and_mismatches_are_refused(tmp_path):
    cfg = tiny_config(tmp_path, steps=2)
    cfg.model.update(norm="instance", upsample="resize_conv")
    first = train.train_and_evaluate(cfg, tmp_path / "a", progress=False).model_path
    cfg.init_from = str(first)
    cfg.train.lr = 1e-12  # so the result is (nearly) the start
    again = train.train_and_evaluate(cfg, tmp_path / "b", progress=False).model_path
    leaves = [jax.tree.leaves(modelfile.load_model(p).variables) for p in (first, again)]
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    with pytest.raises(ConfigError, match="not loaded"):
        schema.validate(cfg)  # validation reads no file: `load` reads the model, then validates
    cfg.model.width = 0.25
    with pytest.raises(ConfigError, match=r"init_from .*architecture differs \(model.width: 0.125 in"):
        schema.load(cfg)


def test_fine_tuning_a_shipped_plain_instance_norm_model_with_runlocal_names_the_norm(tmp_path):
    """runlocal trains the floored norm now; the shipped networks have plain instance norm, so
    starting from one says which key to set (docs: results/discs/README.md), before any work."""
    cfg = tiny_config(tmp_path, steps=2)
    assert cfg.model.norm == "instance_floor"
    cfg.init_from = "starry_night"
    with pytest.raises(ConfigError, match=r"architecture differs .*model.norm: 'instance' in the file, "
                                          r"'instance_floor' here"):
        schema.load(cfg)


def test_export_takes_the_style_weights_as_a_second_input(tmp_path):
    import onnxruntime as ort

    from fastnst import export
    from tests.test_export import JAX_EXPORT_MAX_DIFF, ONNX_MAX_DIFF

    m = _multistyle_model(3)
    x = np.random.default_rng(0).uniform(0, 255, (2, 45, 61, 3)).astype(np.float32)
    sess = ort.InferenceSession(str(export.to_onnx(m, tmp_path / "m.onnx")),
                                providers=["CPUExecutionProvider"])
    exported = export.jax_export(m, platforms=("cpu",))
    for spec, w in (("s1", [0, 1, 0]), ("s0:0.25,s2:0.75", [0.25, 0, 0.75])):
        want = np.asarray(stylize.apply(styles.select(m, spec), x))
        w = np.asarray(w, np.float32)
        got = sess.run(None, {"image": x, "style": w})[0]
        assert np.abs(got - want).max() <= ONNX_MAX_DIFF + BAKED_MAX_DIFF
        got = np.asarray(exported.call(x, w))
        assert np.abs(got - want).max() <= JAX_EXPORT_MAX_DIFF + BAKED_MAX_DIFF
    # one style baked in: an ordinary single-input export
    path = modelfile.save_model(tmp_path / "multi.msgpack", m.config, m.variables, meta=m.meta)
    r = run_cli("bin/export", f"--model={path}", "--format=onnx", f"--out={tmp_path / 's2.onnx'}",
                "--style=s2")
    assert r.returncode == 0, r.stderr[-1500:]
    one = ort.InferenceSession(str(tmp_path / "s2.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in one.get_inputs()] == ["image"]
