"""Shipped models load by name and run; the benchmark code produces a complete table."""

import json

import numpy as np
import pytest

from fastnst import bench, export, stylize
from fastnst.errors import WeightsError


def test_shipped_models_by_name():
    names = export.available()
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


def test_bench_table_smoke(tmp_path):
    rows = bench.table1((32,), quick=1, repeats=1)
    r = rows[0]
    assert r["lbfgs_estimated"] and r["lbfgs_500_s"] == pytest.approx(500 * r["lbfgs_s_per_iter"])
    assert r["speedup_500"] == pytest.approx(r["lbfgs_500_s"] / r["feedforward_s"])
    res = {"device": bench.device_info(), "quick": 1, "table1": rows,
           "train": {"median_s": 1.0, "steps_per_s": 1.0, "images_per_s": 4.0, "compile_s": 1.0},
           "inference": [], "peak_memory_bytes": None}
    bench.write(res, tmp_path)
    assert json.loads((tmp_path / "bench.json").read_text())["table1"][0]["size"] == 32
    assert "| 32² |" in (tmp_path / "bench.md").read_text()
