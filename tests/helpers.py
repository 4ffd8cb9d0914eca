"""Small synthetic inputs, a tiny config, one train-step setup and one CLI runner shared by the tests."""

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np

from fastnst import images, losses, nets, perceptual
from fastnst.configs import style as style_config
from fastnst.step import create_train_state

ROOT = Path(__file__).resolve().parents[1]


def write_photos(folder: Path, n: int, size=(40, 48), seed: int = 0) -> Path:
    """Smooth random colour images (not noise, so VGG features are structured)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.uniform(0, 255, (5, 6, 3)).astype(np.float32)
        images.save_image(folder / f"img{i:02d}.png", images.resize(small, size, method="bilinear"))
    return folder


def tiny_config(tmp: Path, steps: int = 6):
    c = style_config.get_config("runlocal")
    c.data.folder = str(write_photos(tmp / "photos", 8))
    stripes = np.zeros((48, 48, 3), np.float32)
    stripes[::6] = [250, 200, 30]
    c.style_image = str(images.save_image(tmp / "style.png", stripes))
    c.style_size = 48
    c.data.holdout = 2
    c.data.workers = 2
    c.model.width = 0.125
    c.train.update(batch_size=2, image_size=32, steps=steps, log_every=2, ckpt_every=2,
                   sample_every=steps, keep=2)
    return c


def train_cli_args(cfg, workdir) -> list[str]:
    """`bin/train` arguments that run `cfg` (a `tiny_config`) from the command line."""
    t = cfg.train
    return ["bin/train", "--config=configs/style.py:runlocal", f"--workdir={workdir}", "--noprogress",
            f"--config.data.folder={cfg.data.folder}", f"--config.style_image={cfg.style_image}",
            f"--config.style_size={cfg.style_size}", f"--config.model.width={cfg.model.width}",
            f"--config.data.holdout={cfg.data.holdout}", f"--config.train.image_size={t.image_size}",
            f"--config.train.batch_size={t.batch_size}", f"--config.train.steps={t.steps}",
            f"--config.train.log_every={t.log_every}", f"--config.train.ckpt_every={t.ckpt_every}",
            f"--config.train.sample_every={t.sample_every}", f"--config.train.time_limit_s={t.time_limit_s}"]


def tiny_step(vgg_params, cfg, *, lr: float = 1e-3, dtype: str = "float32", style=None, seed: int = 0):
    """Everything one call of the train step needs for `cfg` (e.g. `tiny_config`): the network, a
    fresh train state, the loss spec, a 2x32x32 batch (target = input) and the style Grams (of
    `style`, default the batch's first image)."""
    spec = losses.LossSpec.from_config(cfg.loss)
    net = nets.build(cfg.model.to_dict(), dtype=jnp.dtype(dtype))
    state = create_train_state(net, jax.random.key(0), lr=lr)
    x = jnp.asarray(np.random.default_rng(seed).uniform(0, 255, (2, 32, 32, 3)), jnp.float32)
    style = np.asarray(x[0]) if style is None else style
    grams = perceptual.style_grams(vgg_params, style, spec.style_layers, style.shape[0])
    return SimpleNamespace(net=net, state=state, spec=spec, grams=grams, x=x, batch={"input": x, "target": x})


def free_port() -> int:
    """A TCP port nobody listens on now (for a coordinator or a web app the test starts)."""
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_cli(*args, env=None, timeout=600) -> subprocess.CompletedProcess:
    """Runs `python *args` from the repository root on the CPU, as a user would; output captured."""
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})


def one_line_error(r: subprocess.CompletedProcess, code: int = 1) -> str:
    """Asserts the CLI failed with `code` and printed exactly one `error: ...` line, no traceback."""
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == code, (r.returncode, r.stderr[-1500:])
    assert "Traceback" not in r.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), r.stderr[-1500:]
    return lines[0]
