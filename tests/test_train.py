"""Train step (real learning, purity), resume equivalence, interruption, corrupt data, export."""

import json

import jax
import numpy as np
import pytest

from fastnst import data, modelfile, train
from fastnst.step import StepInputs, jit_step
from tests.helpers import tiny_config, tiny_step, write_photos


def _allclose_trees(a, b):
    return all(jax.tree.leaves(jax.tree.map(lambda x, y: bool(np.array_equal(x, y)), a, b)))


def test_train_step_learns_and_touches_only_the_net(vgg_params, tmp_path):
    style = np.asarray(jax.random.uniform(jax.random.key(3), (48, 48, 3)) * 255)
    t = tiny_step(vgg_params, tiny_config(tmp_path), lr=1e-2, style=style)
    state, spec, grams, batch = t.state, t.spec, t.grams, t.batch
    vgg_before = jax.tree.map(np.array, vgg_params)
    grams_before = jax.tree.map(np.array, grams)
    params0 = jax.tree.map(np.array, state.params)
    history = []
    for _ in range(30):
        state, m = jit_step()(state, batch, StepInputs(vgg_params, grams, spec))
        assert all(np.isfinite(float(v)) for v in m.values())
        history.append(float(m["loss"]))
    assert set(m) == {"loss", "content", "style", "tv"}
    assert np.mean(history[-3:]) < 0.7 * np.mean(history[:3]), history
    assert _allclose_trees(vgg_before, vgg_params) and _allclose_trees(grams_before, grams)
    assert not _allclose_trees(params0, state.params)
    assert int(state.step) == 30


def test_resume_gives_bit_identical_parameters(tmp_path, weights_cache):
    cfg = tiny_config(tmp_path, steps=6)
    straight = train.train_and_evaluate(cfg, tmp_path / "straight", progress=False)

    def stop_at_3(step, flag):
        if step == 3:
            flag.set = True  # what SIGINT/SIGTERM do

    first = train.train_and_evaluate(cfg, tmp_path / "resumed", progress=False, on_step=stop_at_3)
    assert first.interrupted and first.model_path is None and first.step == 3
    assert (tmp_path / "resumed" / "checkpoints" / "3").is_dir()
    second = train.train_and_evaluate(cfg, tmp_path / "resumed", progress=False)
    assert not second.interrupted and second.step == 6
    a, b = modelfile.load_model(straight.model_path), modelfile.load_model(second.model_path)
    assert _allclose_trees(a.variables, b.variables)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(ln)["step"] for ln in lines]
    assert steps == [2, 3, 4, 6]  # 3: the line logged with the interruption checkpoint


def test_nan_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path, weights_cache):
    from fastnst.errors import FastnstError

    cfg = tiny_config(tmp_path, steps=2)
    work = tmp_path / "nan"
    train.train_and_evaluate(cfg, work, progress=False)  # a good checkpoint at step 2
    cfg.train.update(steps=6, lr=1e30)  # allowed on resume; Adam's absurd steps blow the parameters up
    with pytest.raises(FastnstError, match="not finite"):
        train.train_and_evaluate(cfg, work, progress=False)
    assert [d.name for d in (work / "checkpoints").iterdir() if d.name.isdigit()] == ["2"]
    cfg.train.lr = 1e-3  # what the message says to do: the run goes on from the good checkpoint
    assert train.train_and_evaluate(cfg, work, progress=False).step == 6


def test_corrupt_files_are_skipped_and_counted(tmp_path):
    folder = write_photos(tmp_path / "p", 4)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (folder / "empty.png").write_bytes(b"")
    src = data.FolderSource(folder)
    assert len(src) == 6
    b = data.Batches(src, batch_size=3, image_size=32, seed=0, workers=2)
    for step in range(4):  # 12 samples > 2 epochs: every file is visited
        out = b.batch(step)
        assert out["input"].shape == (3, 32, 32, 3)
    assert len(b.bad) == 2
    again = data.Batches(src, batch_size=3, image_size=32, seed=0, workers=1)
    np.testing.assert_array_equal(again.batch(2)["input"], b.batch(2)["input"])
    b.close()
    again.close()
