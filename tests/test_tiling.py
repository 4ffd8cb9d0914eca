"""Tiled inference equals whole-image inference, with buffers in RAM or on disk; colour and strength."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fastnst import buffers, images, modelfile, nets, stylize, tiling
from fastnst.errors import ConfigError


def _model(task="style", norm="batch", seed=0, **opts):
    cfg = nets.model_config({"task": task, "norm": norm, "width": 0.25, **opts})
    net = nets.build(cfg)
    v = nets.init(net, jax.random.key(1), size=64, scale=net_scale(cfg))
    if "batch_stats" in v:  # non-trivial running statistics, as after training
        rng = np.random.default_rng(seed)  # each test's inputs fixed, whatever ran before it
        v["batch_stats"] = jax.tree.map(lambda a: a + jnp.asarray(rng.uniform(0.1, 0.5, a.shape), a.dtype),
                                        v["batch_stats"])
    return modelfile.Model(config=cfg, variables=v, meta={})


def net_scale(cfg):
    return cfg["scale"] if cfg["task"] == "sr" else 1


def _photo(h, w, seed=0):
    small = np.random.default_rng(seed).uniform(0, 255, (h // 6 + 2, w // 6 + 2, 3)).astype(np.float32)
    return np.clip(images.resize(small, (h, w), method="bicubic"), 0, 255)


# Tiled vs whole-image output on 0..255 (docs/tiling.md, docs/testing.md, results/tolerances.json).
# Measured on this CPU over CASES, with XLA optimisation on and off (tests/measure_tolerances.py):
# batch norm 0 (one stage, every window one shape, layers trimmed or not); instance norm max 5.7e-4,
# mean 6.6e-5 (2026-12-05, 20 stages; 5.0e-4 and 7.4e-5 with 16): each stage's windows sum in
# another order than the whole image, and statistics are combined window by window. Bounds: 4x the
# largest measured, the margin docs/testing.md derives for other CPUs' kernels.
TILED_MAX_DIFF = 2.3e-3
TILED_MEAN_DIFF = 3.0e-4

# Odd sizes, cores that do not divide the image, every architecture option (the stages, their
# inputs and halos come from the network itself, so a new option needs no change in tiling).
CASES = [("style", "batch", (75, 61), 20, {}), ("style", "instance", (71, 83), 24, {}),
         ("style", "instance", (75, 61), 4, {"upsample": "resize_conv"}),
         ("style", "instance", (53, 70), 12, {"padding": "reflect_same", "upsample": "resize_conv"}),
         ("sr", "batch", (29, 23), 10, {}), ("sr", "instance", (26, 31), 12, {}),
         ("sr", "instance", (21, 25), 5, {"padding": "reflect_same", "upsample": "resize_conv"})]


def whole_and_tiled(m, x, tile, **kw):
    whole = np.asarray(stylize.forward(m.net, m.variables, jnp.asarray(x[None])))[0]
    return whole, tiling.apply_tiled(m.net, m.variables, x, tile=tile, **kw)


@pytest.mark.parametrize("task,norm,size,tile,opts", CASES)
def test_tiled_equals_whole_image(task, norm, size, tile, opts):
    m = _model(task, norm, **opts)
    x = _photo(*size)
    whole, tiled = whole_and_tiled(m, x, tile)
    assert tiled.shape == whole.shape
    assert np.abs(tiled - whole).max() <= TILED_MAX_DIFF and np.abs(tiled - whole).mean() <= TILED_MEAN_DIFF


TRIM_CASES = [("style", {}, (203, 261), 24),
              ("style", {"padding": "reflect_same", "upsample": "resize_conv"}, (150, 190), 16),
              ("sr", {}, (61, 77), 8),
              ("sr", {"padding": "reflect_same", "upsample": "resize_conv"}, (45, 50), 6)]


@pytest.mark.parametrize("task,opts,size,tile", TRIM_CASES)
def test_one_stage_windows_trim_every_layer_and_stay_exact(task, opts, size, tile, monkeypatch):
    """A batch-norm network runs whole per window, each top-level layer cropped to what the kept
    output still needs (`trim`): on images with interior, edge and corner windows the layers keep
    under 60% of their window's pixels on average (the last under 10%: small cores in big halos),
    and the output equals the whole-image one; with every remaining reach 4 px short of what `trim`
    derives, it does not (so the test can fail)."""
    m = _model(task, "batch", **opts)
    x = _photo(*size)
    mult = 2 ** len(m.net.down)
    hp, wp = (n + (-n % mult) for n in size)
    st = tiling.plan(m.net, hp, wp, 10**10, tile)[0]
    pts = tiling.trim.points(m.net)
    kept = [r * c / ((st.window[0] / p.stride + 2 * p.pad) * (st.window[1] / p.stride + 2 * p.pad))
            for (_, r, c), p in zip(st.trim.sizes, pts, strict=True)]
    # measured: mean 0.21-0.50, last 0.03-0.07
    assert len(st.tiles) >= 9 and np.mean(kept) < 0.6 and kept[-1] < 0.1, kept
    whole, tiled = whole_and_tiled(m, x, tile)
    assert np.abs(tiled - whole).max() <= TILED_MAX_DIFF and np.abs(tiled - whole).mean() <= TILED_MEAN_DIFF
    short = tuple(dataclasses.replace(p, reach=p.reach - 4) for p in tiling.trim.points(m.net))
    monkeypatch.setattr(tiling.trim, "points", lambda net: short)
    # `not <=` rather than `>`: a short plan can also leave output pixels unwritten, and the output
    # buffer is uninitialised memory, so the difference may be NaN, which must count as different.
    assert not np.abs(np.subtract(*whole_and_tiled(m, x, tile))).max() <= 1.0


def test_buffers_on_disk_give_the_same_result_and_are_gone_afterwards_and_after_an_interrupt(monkeypatch):
    m = _model("style", "instance")
    x = _photo(71, 83)
    info = {}
    ram = tiling.apply_tiled(m.net, m.variables, x, tile=24)
    disk = tiling.apply_tiled(m.net, m.variables, x, tile=24, ram=0, info=info)
    assert info["buffers_ram_mb"] == 0 and info["buffers_disk_mb"] > 0
    np.testing.assert_array_equal(disk, ram)  # the same windows and programs: the same bits
    assert buffers.open_buffer_files() == []
    calls = []
    real = tiling.run_stage

    def interrupted(*args):
        calls.append(args[1])
        if len(calls) == 40:
            assert buffers.open_buffer_files(), "no buffer file open mid-run"
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(tiling, "run_stage", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tiling.apply_tiled(m.net, m.variables, x, tile=24, ram=0)
    assert buffers.open_buffer_files() == []  # unlinked at creation, closed on the way out


def test_buffer_layout_reuses_freed_ranges_and_buffers_alive_together_never_overlap():
    """File buffers share one file at offsets from `buffers.layout`: buffers alive at the same stage
    never overlap (their data survives the others' writes), ranges are reused, and for a chain like
    the stages' (each buffer read by the next stage only) the file spans two buffers, not all."""
    rng = np.random.default_rng(0)
    for trial in range(10):
        specs = []
        for i in range(12):
            first = int(rng.integers(0, 10))
            shape = (int(rng.integers(2, 30)), int(rng.integers(2, 30)), 3)
            specs.append((f"b{i}", shape, first, first + int(rng.integers(1, 6))))
        offsets, span = buffers.layout([(n, 4 * np.prod(s), a, b) for n, s, a, b in specs])
        for t in range(16):
            alive = sorted((offsets[n], offsets[n] + 4 * np.prod(s)) for n, s, a, b in specs if a <= t <= b)
            assert all(x[1] <= y[0] for x, y in zip(alive, alive[1:], strict=False))
            assert all(x[1] <= span for x in alive)
        assert all(o % 4096 == 0 for o in offsets.values())
        if trial:
            continue
        arena = buffers.Arena(offsets, span)  # the data survives: write all in stage order, read back
        try:
            data = {n: rng.normal(size=s).astype(np.float32) for n, s, _, _ in specs}
            live = {}
            for t in range(16):
                for n, s, a, _ in specs:
                    if a == t:
                        live[n] = buffers.Buffer(s, arena, n)
                        live[n].write(0, 0, data[n][:, :5])  # narrower than the buffer: row by row
                        if s[1] > 5:
                            live[n].write(0, 5, data[n][:, 5:])
                for n, s, _, b in specs:
                    if b == t:
                        r = s[0] // 2
                        np.testing.assert_array_equal(live[n].read(r, s[0], 1, s[1]), data[n][r:, 1:])
                        np.testing.assert_array_equal(live.pop(n).read(0, s[0], 0, s[1]), data[n])
        finally:
            arena.close()
    chain = [(f"c{k}", 1 << 20, k, k + 1) for k in range(10)]
    assert buffers.layout(chain)[1] == 2 << 20
    assert buffers.open_buffer_files() == []


def test_residual_stream_has_buffers_so_no_stage_reads_more_than_two():
    """The input of each residual block after the first (block i-1's input plus its normalised last
    conv) is a stage of its own, found from the network: later stages read it instead of every
    earlier block's buffer (up to 6 for the paper's 5 blocks), and earlier buffers can be freed."""
    net = _model("style", "instance").net
    ls = tiling.layers(net)
    names = [lay.name for lay in ls]
    assert [lay.name for lay in ls if not lay.stats][:-1] == ["res1", "res2", "res3", "res4"]
    reads = {lay.name: tiling.reads(net, k)[1] for k, lay in enumerate(ls)}
    assert max(map(len, reads.values())) == 2
    assert reads["res1"] == ("norm_down1", "res0/norm1") and reads["res3"] == ("res2", "res2/norm1")
    assert reads["res3/norm0"] == ("res3",) and reads["norm_up0"] == ("res4", "res4/norm1")
    assert names.index("res2") < names.index("res2/norm0")


def test_uint8_photo_in_and_uint8_output_are_the_float_run_rounded():
    """What `run_files` gives a 100 MP photo (a quarter of the memory each way) is bit for bit the
    float path's result rounded as it is saved: the same windows and programs, and decoded pixels
    are integers, so uint8 -> float32 is exact."""
    m = _model("style", "instance")
    x = np.rint(_photo(71, 83))
    ref = tiling.apply_tiled(m.net, m.variables, x.astype(np.float32), tile=24)
    out = tiling.apply_tiled(m.net, m.variables, x.astype(np.uint8), tile=24, out_dtype=np.uint8)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, images.to_uint8(ref))
    whole = stylize.apply(m, x.astype(np.uint8), uint8=True)  # fits: the whole-image path
    assert whole.dtype == np.uint8 and whole.shape == out.shape
    np.testing.assert_array_equal(whole, images.to_uint8(np.asarray(stylize.apply(m, x))))
    with pytest.raises(ValueError, match="out_dtype"):
        tiling.apply_tiled(m.net, m.variables, x, tile=24, out_dtype=np.float16)


