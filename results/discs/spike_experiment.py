"""Does the spike penalty (losses.spike_term) remove the bright discs, at equal training?

  .venv/bin/python results/discs/spike_experiment.py OUT STEPS ARM=WEIGHT[:THRESHOLD] ...
  e.g. results/discs/spike_experiment.py /tmp/spike 200 baseline=0 spike10=10 spike30=30:4
  Options: --model=NAME (another shipped style network), --size=PX (crops), --lr=LR.
  An arm whose name starts with "batch" trains the shipped network with batch norm in place of
  instance norm (its parameters kept; `batch_norm_start`); an arm named floorF with the floored
  instance norm, each channel's floor starting at F times its median variance (`floor_start`), e.g. floor1=0, or
  with the spike term too, floor1_spike10=10.

Every arm starts from the shipped starry_night network (which paints discs: results/discs/
README.md) and trains STEPS more steps with the same data, seed, crops (batch 2, 128 px, the
training photos less the 10 held out) and objective, except the spike weight (and threshold).
Then, for every arm and for the shipped network itself: the disc area (fastnst/discs.py) on the
10 held-out photos and the 3 content photos at 512 px, and the image objective (content + style +
TV, the spike term left out) on 256 px centre squares of the same photos. Writes OUT/ARM/ (the run),
OUT/results.json and OUT/sheet.jpg (photo | shipped | each arm, the discs outlined in red).
"""
import json
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fastnst import data, discs, evaluate, gatys, images, modelfile, perceptual, stylize, train, vgg
from fastnst.configs import style as style_config

SHEET_PHOTOS = 4  # rows of the contact sheet: the held-out photos with the largest shipped disc area


def batch_norm_start(shipped: modelfile.Model, path: Path) -> Path:
    """The shipped network with batch norm in place of instance norm (the paper's network): the
    same parameters, running statistics 0 / 1 (momentum 0.9: replaced within the first 50 steps)."""
    def stats(tree):
        if set(tree) == {"scale", "bias"}:
            return {"mean": np.zeros_like(tree["scale"]), "var": np.ones_like(tree["scale"])}
        out = {k: stats(v) for k, v in tree.items() if isinstance(v, dict)}
        return {k: v for k, v in out.items() if v}
    variables = {"params": shipped.variables["params"], "batch_stats": stats(shipped.variables["params"])}
    return modelfile.save_model(path, {**shipped.config, "norm": "batch"}, variables, meta=shipped.meta)


def floor_start(shipped: modelfile.Model, path: Path, fraction: float, files) -> Path:
    """The shipped network with instance norm replaced by `instance_floor`: the same parameters, each
    channel's floor `fraction` times the median variance of the norm's input over `files` (training
    photos at 256 px) under the shipped network, so that the function starts close to the shipped one."""
    from activations import PAIRS

    variances = {}
    for f in files:
        p = images.resize_max_side(images.load_image(f), 256)
        h, w = (d - d % 4 for d in p.shape[:2])
        _, st = shipped.net.apply(shipped.variables, jnp.asarray(p[None, :h, :w]), capture_intermediates=True,
                                  mutable=["intermediates"])
        for conv, norm in PAIRS:
            node = st["intermediates"]
            for part in conv.split("/"):
                node = node[part]
            a = np.asarray(node["__call__"][0][0])
            variances.setdefault(norm, []).append(a.reshape(-1, a.shape[-1]).var(0))
    params = jax.tree_util.tree_map(np.asarray, shipped.variables["params"])
    for norm, v in variances.items():
        node = params
        for part in norm.split("/"):
            node = node[part]
        node["log_floor"] = np.log(fraction * np.median(np.stack(v), 0)).astype(np.float32)
    return modelfile.save_model(path, {**shipped.config, "norm": "instance_floor"}, {"params": params},
                                meta=shipped.meta)


def config(workdir_steps: int, weight: float, threshold: float, shipped: modelfile.Model, start=None,
           size: int = 128, lr: float = 1e-3):
    c = style_config.get_config()
    c.model.update(shipped.config)
    if start is not None:
        c.model.norm = modelfile.load_model(start).config["norm"]
    c.data.holdout = 10  # the measured photos are never trained on
    c.train.update(batch_size=2, image_size=size, lr=lr, steps=workdir_steps, log_every=25,
                   ckpt_every=workdir_steps, sample_every=10**9)
    c.loss.update(spike=weight, spike_threshold=threshold)
    return c


def objective_fn(spec, params, grams):
    @jax.jit
    def value(image, content_feats):
        return gatys.objective(spec, params, content_feats, grams)(image)
    return value


