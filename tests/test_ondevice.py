"""Photos on the device and K steps per dispatch: the same batches and the same training as the
host loader and one step per call."""

import json

import jax
import numpy as np
import pytest

from fastnst import augment, data, dispatch, keys, train
from fastnst.step import StepInputs, jit_step, variables_of
from tests.helpers import tiny_config, tiny_step, write_photos


def _photos(tmp_path):
    """7 photos of different sizes and both orientations (the padded array and each photo's own
    bounds matter)."""
    for i, size in enumerate([(40, 52), (52, 40), (36, 36), (64, 44), (48, 60), (33, 70), (48, 48)]):
        write_photos(tmp_path / f"p{i}", 1, size=size, seed=10 + i)
    return data.FolderSource(tmp_path)


def _device_batches(src, spec: augment.DataSpec, seed: int, steps):
    photos, bad = data.decode_all(src, spec.size, spec.sr_scale, workers=2)
    assert not bad
    images = augment.pack(photos, keys.order_key(seed))
    run = jax.random.key_data(keys.run_keys(seed)[1])
    make = jax.jit(lambda im, s: augment.batch(im, spec, keys.step_keys(run, s)[0], s))
    return [jax.device_get(make(images, s)) for s in steps]


@pytest.mark.parametrize("flip", [False, True])
def test_style_batches_on_the_device_equal_the_host_loaders(tmp_path, flip):
    """Same photos, offsets and flips for the same seed and step: exactly equal to the host loader
    with its uint8 cache (both cut uint8 pixels), within 0.5 without it (its resized photo stays
    float32). Steps cross an epoch (7 photos, batch 3)."""
    src = _photos(tmp_path)
    spec = augment.DataSpec(batch_size=3, size=32, flip=flip)
    steps = [0, 1, 2, 5, 11]
    dev = _device_batches(src, spec, 4, steps)
    for cache, tol in ((True, 0.0), (False, 0.5)):
        host = data.Batches(src, batch_size=3, image_size=32, seed=4, workers=2, cache=cache, flip=flip)
        try:
            for s, d in zip(steps, dev, strict=True):
                h = host.batch(s)
                assert d["input"].shape == h["input"].shape == (3, 32, 32, 3)
                np.testing.assert_allclose(d["input"], h["input"], atol=tol, rtol=0)
                np.testing.assert_array_equal(d["target"], d["input"])
        finally:
            host.close()
    # every photo of an epoch once: steps 0-1 and the first sample of step 2 are 7 distinct photos
    order, run = keys.order_key(4), keys.run_keys(4)[1]
    plan = [augment.host_plan(order, run, s, batch_size=3, n=7) for s in (0, 1, 2)]
    first_epoch = np.concatenate([p["index"] for p in plan])[:7]
    assert sorted(first_epoch) == list(range(7))
    if flip:  # a mirrored crop is really mirrored: some sample of these steps is flipped
        assert any(p["flip"].any() for p in plan)


def test_sr_batches_on_the_device_equal_the_host_loaders(tmp_path):
    """SR: the same HR crops exactly; the LR inputs (blur + bicubic as two matrix products, float32
    on both sides in a different order) within 1e-3 of 255 (measured here: 4.6e-5)."""
    src = _photos(tmp_path)
    spec = augment.DataSpec(batch_size=2, size=32, sr_scale=4, sr_sigma=1.0)
    dev = _device_batches(src, spec, 0, [0, 3])
    host = data.Batches(src, batch_size=2, image_size=32, seed=0, workers=1, sr_scale=4, sr_sigma=1.0)
    try:
        for s, d in zip([0, 3], dev, strict=True):
            h = host.batch(s)
            np.testing.assert_array_equal(d["target"], h["target"])
            assert d["input"].shape == h["input"].shape == (2, 8, 8, 3)
            np.testing.assert_allclose(d["input"], h["input"], atol=1e-3, rtol=0)
    finally:
        host.close()


def test_multistyle_indices_on_the_device_equal_the_host_loaders(tmp_path):
    src = _photos(tmp_path)
    spec = augment.DataSpec(batch_size=4, size=32, num_styles=3, first_style=1)
    dev = _device_batches(src, spec, 0, [0, 1, 2])
    host = data.Batches(src, batch_size=4, image_size=32, seed=0, workers=1, num_styles=3, first_style=1)
    try:
        for s, d in zip([0, 1, 2], dev, strict=True):
            np.testing.assert_array_equal(d["style"], host.batch(s)["style"])
            np.testing.assert_array_equal(d["style"], 1 + (np.arange(4 * s, 4 * s + 4) % 3))
    finally:
        host.close()