def test_halos_are_measured_from_the_network_and_needed(monkeypatch):
    """A batch-norm network is one stage, whose halo must cover how far one changed input pixel
    moves the output (checked here independently on the whole network) and not much more; an
    instance-norm network's stages need 4-8 px each (the residual stream's: one layer pixel). With
    the halos set to zero the stitched output is wrong, so the exactness test can fail."""
    cfg = nets.model_config({"task": "style", "width": 0.25})
    net = nets.build(cfg)
    m = modelfile.Model(config=cfg, variables=nets.init(net, jax.random.key(2), size=64), meta={})
    assert len(tiling.layers(net)) == 1
    x = _photo(200, 200)
    y0 = np.asarray(stylize.forward(net, m.variables, jnp.asarray(x[None])))[0]
    x2 = x.copy()
    x2[100, 100] += 60.0
    y1 = np.asarray(stylize.forward(net, m.variables, jnp.asarray(x2[None])))[0]
    rows = np.flatnonzero(np.abs(y1 - y0).max(axis=(1, 2)) > 0)
    reach = max(100 - rows[0], rows[-1] - 100)
    assert reach <= tiling.halo(net, 0) <= reach + 8, (reach, tiling.halo(net, 0))
    inorm = _model("style", "instance").net
    halos = [tiling.halo(inorm, k) for k in range(len(tiling.layers(inorm)))]
    assert len(halos) == 20 and all(h in (4, 8) for h in halos), halos
    m = _model("style", "batch", padding="reflect_same")  # no border padding widening the windows
    assert np.abs(np.subtract(*whole_and_tiled(m, _photo(75, 61), 20))).max() <= TILED_MAX_DIFF
    monkeypatch.setattr(tiling, "halo", lambda net, k: 0)
    whole, tiled = whole_and_tiled(m, _photo(75, 61), 20)
    assert not np.abs(tiled - whole).max() <= 1.0  # NaN (unwritten pixels) counts as different


