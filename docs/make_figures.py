"""Makes the README's figures from the shipped models and stored results.

    .venv/bin/python docs/make_figures.py          # needs ../shared/data (paintings, Set14, photos)

Writes docs/gallery.jpg (painting | photo | network, per shipped style), docs/sr_crop.jpg (an x4
crop of Set14's comic: bicubic | L_pixel | L_feat | HR), docs/network_vs_lbfgs.jpg (the stored
Fig. 5 panels of results/fig5_starry_night with their objectives) and docs/video_strip.jpg (a
panning clip with known motion, input over the_scream's frames). Every output pixel comes from the
models in fastnst/pretrained or from results/; nothing is retouched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fastnst import data, evaluate, images, stylize, temporal  # noqa: E402

DOCS = ROOT / "docs"
PAINTINGS = {"starry_night": "The Starry Night (van Gogh, 1889)", "the_scream": "The Scream (Munch, 1893)"}


def _stack(rows: list[np.ndarray], gap: int = 10) -> np.ndarray:
    """Rows of figures one above the other, padded with white to the widest."""
    width = max(r.shape[1] for r in rows)
    out = []
    for i, r in enumerate(rows):
        out.append(np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255))
        if i < len(rows) - 1:
            out.append(np.full((gap, width, 3), 255.0, np.float32))
    return np.concatenate(out, axis=0)


def gallery() -> Path:
    photo = images.resize_max_side(images.load_image(data.sample_photo("chelsea.png")), 384)
    rows = []
    for name, title in PAINTINGS.items():
        painting = images.load_image(data.shared_data() / "styles" / f"{name}.jpg")
        result = np.asarray(stylize.apply(stylize.load_model(name), photo))
        rows.append(images.labelled([painting, photo, result], [title, "photo", f"network ({name})"],
                                    height=220))
    return images.save_image(DOCS / "gallery.jpg", _stack(rows), quality=90)


def sr_crop(box=(60, 150, 96, 96)) -> Path:
    """Set14 comic at x4; the crop `box` (top, left, height, width) in HR pixels, shown at 2.5x."""
    sample = next(s for s in evaluate.load_set(data.shared_data() / "sr" / "Set14", 4) if s.name == "comic")
    outs = [evaluate.bicubic(4)(sample.lr)]
    outs += [evaluate.model_upscaler(stylize.load_model(m))(sample.lr) for m in ("sr_x4_pixel", "sr_x4_feature")]
    top, left, h, w = box
    crops = [np.asarray(o, np.float32)[top:top + h, left:left + w] for o in (*outs, sample.hr)]
    big = [images.resize(c, (h * 5 // 2, w * 5 // 2), method="nearest") for c in crops]
    fig = images.labelled(big, ["bicubic", "L_pixel", "L_feat", "original (HR)"], height=h * 5 // 2)
    return images.save_image(DOCS / "sr_crop.jpg", fig, quality=92)


def network_vs_lbfgs(name: str = "amber") -> Path:
    res = json.loads((ROOT / "results/fig5_starry_night/results.json").read_text())
    row = next(r for r in res["rows"] if r["name"] == name)
    fig = images.load_image(ROOT / f"results/fig5_starry_night/{name}.png")
    w = (fig.shape[1] - 16) // 3  # evaluate.fig5 writes three equal panels with 8 px gaps
    panels = [fig[:, i * (w + 8): i * (w + 8) + w] for i in range(3)]
    labels = ["photo", f"network, one pass (objective {row['network']:.1f})",
              f"L-BFGS, {res['iters']} iterations ({row['lbfgs'][-1]:.1f})"]
    return images.save_image(DOCS / "network_vs_lbfgs.jpg",
                             images.labelled(panels, labels, height=256, font_px=15), quality=90)


def video_strip(frames: int = 5) -> Path:
    photo = temporal.fit_photo(images.load_image(data.content_photo()), (180, 320))
    clip, _ = temporal.synthetic_clip(photo, "pan", frames=frames * 3, size=(180, 320), speed=4.0)
    clip = clip[::3]
    out = np.asarray(stylize.apply(stylize.load_model("the_scream"), clip))
    rows = [images.labelled(list(clip), [f"frame {3 * i + 1}" for i in range(frames)], height=144, font_px=15),
            images.side_by_side(list(out), height=144)]
    return images.save_image(DOCS / "video_strip.jpg", _stack(rows, gap=8), quality=90)


if __name__ == "__main__":
    if not (data.shared_data() / "sr" / "Set14").is_dir():
        sys.exit(f"{data.shared_data()}: the shared data folder is needed (paintings, Set14, photos)")
    for make in (gallery, sr_crop, network_vs_lbfgs, video_strip):
        print(make())
