"""SR loader throughput before/after the one-matrix-per-axis degradation (dd405cb), one run:
`data.Batches` at x4 with the paper's blur (sigma 1) and without, 288 px crops, batch 4, 4 threads,
photos from the in-memory cache (filled by a first pass that is not timed).

  .venv/bin/python results/recipe_h200/measure_loader.py PHOTOS > results/recipe_h200/loader_sr.json
"""
import json
import platform
import sys
import time

import numpy as np

from fastnst import augment, data, images


def two_steps(hr, scale, *, sigma=1.0):  # the degradation as it was: NumPy blur, then Pillow bicubic
    h, w = hr.shape[:2]
    blurred = augment.gaussian_blur(hr, sigma) if sigma else hr
    return np.clip(images.resize(blurred, (h // scale, w // scale), method="bicubic"), 0, 255)


def rate(sigma: float, steps: int = 150) -> float:
    b = data.Batches(data.FolderSource(sys.argv[1], holdout=10), batch_size=4, image_size=288, seed=0,
                     sr_scale=4, sr_sigma=sigma, workers=4, cache=True)
    for s in range(steps):  # fills the cache
        b.batch(s)
    t = time.perf_counter()
    for s in range(steps):
        b.batch(s)
    return 4 * steps / (time.perf_counter() - t)


rows, new = [], augment.degrade
for name, fn in (("before: blur then resize", two_steps), ("after: one matrix per axis", new)):
    augment.degrade = fn
    rows.append({"degrade": name, "images_per_s_sigma1": round(rate(1.0), 1),
                 "images_per_s_no_blur": round(rate(0.0), 1)})
print(json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=1))
