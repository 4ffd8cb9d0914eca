"""Writes results/tiling_demo/: a photo stylized whole and stage by stage (tiling), and crops at a
window seam, for looking at; prints the max difference.

Run: python -m tests.measure_seams [--model=the_scream] [--budget-mb=200]
"""

import argparse
from pathlib import Path

import numpy as np

from fastnst import images, modelfile, stylize, tiling

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT.parent / "shared" / "data" / "content" / "chicago.jpg"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="the_scream")
    p.add_argument("--budget-mb", type=float, default=200.0)
    p.add_argument("--out", default=str(ROOT / "results" / "tiling_demo"))
    a = p.parse_args()
    model = modelfile.load_model(a.model)
    photo = images.load_image(PHOTO)
    budget = int(a.budget_mb * 2**20)
    whole = np.asarray(stylize.apply(model, photo, budget=2**40))
    tiled = np.asarray(stylize.apply(model, photo, budget=budget))
    assert not tiling.fits(model.net, *photo.shape[:2], budget), "the budget does not force tiling"
    h, w = photo.shape[:2]
    stages = tiling.plan(model.net, h + (-h % 4), w + (-w % 4), budget)
    seam = stages[-1].tiles[0][0][1]  # the output stage's first core boundary (a row)
    r0, c0 = max(0, seam - 80), w // 2 - 80
    crop = lambda im: np.clip(im[r0: r0 + 160, c0: c0 + 160], 0, 255)  # noqa: E731
    colour = stylize.finish(tiled, photo, preserve_colors=True)
    sheet = np.concatenate([crop(photo), crop(whole), crop(tiled), crop(colour)], axis=1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    images.save_image(out / "seam_crops.png", sheet)
    images.save_image(out / "overview.jpg", np.concatenate([photo, tiled, colour], axis=1))
    d = np.abs(tiled - whole)
    q = np.abs(np.round(np.clip(tiled, 0, 255)) - np.round(np.clip(whole, 0, 255)))
    print(f"{a.model}, {w}x{h}, budget {a.budget_mb:.0f} MB: {len(stages)} stages, "
          f"{sum(len(s.tiles) for s in stages)} windows; seam at row {seam}; max |diff| {d.max():.2e} "
          f"(mean {d.mean():.1e}); after rounding to 8 bits: max {q.max():.0f}, "
          f"{(q > 0).mean() * 100:.3f}% of values differ")


if __name__ == "__main__":
    main()
