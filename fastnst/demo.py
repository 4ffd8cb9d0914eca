"""The main job on an embedded default (`bin/demo`), as functions the notebook can call too."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fastnst import data, images, modelfile, stylize, train


def shipped_gallery(photo: str | os.PathLike, workdir: str | os.PathLike, *, max_side: int = 768,
                    log: Callable[[str], None] = print) -> Path:
    """Stylizes `photo` with every shipped style model; writes WORKDIR/<model>.png and
    WORKDIR/side_by_side.png (photo | one result per model) and returns the figure's path."""
    workdir = Path(workdir)
    content = images.resize_max_side(images.load_image(photo), max_side)
    outs = [content]
    for name in modelfile.available():
        model = modelfile.load_model(name)
        if model.config["task"] != "style":
            continue
        t = time.perf_counter()
        out = np.asarray(stylize.apply(model, content))
        path = images.save_image(workdir / f"{name}.png", out)
        log(f"{name}: {Path(photo).name} -> {path} ({time.perf_counter() - t:.1f} s with compilation)")
        outs.append(out)
    return images.save_image(workdir / "side_by_side.png", images.side_by_side(outs, height=320))


def small_style_config(style: str, photos_dir: str | os.PathLike, steps: int | None = None):
    """`configs/style.py:runlocal` pointed at the photos and style image this machine has
    (bundled photos are copied into `photos_dir` when there is no shared training folder)."""
    from fastnst.configs import style as style_config

    cfg = style_config.get_config(f"runlocal,style={style}")
    folder, holdout = data.training_folder(photos_dir)
    cfg.data.folder, cfg.data.holdout = str(folder), holdout
    if not Path(cfg.style_image).is_file():
        cfg.style_image = str(data.style_photo(style))
    if steps:
        cfg.train.steps = steps
    return cfg


def small_multistyle_config(names: list[str], photos_dir: str | os.PathLike, steps: int | None = None):
    """`configs/multistyle.py:runlocal` for the styles `names`, pointed at this machine's photos and
    style images (bundled photos stand in for style images the machine lacks)."""
    from fastnst.configs import multistyle

    cfg = multistyle.get_config(f"runlocal,styles={'+'.join(names)}")
    folder, holdout = data.training_folder(photos_dir)
    cfg.data.folder, cfg.data.holdout = str(folder), holdout
    cfg.style_images = tuple(p if Path(p).is_file() else str(data.style_photo(n))
                             for p, n in zip(cfg.style_images, names, strict=True))
    if steps:
        cfg.train.steps = steps
    return cfg


def train_and_stylize(cfg, workdir: str | os.PathLike, *, log: Callable[[str], None] = print
                      ) -> Path | None:
    """Trains `cfg` in `workdir` (resuming) and stylizes the demo content photo with the result;
    writes WORKDIR/stylized.png and WORKDIR/side_by_side.png (content | style | result).
    Returns the figure's path, or None when training was interrupted."""
    workdir = Path(workdir)
    log(f"training {cfg.train.steps} steps on {cfg.data.folder} with style {cfg.style_image}")
    t = time.perf_counter()
    result = train.train_and_evaluate(cfg, workdir)
    if result.interrupted:
        return None
    log(f"trained in {time.perf_counter() - t:.0f} s -> {result.model_path}")
    model = stylize.load_model(result.model_path)
    content_path = data.content_photo()
    content = images.resize_max_side(images.load_image(content_path), 512)
    out = np.asarray(stylize.apply(model, content))
    stylized = images.save_image(workdir / "stylized.png", out)
    log(f"stylized {content_path} -> {stylized}")
    return images.save_image(workdir / "side_by_side.png", images.side_by_side(
        [content, images.load_image(cfg.style_image), out], height=256))