def test_offsets_stay_inside_the_photo():
    """u just below 1 can round the product up to the bound; the offset is clipped to the last
    valid position, on the host and on the device alike."""
    u = np.asarray([0.0, 0.5, np.nextafter(np.float32(1), np.float32(0))], np.float32)
    for extent in (32, 33, 4097):
        host = augment.offsets(u, np.int32(extent), 32)
        dev = np.asarray(augment.offsets(jax.numpy.asarray(u), jax.numpy.int32(extent), 32, jax.numpy))
        np.testing.assert_array_equal(host, dev)
        assert host.min() >= 0 and host.max() <= extent - 32
        assert host[-1] == extent - 32


def test_k_steps_per_call_equal_k_single_steps(vgg_params, tmp_path):
    """K = 3 steps in one call (lax.scan) take the same steps as 3 calls: the same batches, the
    same losses and the same network to float32 rounding (XLA may fuse the scanned body
    differently; losses measured here: 2.3e-7 relative), metrics stacked [3]."""
    t = tiny_step(vgg_params, tiny_config(tmp_path), lr=1e-3)
    rng = np.random.default_rng(0)
    xs = rng.uniform(0, 255, (3, 2, 32, 32, 3)).astype(np.float32)
    inputs = StepInputs(vgg_params, t.grams, t.spec)
    one = jax.tree.map(np.copy, jax.device_get(t.state))
    losses_one = []
    state = t.state
    for x in xs:
        state, m = jit_step()(state, {"input": x, "target": x}, inputs)
        losses_one.append(float(m["loss"]))
    state3, m3 = jit_step(None, 3)(jax.device_put(one), {"input": xs, "target": xs}, inputs)
    assert m3["loss"].shape == (3,) and int(state3.step) == 3
    np.testing.assert_allclose(np.asarray(m3["loss"]), losses_one, rtol=1e-5)
    # The networks compared by what they compute: biases right before an instance norm have a zero
    # true gradient, so Adam turns float rounding into +-lr steps there without changing the output.
    outs = [np.asarray(t.net.apply(variables_of(s), xs[0])) for s in (state, state3)]
    # Measured here: 3.8e-4 of 255 at most (lr 1e-3); bound about 4x that. (At lr 1e-2 Adam's
    # first steps, which move every parameter by about lr whatever its gradient, turn the same
    # rounding into 0.5 of 255.)
    np.testing.assert_allclose(outs[0], outs[1], atol=1.5e-3)


def _metrics(workdir):
    rows = map(json.loads, (workdir / "metrics.jsonl").read_text().splitlines())
    return {r["step"]: r["loss"] for r in rows}


def test_training_with_photos_on_the_device_and_k_steps_equals_the_host_path(tmp_path):
    """A run with its photos on the device and 2 steps per call logs the same losses as the host
    loader at one step per call (rtol 1e-4: float32 rounding of the fused programs; measured here:
    1.1e-7), and an
    interrupted run resumes to the same losses as one that ran through."""
    cfg = tiny_config(tmp_path, steps=6)
    cfg.data.cache = True  # (the host loader then cuts the same uint8 pixels)
    host = train.train_and_evaluate(cfg, tmp_path / "host", progress=False)
    cfg.data.on_device = True
    cfg.train.steps_per_dispatch = 2
    dev = train.train_and_evaluate(cfg, tmp_path / "dev", progress=False)
    assert host.step == dev.step == 6 and dev.model_path.is_file()
    a, b = _metrics(tmp_path / "host"), _metrics(tmp_path / "dev")
    assert sorted(a) == sorted(b) == [2, 4, 6]
    np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=1e-4)

    def stop_at_4(step, stop):
        if step == 4:
            stop.set = True

    part = train.train_and_evaluate(cfg, tmp_path / "resumed", progress=False, on_step=stop_at_4)
    assert part.interrupted and part.step == 4
    rest = train.train_and_evaluate(cfg, tmp_path / "resumed", progress=False)
    assert rest.step == 6
    c = _metrics(tmp_path / "resumed")
    np.testing.assert_allclose([c[s] for s in (2, 4, 6)], [b[s] for s in (2, 4, 6)], rtol=1e-6)


