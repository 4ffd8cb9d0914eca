"""Shipped models load by name and run; the benchmark code produces a complete table."""

import json

import numpy as np
import pytest

from fastnst import bench, discs, evaluate, gatys, losses, modelfile, perceptual, stylize
from fastnst.configs import style as style_config
from fastnst.errors import WeightsError

SPEC = losses.LossSpec.from_config(style_config.get_config().loss)  # the shipped models' objective


def test_shipped_models_by_name():
    names = modelfile.available()
    assert {"starry_night", "the_scream", "sr_x4_feature"} <= set(names)
    m = stylize.load_model("the_scream")
    assert m.config["task"] == "style" and m.meta["steps"] > 1000
    x = np.random.default_rng(0).uniform(0, 255, (33, 41, 3)).astype(np.float32)
    y = np.asarray(stylize.apply(m, x))
    assert y.shape == x.shape and np.isfinite(y).all() and np.abs(y - x).mean() > 5
    sr = stylize.load_model("sr_x4_feature")
    assert np.asarray(stylize.apply(sr, x)).shape == (132, 164, 3)
    with pytest.raises(WeightsError, match="shipped"):
        stylize.load_model("no_such_style")


@pytest.mark.slow
def test_bench_table_smoke(tmp_path):
    rows = bench.table1(SPEC, (32,), quick=1, repeats=1)
    r = rows[0]
    assert r["lbfgs_estimated"] and r["lbfgs_iters_measured"] == 2 and r["lbfgs_100_s"] > 0
    assert r["lbfgs_500_s"] >= r["lbfgs_300_s"] >= r["lbfgs_100_s"] and r["speedup_500"] > 1
    res = {"device": bench.device_info(), "quick": 1, "table1": rows,
           "train": {"median_s": 1.0, "steps_per_s": 1.0, "images_per_s": 4.0, "compile_s": 1.0,
                     "repeats": 2},
           "inference": [], "peak_memory_bytes": None}
    bench.write(res, tmp_path)
    assert json.loads((tmp_path / "bench.json").read_text())["table1"][0]["size"] == 32
    assert "| 32² |" in (tmp_path / "bench.md").read_text()
    assert "the training loop itself, mean of 2 steps" in (tmp_path / "bench.md").read_text()


def test_table1_extrapolates_the_quick_runs_as_documented(monkeypatch):
    """`table1(quick=n)` with timings of 3.0 s for n=2 iterations and 3.5 s for 4 (the first
    iterations' line searches cost more): t(count) = 3.0 + (count - 2) * 0.25 s, against a
    feed-forward pass of 0.01 s. Worked by hand from the docstring's rule."""
    times = {2: 3.0, 4: 3.5}
    monkeypatch.setattr(bench, "feedforward", lambda size, repeats: {
        "median_s": 0.01, "min_s": 0.009, "max_s": 0.011, "compile_s": 1.0})
    monkeypatch.setattr(bench, "lbfgs", lambda spec, size, counts, vgg_params: {
        n: {"median_s": times[n], "compile_s": 2.0} for n in counts})
    (row,) = bench.table1(SPEC, (64,), quick=2, vgg_params={"params": {}})  # (unused: lbfgs is faked)
    assert row["lbfgs_s_per_iter"] == 0.25 and row["lbfgs_iters_measured"] == 4
    assert (row["lbfgs_100_s"], row["lbfgs_300_s"], row["lbfgs_500_s"]) == (27.5, 77.5, 127.5)
    assert row["speedup_500"] == pytest.approx(12750.0) and row["speedup_100"] == pytest.approx(2750.0)


def test_bench_times_the_training_loop_itself(tmp_path, monkeypatch):
    """bin/bench's train-step time comes from train.train_and_evaluate (the loop, the data path
    and the one jitted step), not from a separate harness."""
    from fastnst import step, train

    runs = []
    real = train.train_and_evaluate
    monkeypatch.setattr(train, "train_and_evaluate", lambda *a, **k: runs.append(a[0]) or real(*a, **k))
    before = step.jit_step.cache_info().misses + step.jit_step.cache_info().hits
    r = bench.train_step({"content": 1.0, "content_layers": ("relu1_2",), "tv": 1e-5}, size=32, batch=2,
                         repeats=2, variant=bench.PEER_STYLE)
    assert len(runs) == 1 and runs[0]["data"]["source"] == "synthetic"
    assert step.jit_step.cache_info().misses + step.jit_step.cache_info().hits > before
    assert 0 < r["median_s"] < r["run_s"] and r["compile_s"] >= 0 and r["repeats"] == 2


def test_fig5_network_vs_lbfgs(vgg_params):
    """Each row's network objective is the objective of the network's output; the L-BFGS curve
    starts at the noise image, never rises, and `iters_to_match` is where it first reaches it."""
    spec = SPEC
    rng = np.random.default_rng(0)
    photo = evaluate.center_square(rng.uniform(0, 255, (40, 56, 3)).astype(np.float32), 32)
    style = rng.uniform(0, 255, (48, 48, 3)).astype(np.float32)
    grams = perceptual.style_grams(vgg_params, style, spec.style_layers, 48)
    model = stylize.load_model("starry_night")
    (row,) = evaluate.style_vs_lbfgs(model, vgg_params, spec, grams, {"p": photo}, iters=6)
    cf, _ = perceptual.targets(spec, vgg_params, photo, style)
    f = gatys.objective(spec, vgg_params, cf, grams)
    assert row["network"] == pytest.approx(float(f(stylize.apply(model, photo))), rel=1e-4)
    curve = np.asarray(row["lbfgs"])
    assert curve.shape == (7,) and np.all(np.diff(curve) <= 1e-5 * curve[:-1])
    below = np.flatnonzero(curve <= row["network"])
    assert row["iters_to_match"] == (int(below[0]) if below.size else None)
    table = evaluate.fig5_table([row], (2, 6))
    assert "| p |" in table and "L-BFGS 6" in table and "**mean**" in table
    assert row["disc_area"] == discs.disc_area(row["images"]["network"], photo)["area"]
    assert table.splitlines()[0].endswith("| disc area |") and f"| {row['disc_area']:.2%} |" in table


def test_a_model_file_records_its_objective_and_fig5_scores_with_it(tmp_path):
    """A trained model's file keeps the objective it was trained with, and the evaluation scores
    it with that (not with the style config's default); files without the record (every shipped
    model) get the packaged style config's, which they were trained with."""
    from fastnst import images, train
    from tests.helpers import tiny_config

    cfg = tiny_config(tmp_path, steps=2)
    cfg.loss.update(style=3.0, style_layers=("relu1_2", "relu2_2"), tv=0.0)
    cfg.style_size = 40
    m = modelfile.load_model(train.train_and_evaluate(cfg, tmp_path / "run", progress=False).model_path)
    trained = perceptual.spec(cfg.loss.to_dict())
    assert trained != SPEC and perceptual.of_model(m.meta) == (trained, 40)
    photo = images.save_image(tmp_path / "p.png", np.random.default_rng(1).uniform(0, 255, (40, 40, 3)))
    evaluate.fig5(str(tmp_path / "run" / "model.msgpack"), cfg.style_image, [photo], size=32, iters=2,
                  checkpoints=[2], out=tmp_path / "eval")
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert result["style_size"] == 40 and result["loss"]["style_layers"] == ["relu1_2", "relu2_2"]
    assert dict(result["loss"]["weights"]) == {"content": 1.0, "style": 3.0}
    assert perceptual.of_model(stylize.load_model("starry_night").meta) == (SPEC, 512)