def measure(model, photos512, squares, value, params, spec):
    areas = {s: [] for s in photos512}
    outs = {}
    for s, photos in photos512.items():
        for name, p in photos.items():
            out = np.asarray(stylize.apply(model, p))
            areas[s].append(discs.disc_area(out, p)["area"])
            outs[name] = out
    obj = {}
    for s, sq in squares.items():
        vals = []
        for p in sq.values():
            cf = vgg.features(params, jnp.asarray(p[None], jnp.float32), spec.content_layers)
            vals.append(float(value(np.asarray(stylize.apply(model, p)), cf)))
        obj[s] = vals
    return {"disc_area": areas, "objective": obj}, outs


def photo_sets(shared):
    """The measured photos, per set (the 10 held-out training photos, the 3 content photos): at 512 px
    on the longer side (disc area) and as 256 px centre squares (objective)."""
    held = data.FolderSource(shared / "train", holdout=10).heldout
    content = sorted((shared / "content").glob("*.jpg"))
    sets = {"held_out_10": held, "content_3": content}
    photos512 = {s: {Path(f).stem: images.resize_max_side(images.load_image(f), 512) for f in fs}
                 for s, fs in sets.items()}
    squares = {s: {Path(f).stem: evaluate.center_square(images.load_image(f), 256) for f in fs}
               for s, fs in sets.items()}
    return photos512, squares


def main(out, steps, arms, shipped_name="starry_night", size=128, lr=1e-3):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shared = data.shared_data()
    photos512, squares = photo_sets(shared)
    shipped = modelfile.load_model(shipped_name)
    spec, style_size = perceptual.of_model(shipped.meta)
    params = vgg.load_params()
    grams = perceptual.style_grams(params, images.load_image(shared / "styles" / f"{shipped_name}.jpg"),
                                   spec.style_layers, style_size)
    value = objective_fn(spec, params, grams)
    results, sheets = {}, {}
    results["shipped"], sheets["shipped"] = measure(shipped, photos512, squares, value, params, spec)
    for arm, (weight, threshold) in arms.items():
        t0 = time.monotonic()
        start = None
        if arm.startswith("batch"):
            start = batch_norm_start(shipped, out / f"{arm}_start.msgpack")
        elif arm.startswith("floor"):
            start = floor_start(shipped, out / f"{arm}_start.msgpack", float(re.match(r"floor([0-9.]*[0-9])", arm)[1]),
                                data.FolderSource(shared / "train", holdout=10).files[:16])
        c = config(steps, weight, threshold, shipped, start, size, lr)
        c.init_from = str(start or shipped_name)
        c.style_image = str(shared / "styles" / f"{shipped_name}.jpg")
        run = train.train_and_evaluate(c, out / arm,
                                       progress=False)
        m = modelfile.load_model(run.model_path)
        results[arm], sheets[arm] = measure(m, photos512, squares, value, params, spec)
        results[arm].update(weight=weight, threshold=threshold, steps=steps, train_s=time.monotonic() - t0)
        print(arm, summary(results[arm]), flush=True)
    print("shipped", summary(results["shipped"]))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write_sheet(out / "sheet.jpg", results, sheets, photos512["held_out_10"])


def summary(r):
    return {s: {"mean_area": round(float(np.mean(a)), 5), "with_disc": int(sum(x > 0 for x in a)),
                "objective": round(float(np.mean(r["objective"][s])), 3)} for s, a in r["disc_area"].items()}


def _height(image, h):
    from PIL import Image

    w = round(image.shape[1] * h / image.shape[0])
    return np.asarray(Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).resize((w, h), Image.LANCZOS))


def write_sheet(path, results, sheets, photos, h=200):
    """Rows: the held-out photos with the largest shipped disc area; columns: the photo, then each
    network's output with its discs in red."""
    names = list(photos)
    top = sorted(range(len(names)), key=lambda i: -results["shipped"]["disc_area"]["held_out_10"][i])
    rows = []
    for i in top[:SHEET_PHOTOS]:
        p = photos[names[i]]
        cells = [p] + [np.where(discs.disc_mask(sheets[a][names[i]], p)[..., None], [255, 0, 0],
                                sheets[a][names[i]]) for a in sheets]
        rows.append(np.concatenate([_height(c, h) for c in cells], 1))
    w = max(r.shape[1] for r in rows)
    pad = [np.pad(r, ((0, 4), (0, w - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    sheet = np.concatenate(pad)
    images.save_image(path, sheet.astype(np.float32))


if __name__ == "__main__":
    arms, opts = {}, {}
    for a in sys.argv[3:]:
        if a.startswith("--"):  # --model=NAME (a shipped style network), --size=PX, --lr=LR
            k, _, v = a[2:].partition("=")
            opts[{"model": "shipped_name"}.get(k, k)] = {"size": int, "lr": float}.get(k, str)(v)
            continue
        name, _, v = a.partition("=")
        w, _, t = v.partition(":")
        arms[name] = (float(w), float(t or 4.0))
    main(sys.argv[1], int(sys.argv[2]), arms, **opts)
