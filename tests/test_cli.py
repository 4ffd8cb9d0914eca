"""End to end through the command-line scripts, as a user runs them."""

import json
from pathlib import Path

import numpy as np
import pytest

from fastnst import images
from tests.helpers import run_cli, tiny_config, train_cli_args

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_then_stylize(tmp_path, weights_cache):
    cfg = tiny_config(tmp_path, steps=4)
    work = tmp_path / "run"
    r = run_cli(*train_cli_args(cfg, work))
    assert r.returncode == 0, r.stderr[-2000:]
    model = Path(r.stdout.strip().splitlines()[-1])
    assert model.is_file() and model.parent == work
    assert len((work / "metrics.jsonl").read_text().splitlines()) == 2
    assert (work / "checkpoints" / "4").is_dir() and (work / "config.json").is_file()
    mesh = json.loads((work / "config.json").read_text())["mesh"]  # the devices the run used
    assert mesh["devices"] >= 1 and mesh["processes"] == 1 and mesh["platform"] == "cpu"
    assert (work / "loss_curve.png").is_file() and (work / "samples" / "step_0000004.png").is_file()

    a = images.save_image(tmp_path / "in" / "a.png", np.full((37, 45, 3), 90.0))
    b = images.save_image(tmp_path / "in" / "b.jpg", np.full((40, 33, 3), 200.0))
    bad = tmp_path / "in" / "c.png"
    bad.write_text("not an image")
    out = tmp_path / "out"
    r = run_cli("bin/stylize", f"--model={model}", str(a), str(b), str(bad), f"--out={out}")
    assert r.returncode == 1  # one input failed, the others were processed
    err = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(err) == 1 and err[0].startswith("error:") and "c.png" in err[0]
    assert images.load_image(out / "a.png").shape == (37, 45, 3)
    assert images.load_image(out / "b.png").shape == (40, 33, 3)


def test_user_mistakes_give_one_line_errors(tmp_path, weights_cache):
    r = run_cli("bin/stylize", "--model=nope", "x.png", f"--out={tmp_path}")
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "nope" in r.stderr
    r = run_cli("bin/train", "--config=configs/style.py:runlocal", f"--workdir={tmp_path}",
             "--config.train.no_such_key=1")
    assert r.returncode == 2 and "no_such_key" in r.stderr and "Traceback" not in r.stderr
    r = run_cli("bin/train", "--config=configs/missing.py", f"--workdir={tmp_path}")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "missing.py" in r.stderr
    r = run_cli("bin/train", "--config=configs/style.py:runlocal", f"--workdir={tmp_path}",
             "--config.style_image=/missing.jpg")
    assert r.returncode == 1 and r.stderr.strip().startswith("error:") and "Traceback" not in r.stderr
    assert "/missing.jpg" in r.stderr and "--config.style_image" in r.stderr  # the key to set
    style = images.save_image(tmp_path / "style.png", np.full((40, 40, 3), 90, np.float32))
    r = run_cli("bin/train", "--config=configs/style.py:runlocal", f"--workdir={tmp_path / 'w'}",
                f"--config.style_image={style}", "--config.data.folder=/no/photos")
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0, r.stderr[-800:]
    assert "/no/photos" in r.stderr and "--config.data.folder" in r.stderr
    r = run_cli("bin/eval_style", "--model=starry_night", "--style=/missing.jpg", str(tmp_path / "x.png"))
    assert r.returncode == 1 and r.stderr.strip().startswith("error:") and "x.png" in r.stderr
    assert r.stderr.strip().count("\n") == 0
