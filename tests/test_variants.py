"""Every norm and upsampling kind of the registry (`fastnst.variants`), tiled, exported and (for a
multi-style kind) baked; and a new kind, a group norm, added as one registry entry in this file,
which the same tests then cover without a change anywhere in fastnst."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastnst import export, modelfile, nets, styles, tiling, variants
from fastnst.errors import ConfigError
from tests.test_tiling import TILED_MAX_DIFF, TILED_MEAN_DIFF, _photo, whole_and_tiled

GROUPS = 4  # divides every width of a quarter-width net (8, 16, 32 channels)


def _group(train, name, dtype=None):
    del train
    return nn.GroupNorm(num_groups=GROUPS, epsilon=variants.EPSILON, dtype=dtype, name=name)


def _group_normalise(x, mean, var, module):
    """Group statistics from the per-channel ones of the whole image (equal counts per channel):
    the group mean is the mean of its channels' means, its variance the mean of their variances
    plus the spread of their means."""
    m, v = mean.reshape(GROUPS, -1), var.reshape(GROUPS, -1)
    gm = m.mean(axis=1, keepdims=True)
    gv = (v + (m - gm) ** 2).mean(axis=1, keepdims=True)
    gm, gv = (jnp.broadcast_to(a, m.shape).reshape(-1) for a in (gm, gv))
    y = (x - gm) * jax.lax.rsqrt(gv + module.epsilon)
    return y * module.get_variable("params", "scale") + module.get_variable("params", "bias")


def _group_onnx(g, x, p, stats):
    """Opset 17 has no GroupNormalization: [N, C, H, W] -> [N, G, C/G*H, W], instance norm, back."""
    del stats
    shape = g.op("Shape", [x])
    y = g.op("Reshape", [x, g.const(np.array([0, GROUPS, -1, 0], np.int64))])
    y = g.op("InstanceNormalization", [y, g.const(np.ones(GROUPS, np.float32)),
                                       g.const(np.zeros(GROUPS, np.float32))], epsilon=variants.EPSILON)
    y = g.op("Reshape", [y, shape])
    scale, bias = (np.asarray(p[k], np.float32).reshape(1, -1, 1, 1) for k in ("scale", "bias"))
    return g.op("Add", [g.op("Mul", [y, g.const(scale)]), g.const(bias)])


GROUP = variants.NormKind("group", _group, nn.GroupNorm, image_stats=True, onnx=_group_onnx,
                          normalise=_group_normalise)
NORMS = [*variants.NORMS, "group"]


@pytest.fixture(autouse=True)
def group_norm(monkeypatch):
    monkeypatch.setitem(variants.NORMS, "group", GROUP)


def _model(norm: str, upsample: str = "resize_conv", task: str = "style", seed: int = 0):
    """A quarter-width net with every norm's scale, shift, running statistics and floor moved off
    their initial values (so a norm applied or exported as the wrong kind, or without its parameters,
    shows)."""
    multi = variants.NORMS[norm].multistyle
    cfg = nets.model_config({"task": task, "norm": norm, "upsample": upsample, "width": 0.25,
                             **({"num_styles": 3} if multi else {})})
    net = nets.build(cfg)
    v = nets.init(net, jax.random.key(seed), size=64, scale=cfg.get("scale", 1) if task == "sr" else 1)
    rng = np.random.default_rng(seed)

    def move(path, leaf):
        key, scope = path[-1].key, [k.key for k in path[:-1]]
        if scope and scope[-1].startswith("norm") and key in ("scale", "bias", "mean", "var", "log_floor"):
            return leaf + rng.uniform(0.1, 0.5, leaf.shape).astype(np.float32)
        return leaf

    return modelfile.Model(config=cfg, variables=jax.tree_util.tree_map_with_path(move, v), meta={})


def _single(m):
    """A multi-style model with one style chosen; any other as it is."""
    return styles.select(m, "1") if styles.is_multistyle(m) else m


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("upsample", list(variants.UPSAMPLES))
def test_every_kind_tiles_to_the_whole_image_output(norm, upsample):
    m = _single(_model(norm, upsample))
    whole, tiled = whole_and_tiled(m, _photo(53, 70), 12)
    diff = np.abs(tiled - whole)
    assert whole.std() > 1.0 and diff.max() <= TILED_MAX_DIFF and diff.mean() <= TILED_MEAN_DIFF, diff.max()


def test_a_multistyle_kind_is_refused_by_tiling_until_a_style_is_chosen():
    m = _model("conditional_instance")
    with pytest.raises(ConfigError, match="choose a style first"):
        tiling.apply_tiled(m.net, m.variables, _photo(40, 40), tile=12)


def test_the_group_norm_entry_is_tiled_per_group_not_per_channel(monkeypatch):
    """(So the tiling test above can fail for this kind:) the same entry with instance-norm
    statistics, per channel, gives another output."""
    # (another name: jitted stages are cached by the net, which holds the kind's name)
    monkeypatch.setitem(variants.NORMS, "group_per_channel", variants.NormKind(
        "group_per_channel", _group, nn.GroupNorm, image_stats=True, onnx=_group_onnx,
        normalise=lambda x, mean, var, mod: (x - mean) * jax.lax.rsqrt(var + mod.epsilon)
        * mod.get_variable("params", "scale") + mod.get_variable("params", "bias")))
    m = _model("group_per_channel")
    whole, tiled = whole_and_tiled(m, _photo(53, 70), 12)
    assert np.abs(tiled - whole).max() > 1.0


@pytest.mark.parametrize("norm", NORMS)
def test_every_norm_exports_to_onnx_and_onnxruntime_gives_fastnsts_pixels(norm, tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="the deploy extra is not installed")
    from tests.test_export import ONNX_MAX_DIFF

    m = _model(norm, "transpose" if norm == "batch" else "resize_conv")
    sess = ort.InferenceSession(str(export.to_onnx(m, tmp_path / "m.onnx")),
                                providers=["CPUExecutionProvider"])
    x = _photo(45, 52)[None]
    style = nets.style_weights(m.net, 1)[0] if styles.is_multistyle(m) else None
    ref = np.asarray(m.net.apply(m.variables, jnp.asarray(x), style=style))
    feeds = {"image": x, **({export.STYLE_INPUT: np.asarray(style)} if style is not None else {})}
    y = sess.run(None, feeds)[0]
    assert ref.std() > 1.0 and y.shape == ref.shape and np.abs(y - ref).max() <= ONNX_MAX_DIFF


def test_an_unknown_kind_is_refused_by_the_config_and_by_export(tmp_path):
    kinds = "batch, instance, instance_floor, conditional_instance, conditional_instance_floor, group"
    with pytest.raises(ConfigError, match=f"must be one of {kinds}"):
        nets.model_config({"task": "style", "norm": "layer"})
    m = _model("instance")
    m.config["norm"] = "layer"  # a model file from a fastnst with another kind
    with pytest.raises(ConfigError, match="model.norm must be one of"):
        export.onnx_graph(m)


@pytest.mark.parametrize("norm", [k for k, v in variants.NORMS.items() if v.multistyle])
def test_every_multistyle_kind_bakes_a_style_or_a_mix_into_its_baked_kind(norm):
    m = _model(norm)
    x = jnp.asarray(_photo(40, 48)[None])
    for spec, w in (("1", [0.0, 1.0, 0.0]), ("0:0.3,2:0.7", [0.3, 0.0, 0.7])):
        baked = styles.select(m, spec)
        assert baked.config["norm"] == variants.NORMS[norm].baked
        assert not any(jax.tree.leaves(nets.per_style(baked.net, baked.variables["params"])))
        want = m.net.apply(m.variables, x, style=jnp.asarray(w, jnp.float32))
        got = baked.net.apply(baked.variables, x)
        assert np.abs(np.asarray(got) - np.asarray(want)).max() <= 1e-3  # float32 rounding of w @ gamma


def test_per_style_marks_exactly_the_norm_scales_and_shifts_of_a_multistyle_net():
    m = _model("conditional_instance")
    marked = jax.tree_util.tree_flatten_with_path(nets.per_style(m.net, m.variables["params"]))[0]
    held = sorted("/".join(k.key for k in path) for path, is_held in marked if is_held)
    assert len(held) == 2 * len(nets.norm_scopes(m.net)) == 2 * (3 + 2 * 5 + 2)
    assert all(h.split("/")[-2].startswith("norm") and h.split("/")[-1] in ("scale", "bias") for h in held)
    leaves = dict(zip(["/".join(k.key for k in p) for p, _ in marked],
                      jax.tree.leaves(m.variables["params"]), strict=True))
    assert all(leaves[h].shape[0] == 3 for h in held)  # [S, C]