def _conv_input_bytes(net, h, w) -> int:
    """An independent count for `activation_bytes`: the float32 input of every convolution in the
    traced program (nested jaxprs included) plus the output."""
    import math

    from jax.extend import core as jcore

    v = nets.init(net, jax.random.key(0))
    closed = jax.make_jaxpr(lambda x: net.apply(v, x))(jnp.zeros((1, h, w, 3)))
    total = math.prod(closed.jaxpr.outvars[0].aval.shape)
    todo = [closed.jaxpr]
    while todo:
        for eq in todo.pop().eqns:
            if eq.primitive.name == "conv_general_dilated":
                total += math.prod(eq.invars[0].aval.shape)
            for p in eq.params.values():
                for sub in p if isinstance(p, list | tuple) else [p]:
                    if isinstance(sub, jcore.ClosedJaxpr | jcore.Jaxpr):
                        todo.append(getattr(sub, "jaxpr", sub))
    return 4 * total


def test_activation_bytes_come_from_the_network_also_for_options_tiling_never_saw(monkeypatch):
    import flax.linen as nn

    from fastnst import variants

    def strided_up(features, *, edge_pad, name, dtype=None):  # an upsampling no fastnst net has
        return nn.ConvTranspose(features, (4, 4), strides=(2, 2), name=name, dtype=dtype)

    monkeypatch.setitem(variants.UPSAMPLES, "strided", variants.UpsampleKind("strided", strided_up, None))
    deeper = nets.style_net(norm="instance", padding="reflect_same").clone(
        num_res=2, down=(16, 32, 64), res_channels=64, up=(32, 16, 8), upsample="strided")
    for net in (nets.style_net(), nets.style_net(norm="instance", upsample="resize_conv",
                                                 padding="reflect_same"), nets.sr_net(4), deeper):
        got, want = tiling.activation_bytes(net, 64, 96), _conv_input_bytes(net, 64, 96)
        # (NearestUpConv pads its low-resolution input by 1 inside the conv: the traced count has
        # those rows, the layer inputs do not: 1.6 % at this size)
        assert abs(got - want) <= 0.02 * want, (net.upsample, got, want)
    # two more residual blocks add exactly their four padded 128-channel conv inputs at 1/4 size
    base = nets.style_net(norm="instance", padding="reflect_same")
    extra = tiling.activation_bytes(base.clone(num_res=7), 64, 96) - tiling.activation_bytes(base, 64, 96)
    assert extra == 4 * 128 * (64 // 4 + 2) * (96 // 4 + 2) * 4


def over_budget_case(m):
    """A 360x280 photo with a budget that holds one window of a 64 px core, not the image."""
    big = np.asarray(jax.image.resize(jnp.asarray(_photo(90, 70)), (360, 280, 3), "linear"))
    budget = tiling.activation_bytes(m.net, 200, 200)
    assert not tiling.fits(m.net, *big.shape[:2], budget)
    ref = np.asarray(stylize.forward(m.net, m.variables, jnp.asarray(big[None])))[0]
    return big, budget, ref


def test_apply_tiles_when_over_budget_and_refuses_a_budget_too_small():
    m = _model("style", "batch")
    assert np.asarray(stylize.apply(m, _photo(90, 70))).shape == (90, 70, 3)
    big, budget, ref = over_budget_case(m)
    tiled = np.asarray(stylize.apply(m, big, budget=budget))
    assert np.abs(tiled - ref).max() <= TILED_MAX_DIFF
    with pytest.raises(ConfigError, match="too small for one tile"):
        stylize.apply(m, big, budget=1000)


def test_preserve_color_keeps_chroma_exactly_and_takes_the_stylized_luminance():
    photo, stylized = _photo(20, 30), _photo(20, 30)[::-1].copy()
    out = stylize.preserve_color(stylized, photo)
    yiq_out, yiq_photo, yiq_sty = (stylize.rgb_to_yiq(a) for a in (out, photo, stylized))
    np.testing.assert_allclose(yiq_out[..., 1:], yiq_photo[..., 1:], atol=1e-3)
    np.testing.assert_allclose(yiq_out[..., 0], yiq_sty[..., 0], atol=1e-3)
    # the NTSC matrix, independently: Y = 0.299 R + 0.587 G + 0.114 B
    np.testing.assert_allclose(yiq_out[..., 0], stylized @ np.array([0.299, 0.587, 0.114]), atol=1e-3)


def test_strength_is_a_blend():
    photo, stylized = _photo(10, 12), _photo(10, 12)[::-1].copy()
    np.testing.assert_allclose(stylize.finish(stylized, photo, strength=0.0), photo, atol=1e-4)
    np.testing.assert_allclose(stylize.finish(stylized, photo, strength=1.0), stylized, atol=1e-4)
    np.testing.assert_allclose(stylize.finish(stylized, photo, strength=0.25),
                               0.25 * stylized + 0.75 * photo, atol=1e-4)
    with pytest.raises(ConfigError):
        stylize.finish(stylized, photo, strength=2.0)


def test_optimisation_colour_preservation_inputs_are_matched_luminance():
    from fastnst import gatys

    photo, art = _photo(24, 30), np.clip(_photo(20, 20) * 0.3 + 150, 0, 255)
    c, s = gatys.luminance_inputs(photo, art)
    assert np.allclose(c[..., 0], c[..., 1]) and np.allclose(s[..., 0], s[..., 2])  # grey
    cy = photo @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(c[..., 0], np.clip(cy, 0, 255), atol=1e-3)
    assert abs(s[..., 0].mean() - cy.mean()) < 1.0 and abs(s[..., 0].std() - cy.std()) < 1.0


_REUSE = """
import ctypes, ctypes.util, resource, sys
from fastnst import cli
kept = cli.keep_freed_memory() if sys.argv[1] == "1" else None
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]

def faults_of_filling(n):  # minor page faults taken while filling n freshly malloc'd bytes, as XLA does
    p = libc.malloc(n)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(p, 1, n)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    libc.free(p)
    return faults

faults_of_filling(256 * 2**20)
print(kept, faults_of_filling(256 * 2**20))
"""


def test_keep_freed_memory_makes_a_freed_buffer_reusable_without_page_faults():
    """What `cli.keep_freed_memory` is for (every tiled window allocates its XLA buffers anew): a
    256 MB block freed and malloc'd again takes (almost) no new page faults, where glibc's default
    (a fresh mmap) faults in every one of its pages again. (NumPy's own large arrays ask for
    huge pages, XLA's buffers do not: malloc is called directly here.)"""
    import subprocess
    import sys

    def run(flag):
        out = subprocess.run([sys.executable, "-c", _REUSE, flag], capture_output=True, text=True, check=True)
        kept, faults = out.stdout.split()
        return kept, int(faults)

    kept, faults = run("1")
    if kept != "True":
        pytest.skip("not glibc: malloc's settings are left as they are")
    _, default_faults = run("0")
    # The default maps the block anew: 65536 faults of 4 KiB here, at least 128 where transparent
    # huge pages are `always` (2 MiB each); kept memory takes none (0 here).
    assert default_faults >= 128
    assert faults * 100 < default_faults


def test_video_frames_over_the_budget_run_stage_by_stage_and_equal_whole_frames(tmp_path, monkeypatch):
    """A video whose frames do not fit the budget takes the same path as a big photo: each frame
    stage by stage (an instance-norm model: statistics over the whole frame), every frame written,
    and each equal to the whole-frame output of the same decoded frame (PyAV decoding it here)."""
    av = pytest.importorskip("av")
    from tests.test_video import _clip, _probe

    m = _model("style", "instance")
    h, w, n = 72, 88, 3
    src = _clip(tmp_path / "in.mp4", frames=n, h=h, w=w, audio=False)
    with av.open(str(src)) as c:
        decoded = [f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])]
    budget = tiling.activation_bytes(m.net, 48, 48)
    assert len(decoded) == n and not tiling.fits(m.net, h, w, budget)
    seen, tiling_apply = [], tiling.apply_tiled

    def spy(net, variables, image, **kw):
        seen.append((np.array(image), tiling_apply(net, variables, image, **kw)))
        return seen[-1][1]

    monkeypatch.setattr(tiling, "apply_tiled", spy)
    (res,) = stylize.run_files(m, [src], tmp_path / "out.mp4", budget=budget, progress=False)
    assert res.error is None and res.dst is not None
    assert _probe(res.dst)["frames"] == n
    assert len(seen) == n  # every frame went stage by stage
    for (frame, tiled), ref in zip(seen, decoded, strict=True):
        np.testing.assert_array_equal(frame, ref)
        whole = stylize.forward(m.net, m.variables, jnp.asarray(ref[None], jnp.float32))
        diff = np.abs(tiled - np.asarray(whole)[0])
        assert diff.max() <= TILED_MAX_DIFF and diff.mean() <= TILED_MEAN_DIFF
