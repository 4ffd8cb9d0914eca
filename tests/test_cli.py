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


def test_what_a_new_user_meets_first_is_one_right_line(tmp_path, weights_cache):
    """The mistakes of a first hour, each one line naming the real problem, non-zero exit."""
    from tests.helpers import one_line_error

    line = one_line_error(run_cli("-m", "fastnst", "stylise", "x.jpg"), 2)
    assert "no program 'stylise'" in line and "stylize" in line
    line = one_line_error(run_cli("bin/stylize", "--model=the_scream", tmp_path / "missing.jpg",
                                  f"--out={tmp_path / 'o.png'}"))
    assert line == f"error: {tmp_path / 'missing.jpg'}: no such file or folder"
    line = one_line_error(run_cli("bin/train", "--config=style:runlocal", f"--workdir={tmp_path}",
                                  "--config.trian.steps=3"), 2)
    assert "'trian'" in line and 'Did you mean "train"' in line and "\\" not in line  # no escaped quotes
    line = one_line_error(run_cli("bin/train", "--config=stlye", f"--workdir={tmp_path}"), 2)
    assert "no config 'stlye'" in line and "style, multistyle, sr_x4, sr_x8" in line
    line = one_line_error(run_cli("bin/train", "--config=style:runlocal", f"--workdir={tmp_path}",
                                  "--config.data.folder=/no/photos",
                                  f"--config.style_image={tmp_path / 'missing.jpg'}"))
    assert "--config.style_image" in line
    # an optional extra that is missing: named, with the install command for a clone
    code = ("import sys; sys.modules['onnx'] = None; from fastnst.__main__ import main; "
            f"sys.exit(main(['export', '--model=the_scream', '--format=onnx', '--out={tmp_path}/m.onnx']))")
    line = one_line_error(run_cli("-c", code))
    assert "ONNX export needs the 'deploy' extra: pip install -e '" in line and "[deploy]'" in line
    r = run_cli("bin/train", "--help")
    assert r.returncode == 0 and "--config" in r.stdout and "sr_x4" in r.stdout, r.stderr[-500:]
    r = run_cli("-m", "fastnst", "--help")
    assert r.returncode == 0 and all(f"  {p} " in r.stdout for p in ("stylize", "train", "eval_sr"))
    r = run_cli("bin/train", "--config=sr_x4:runlocal", "--config.train.steps=7", "--print_config")
    assert r.returncode == 0 and "steps: 7" in r.stdout and "task: sr" in r.stdout, r.stderr[-500:]


def test_packaged_configs_resolve_by_name_or_path(tmp_path):
    from fastnst import configs

    assert configs.resolve("style:runlocal") == f"{configs.HERE / 'style'}.py:runlocal"
    assert configs.resolve("sr_x8") == f"{configs.HERE / 'sr_x8'}.py"
    assert configs.resolve("configs/style.py:runlocal") == "configs/style.py:runlocal"  # a path stays
    assert (Path(__file__).parents[1] / "configs" / "style.py").resolve() == configs.HERE / "style.py"
    with pytest.raises(ValueError, match="no config 'nope'"):
        configs.resolve("nope")


def test_flags_are_accepted_in_either_spelling_and_help_shows_defaults(capsys):
    from fastnst import cli

    assert cli.kebab("--max_size=3") == "--max-size=3" and cli.kebab("a_b.png") == "a_b.png"
    assert cli.kebab("--out=my_file.png") == "--out=my_file.png"  # values stay as they are
    assert cli.snake("--init-timeout-s=5") == "--init_timeout_s=5"
    assert cli.snake("--config.train.steps=3") == "--config.train.steps=3"
    ap = cli.Parser(description="x")
    ap.add_argument("--max-size", type=int, default=7, help="longer side")
    assert ap.parse_args(["--max_size=3"]).max_size == 3 and ap.parse_args([]).max_size == 7
    assert "longer side (default: 7)" in ap.format_help()