def test_dispatch_sizes_end_at_every_logged_step():
    """K steps per call, cut short so that logs, checkpoints and samples act at their own steps."""
    from fastnst.schema import TrainConfig

    t = TrainConfig(batch_size=1, image_size=32, steps=23, lr=1e-3, log_every=5, ckpt_every=10, keep=1,
                    sample_every=0, steps_per_dispatch=4)
    step, ends = 0, []
    while step < t.steps:
        step += dispatch.size(step, t)
        ends.append(step)
    assert ends == [4, 5, 9, 10, 14, 15, 19, 20, 23]


def test_two_runs_with_carried_state_reach_one_whole_runs_objective(tmp_path):
    """A run stopped at step 4, carried (`carry.pack`: moments in bf16) into a fresh folder
    (`carry.unpack`) and trained on to step 8 logs the losses of one run through 8 steps: exactly
    up to step 4, then within 1e-3 relative (bf16 moments change each later Adam update by up to
    2^-9 of itself; measured here: 1.5e-5 at step 8)."""
    from fastnst import carry

    cfg = tiny_config(tmp_path, steps=8)
    cfg.data.on_device = True
    whole = train.train_and_evaluate(cfg, tmp_path / "whole" / "u", progress=False)

    def stop_at_4(step, stop):
        if step == 4:
            stop.set = True

    first = train.train_and_evaluate(cfg, tmp_path / "first" / "u", progress=False, on_step=stop_at_4)
    assert first.interrupted and first.step == 4
    files, left = carry.pack(carry.workdirs(tmp_path / "first"), tmp_path / "carried")
    assert len(files) == 1 and not left
    assert carry.unpack(tmp_path / "carried", tmp_path / "second") == {"u": 4}
    second = train.train_and_evaluate(cfg, tmp_path / "second" / "u", progress=False)
    assert second.step == whole.step == 8
    a, b = _metrics(tmp_path / "whole" / "u"), _metrics(tmp_path / "second" / "u")
    assert sorted(b) == [2, 4, 6, 8]
    assert [b[s] for s in (2, 4)] == [a[s] for s in (2, 4)]
    np.testing.assert_allclose([b[s] for s in (6, 8)], [a[s] for s in (6, 8)], rtol=1e-3)
    # a workdir already at the carried step or later is left alone
    assert carry.unpack(tmp_path / "carried", tmp_path / "second") == {"u": 4}
    assert train.checkpoints.last_complete_step(tmp_path / "second" / "u") == 8
    assert carry.unpack(tmp_path / "carried", tmp_path / "third", only=["v"]) == {}
    # the carried parameters as a model file (what a run brings back when only the state fits)
    from fastnst import modelfile

    (path,) = carry.export_models(tmp_path / "carried", tmp_path / "models").values()
    m = modelfile.load_model(path)
    assert m.meta["steps"] == 4 and m.config["width"] == cfg.model.width
    raw = carry.read(tmp_path / "carried")["u"]["state"]["params"]
    for a, b in zip(jax.tree.leaves(raw), jax.tree.leaves(m.variables["params"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_carry_packs_whole_units_within_the_limits(tmp_path):
    """Units are packed whole into files under the per-file limit; one that fits nowhere is named,
    not split or dropped silently."""
    from fastnst import carry

    cfg = tiny_config(tmp_path, steps=2)
    for name in ("a", "b", "c"):
        train.train_and_evaluate(cfg, tmp_path / "runs" / name, progress=False)
    one = sum(x.nbytes for x in carry.compact(tmp_path / "runs" / "a", "a").values())
    units = carry.workdirs(tmp_path / "runs")
    files, left = carry.pack(units, tmp_path / "out",
                             carry.Limits(files=2, file_bytes=int(2.5 * one), total_bytes=10 * one))
    assert len(files) == 2 and not left  # two units in the first file, one in the second
    # Two fit in one file only with bf16 parameters: packed so, nothing left out.
    files, left = carry.pack(dict(list(units.items())[:2]), tmp_path / "out2",
                             carry.Limits(files=1, file_bytes=int(1.8 * one)))
    assert len(files) == 1 and not left
    back = carry.unpack(tmp_path / "out2", tmp_path / "back")
    assert back == {"a": 2, "b": 2}
    # Three do not fit even so: a finished unit goes first, then the rest is named.
    files, left = carry.pack(units, tmp_path / "out3", carry.Limits(files=1, file_bytes=int(1.8 * one)),
                             finished=["c"])
    assert len(files) == 1 and not left
    assert sorted(carry.unpack(tmp_path / "out3", tmp_path / "back3")) == ["a", "b"]
    files, left = carry.pack(units, tmp_path / "out4", carry.Limits(files=1, file_bytes=int(1.8 * one)))
    assert len(files) == 1 and len(left) == 1 and "files in all" in left[0]
