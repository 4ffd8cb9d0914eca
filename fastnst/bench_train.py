"""Training-side tables for the recipe job (issue 26): networks side by side, and the data loader.

  bin/bench --recipe [--out=DIR]

* `side_by_side`: the training loop's step time (`bench.train_step`, i.e. `train_and_evaluate` on
  synthetic photos) for 1, 2 and 4 style networks in one step, and per network.
* `loader`: images/s that `data.Batches` delivers from a photo folder with 1 and 2 decoding
  workers, on the first pass (JPEG decoding and resizing) and from the in-memory cache.
"""

from __future__ import annotations

import time

from fastnst import bench, data


def side_by_side(loss, *, counts=(1, 2, 4), size: int = 128, batch: int = 2, variant=None,
                 repeats: int = 3) -> list[dict]:
    """Step time of `counts` networks side by side (default: the runlocal network)."""
    variant = variant or {"norm": "instance", "upsample": "resize_conv", "padding": "paper", "width": 0.5}
    rows = []
    for m in counts:
        r = bench.train_step(loss, size, batch, variant=variant, repeats=repeats, networks=m)
        rows.append({"networks": m, "step_s": r["median_s"], "per_network_s": r["median_s"] / m,
                     "compile_s": r["compile_s"]})
    one = rows[0]["per_network_s"] if rows and rows[0]["networks"] == 1 else None
    for r in rows:
        r["speedup_vs_one_at_a_time"] = one / r["per_network_s"] if one else None
    return rows


def loader(folder: str, *, workers=(1, 2), size: int = 256, batch: int = 4, batches: int = 16) -> list[dict]:
    """Images/s from `folder` through `data.Batches` (cache on): a cold pass, then the same steps
    again from the cache."""
    rows = []
    for w in workers:
        b = data.Batches(data.FolderSource(folder), batch_size=batch, image_size=size, seed=0, workers=w,
                         cache=True)
        try:
            rates = []
            for _ in range(2):
                t = time.perf_counter()
                for s in range(batches):
                    b.batch(s)
                rates.append(batches * batch / (time.perf_counter() - t))
        finally:
            b.close()
        rows.append({"workers": w, "cold_images_per_s": rates[0], "cached_images_per_s": rates[1],
                     "image_size": size})
    return rows


def markdown(res: dict) -> str:
    lines = ["| networks side by side | s/step | s per network-step | vs one at a time | compile s |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['networks']} | {r['step_s']:.3f} | {r['per_network_s']:.3f} | "
              f"{r['speedup_vs_one_at_a_time']:.2f}x | {r['compile_s']:.1f} |" for r in res["side_by_side"]]
    lines += ["", "| loader workers | first pass img/s | cached img/s | crop |", "|---|---|---|---|"]
    lines += [f"| {r['workers']} | {r['cold_images_per_s']:.1f} | {r['cached_images_per_s']:.1f} | "
              f"{r['image_size']} |" for r in res["loader"]]
    return "\n".join(lines)
