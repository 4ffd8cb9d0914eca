"""The super-resolution evaluation protocol (paper Table 2; SRCNN's scripts).

For each HR image of a set: crop to a multiple of the scale, make LR by bicubic downsampling on
uint8 data (Pillow's antialiased bicubic, within 0.01 dB of MATLAB's `imresize` here), super-
resolve, and score PSNR/SSIM on luma with `scale` pixels shaved (`metrics.sr_scores`), plus LPIPS
(VGG) on RGB. Grayscale files are evaluated on their gray values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastnst import images, metrics, stylize
from fastnst.errors import FastnstError

Upscaler = Callable[[np.ndarray], np.ndarray]  # HxWx3 LR -> (scale*H)x(scale*W)x3 SR


@dataclass
class Sample:
    name: str
    hr: np.ndarray  # HxWx3, cropped to a multiple of the scale
    lr: np.ndarray
    gray: bool


def load_set(folder: str | os.PathLike, scale: int) -> list[Sample]:
    """The HR images of a folder with their bicubic LR inputs."""
    out = []
    for f in images.list_images(folder):
        gray = images.is_grayscale_file(f)
        hr = images.load_image(f)
        h, w = hr.shape[:2]
        hr = hr[: h - h % scale, : w - w % scale]
        src = hr[..., 0] if gray else hr  # gray files are resized as one channel, as MATLAB does
        lr = images.resize_uint8(src, (hr.shape[0] // scale, hr.shape[1] // scale))
        lr = np.repeat(lr[..., None], 3, -1) if gray else lr
        out.append(Sample(f.stem, hr, lr, gray))
    if not out:
        raise FastnstError(f"{folder}: no images")
    return out


def bicubic(scale: int) -> Upscaler:
    def up(lr):
        h, w = lr.shape[:2]
        return images.resize_uint8(lr, (h * scale, w * scale))

    return up


def model_upscaler(model: stylize.Model, *, histogram_match: bool = False) -> Upscaler:
    def up(lr):
        out = np.asarray(stylize.apply(model, lr))
        return metrics.match_histograms(out, lr) if histogram_match else out

    return up


def evaluate(upscale: Upscaler, samples: Sequence[Sample], *, scale: int,
             lpips_fn: Callable | None = None) -> dict[str, float]:
    """Mean PSNR, SSIM (and LPIPS when `lpips_fn(a, b)` is given) over a set."""
    rows = []
    for s in samples:
        sr = upscale(s.lr)
        if sr.shape != s.hr.shape:
            raise FastnstError(f"{s.name}: output {sr.shape} != ground truth {s.hr.shape}")
        if s.gray:
            sr = np.repeat(np.asarray(sr).mean(-1, keepdims=True), 3, -1)
        row = metrics.sr_scores(sr, s.hr, scale=scale, gray=s.gray)
        if lpips_fn is not None:
            row["lpips"] = float(lpips_fn(np.clip(sr, 0, 255)[None], s.hr[None])[0])
        rows.append(row)
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}


def table(results: dict[str, dict[str, dict[str, float]]]) -> str:
    """Markdown table: rows = methods, columns = sets, cells = PSNR / SSIM [/ LPIPS]."""
    sets = list(next(iter(results.values())))
    lines = ["| method | " + " | ".join(sets) + " |", "|---" * (len(sets) + 1) + "|"]
    for method, per_set in results.items():
        cells = []
        for s in sets:
            r = per_set[s]
            cell = f"{r['psnr']:.2f} / {r['ssim']:.4f}"
            cells.append(cell + (f" / {r['lpips']:.4f}" if "lpips" in r else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def find_set(name: str, root: Path) -> Path:
    p = Path(name)
    if p.is_dir():
        return p
    if (root / name).is_dir():
        return root / name
    raise FastnstError(f"{name}: not a folder, and not a set under {root}")
