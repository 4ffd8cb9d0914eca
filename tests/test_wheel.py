"""fastnst as a user outside the repository gets it: the wheel built from this tree, installed
into a fresh virtual environment, its commands run from another folder."""

import os
import re
import subprocess
import sys
import sysconfig
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(env_dir: Path, cwd: Path, *args, timeout=600) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    environ.update(JAX_PLATFORMS="cpu", PATH=f"{env_dir / 'bin'}{os.pathsep}{environ.get('PATH', '')}")
    return subprocess.run(list(map(str, args)), cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=environ)


# (Long: one user session, command after command, each checked where it runs.)
@pytest.mark.slow  # builds a wheel (setuptools from the index, as pip does) and runs six commands
def test_the_wheel_installs_and_its_commands_run_outside_the_repository(tmp_path, weights_cache):
    import shutil

    # Built from a copy of what the wheel is made of: setuptools builds in the source folder, and a
    # stale build/ there (a module since removed) would end up in the wheel.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "docs/package.md"):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "fastnst", src / "fastnst", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", wheels, src],
                   check=True, timeout=600, capture_output=True)
    (wheel,) = wheels.glob("fastnst-*.whl")
    with zipfile.ZipFile(wheel) as z:  # the description a package index shows: no link that breaks there
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    assert "fastnst stylize" in meta and not re.findall(r"\]\((?!https://)[^)]*\)", meta), meta[:3000]
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env_dir], check=True, timeout=120)
    # The dependencies come from the suite's environment (one line in a .pth: a plain path, so that
    # environment's own .pth files, among them the editable install of this clone, stay inactive).
    (site,) = (env_dir / "lib").glob("python3*/site-packages")
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", env_dir / "bin" / "python", "install", "-q",
                    "--no-deps", wheel], check=True, timeout=600, capture_output=True)
    home = tmp_path / "elsewhere"
    home.mkdir()
    py = env_dir / "bin" / "python"
    r = _run(env_dir, home, py, "-c", "import fastnst, sys; print(fastnst.__file__); "
             "print(sorted(m for m in sys.modules if m.startswith(('jax', 'flax'))))")
    assert r.returncode == 0 and str(site) in r.stdout and "[]" in r.stdout, r.stdout + r.stderr
    t = time.perf_counter()
    _run(env_dir, home, py, "-c", "import fastnst")
    print(f"python -c 'import fastnst': {time.perf_counter() - t:.2f} s")
    r = _run(env_dir, home, "fastnst", "--help")
    assert r.returncode == 0 and "train" in r.stdout
    from fastnst.__main__ import PROGRAMS

    for program in PROGRAMS:
        r = _run(env_dir, home, "fastnst", program, "--help")
        assert r.returncode == 0 and "usage: fastnst" in r.stdout, (program, r.stderr[-800:])
    from fastnst import data

    photo, style = data.sample_photo("chelsea.png"), data.sample_photo("coffee.png")
    r = _run(env_dir, home, "fastnst", "stylize", "--model=the_scream", "--max-size=96", photo, "--out=s.png")
    assert r.returncode == 0 and (home / "s.png").is_file(), r.stderr[-1500:]
    from fastnst import images

    small = images.save_image(tmp_path / "small.png", images.load_image(photo)[:32, :48])
    r = _run(env_dir, home, "fastnst", "upscale", "--model=sr_x4_pixel", small, "--out=u.png")
    assert r.returncode == 0 and (home / "u.png").is_file(), r.stderr[-1500:]
    r = _run(env_dir, home, "fastnst", "export", "--model=the_scream", "--format=onnx", "--out=m.onnx")
    assert r.returncode == 0 and (home / "m.onnx").stat().st_size > 100_000, r.stderr[-1500:]
    r = _run(env_dir, home, "fastnst", "train", "--config=style:runlocal", "--config.data.source=bundled",
             "--config.data.holdout=1", f"--config.style_image={style}", "--config.train.steps=2",
             "--config.train.image_size=48", "--config.style_size=64", "--workdir=w", "--noprogress")
    assert r.returncode == 0 and r.stdout.strip().endswith("model.msgpack"), r.stderr[-1500:]
    # the README's training command, from a clone without ../shared, names the key to set
    r = _run(env_dir, home, "fastnst", "train", "--config=style:runlocal", "--workdir=w2")
    assert r.returncode == 1 and "--config.style_image" in r.stderr and r.stderr.count("\n") == 1
