"""Small synthetic inputs and a tiny config shared by the training tests."""

from pathlib import Path

import numpy as np

from configs import style as style_config
from fastnst import images


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
