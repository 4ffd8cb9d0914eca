"""Evaluation protocols: super-resolution (paper Table 2) and network vs optimisation (Fig. 5).

Super-resolution (SRCNN's scripts): for each HR image of a set: crop to a multiple of the scale,
make LR by bicubic downsampling on uint8 data (Pillow's antialiased bicubic, within 0.01 dB of
MATLAB's `imresize` here), super-resolve, and score PSNR/SSIM on luma with `scale` pixels shaved
(`metrics.sr_scores`), plus LPIPS (VGG) on RGB. Grayscale files are evaluated on their gray values.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fastnst import discs, gatys, images, losses, metrics, perceptual, stylize, vgg
from fastnst.errors import FastnstError

Upscaler = Callable[[np.ndarray], np.ndarray]  # HxWx3 LR -> (scale*H)x(scale*W)x3 SR


@dataclass
class Sample:
    """One HR image of an SR set with its LR input."""
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
    """The bicubic baseline as an upscaler."""
    def up(lr):
        h, w = lr.shape[:2]
        return images.resize_uint8(lr, (h * scale, w * scale))

    return up


def model_upscaler(model: stylize.Model, *, histogram_match: bool = False) -> Upscaler:
    """An SR model as an upscaler (optionally histogram-matched to its input)."""
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
    """An SR set by name under `root`, or a folder."""
    p = Path(name)
    if p.is_dir():
        return p
    if (root / name).is_dir():
        return root / name
    raise FastnstError(f"{name}: not a folder, and not a set under {root}")


# --------------------------------------------------------------------------- paper Fig. 5


def center_square(image: np.ndarray, size: int) -> np.ndarray:
    """The largest centred square of an image, resized to size x size."""
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return np.clip(images.resize(image[top: top + s, left: left + s], (size, size), method="lanczos"),
                   0, 255)


def style_vs_lbfgs(model: stylize.Model, vgg_params, spec: losses.LossSpec, style_grams,
                   photos: dict[str, np.ndarray], *, iters: int = 300,
                   key: jax.Array | None = None, on_photo: Callable | None = None,
                   progress: Callable[[int, float], None] | None = None) -> list[dict]:
    """Paper Fig. 5: the style-transfer objective reached by the network's output and by
    projected L-BFGS from white noise, on the same photos, weights and layers.

    Each photo must be square (see `center_square`). Returns one row per photo: `name`,
    `network` (objective of the network's output), `lbfgs` (objective at iterations 0..iters),
    `iters_to_match` (first L-BFGS iteration at or below the network's objective, or None),
    `disc_area` (the fraction of the network's output covered by bright discs, `discs`), and
    the network's output and the last L-BFGS image (`images`, for figures).
    """
    key = jax.random.key(0) if key is None else key

    @jax.jit  # one compilation for all photos; the VGG weights are arguments, not constants
    def value(image, params, content_feats, grams):
        return gatys.objective(spec, params, content_feats, grams)(image)

    rows = []
    for i, (name, photo) in enumerate(photos.items()):
        content_feats = vgg.features(vgg_params, jnp.asarray(photo[None], jnp.float32), spec.content_layers)
        net_out = np.asarray(stylize.apply(model, photo))
        network = float(value(net_out, vgg_params, content_feats, style_grams))
        x0 = gatys.initial_image("noise", photo.shape[:2], content=None, key=jax.random.fold_in(key, i))
        x, values = gatys.run(x0, vgg_params, content_feats, style_grams, spec=spec, iters=iters,
                              every=10 if progress else 0, callback=progress)  # (every 10 iterations)
        values = np.asarray(values, np.float64)
        below = np.flatnonzero(values <= network)
        rows.append({"name": name, "network": network, "lbfgs": values.tolist(),
                     "disc_area": discs.disc_area(net_out, photo)["area"],  # bright discs (discs.py)
                     "iters_to_match": int(below[0]) if below.size else None,
                     "images": {"network": net_out, "lbfgs": np.asarray(x)}})
        if on_photo is not None:
            on_photo(rows[-1])
    return rows


def fig5_table(rows: list[dict], checkpoints=(50, 100, 300)) -> str:
    """Markdown: per photo and on average, the network's objective and L-BFGS's at checkpoints."""
    cps = [c for c in checkpoints if c < len(rows[0]["lbfgs"])]
    head = ("| photo | network | " + " | ".join(f"L-BFGS {c}" for c in cps)
            + " | L-BFGS iters to match | disc area |")
    lines = [head, "|---" * (len(cps) + 4) + "|"]

    def fmt_match(r):
        return str(r["iters_to_match"]) if r["iters_to_match"] is not None else f"> {len(r['lbfgs']) - 1}"

    for r in rows:
        lines.append(f"| {r['name']} | {r['network']:.2f} | "
                     + " | ".join(f"{r['lbfgs'][c]:.2f}" for c in cps)
                     + f" | {fmt_match(r)} | {r['disc_area']:.2%} |")
    mean = lambda xs: float(np.mean(xs))  # noqa: E731
    lines.append(f"| **mean** | **{mean([r['network'] for r in rows]):.2f}** | "
                 + " | ".join(f"**{mean([r['lbfgs'][c] for r in rows]):.2f}**" for c in cps)
                 + f" | | **{mean([r['disc_area'] for r in rows]):.2%}** |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- whole protocols


def sr_benchmark(models: Sequence[str], *, scale: int, sets: Sequence[str], root: str | os.PathLike,
                 histogram_match: bool = False, lpips: bool = True,
                 on_result: Callable[[str, str, dict], None] | None = None) -> dict:
    """Paper Table 2: {method: {set: scores}} for `bicubic` and model files / shipped names."""
    lpips_fn = None
    if lpips:
        params, lin = vgg.load_params(), metrics.lpips_weights()
        lpips_fn = lambda x, y: metrics.lpips(params, lin, x, y)  # noqa: E731
    loaded = {name: load_set(find_set(name, Path(root)), scale) for name in sets}
    upscalers = {}
    for m in models:  # every model is checked before any evaluation starts
        if m == "bicubic":
            upscalers[m] = bicubic(scale)
            continue
        model = stylize.load_model(m)
        if model.config["task"] != "sr" or model.scale != scale:
            raise FastnstError(f"{m}: not an x{scale} super-resolution model")
        upscalers[m] = model_upscaler(model, histogram_match=histogram_match)
    results = {}
    for label, up in upscalers.items():
        results[label] = {}
        for name, samples in loaded.items():
            results[label][name] = evaluate(up, samples, scale=scale, lpips_fn=lpips_fn)
            if on_result:
                on_result(label, name, results[label][name])
    return results


def write_sr_results(results: dict, out: str | os.PathLike) -> str:
    """Writes table.md, results.json and results.csv into `out`; returns the Markdown table."""
    import json

    out = Path(out)
    md = table(results)
    images.atomic_write_bytes(out / "table.md", (md + "\n").encode())
    images.atomic_write_bytes(out / "results.json", json.dumps(results, indent=2).encode())
    csv = "method,set,psnr,ssim,lpips\n" + "".join(
        f"{m},{s},{r['psnr']:.4f},{r['ssim']:.5f},{r.get('lpips', float('nan')):.5f}\n"
        for m, per in results.items() for s, r in per.items())
    images.atomic_write_bytes(out / "results.csv", csv.encode())
    return md


def fig5(model: str, style_path: str | os.PathLike, photos: Sequence[str | os.PathLike], *,
         spec: losses.LossSpec | None = None, style_size: int | None = None, size: int = 256,
         iters: int = 300, checkpoints: Sequence[int] = (50, 100, 300), limit: int = 0,
         out: str | os.PathLike = "runs/eval_style", on_photo: Callable | None = None,
         progress: Callable[[int, float], None] | None = None) -> str:
    """Paper Fig. 5 for one style model on held-out photos; writes table.md, results.json,
    curves.png and photo | network | L-BFGS figures of the first three photos into `out`. The
    objective (`spec`, `style_size`) is by default the one the model was trained with
    (`perceptual.of_model`)."""
    import json

    from fastnst import plots

    files = [f for p in photos for f in images.list_images(p)]
    files = files[:limit] if limit else files
    if not files:
        raise FastnstError("no photos given")
    squares = {f.stem: center_square(images.load_image(f), size) for f in files}
    net = stylize.load_model(model)
    if net.config["task"] != "style":
        raise FastnstError(f"{model}: not a style model")
    trained_spec, trained_size = perceptual.of_model(net.meta)
    spec, style_size = spec or trained_spec, style_size or trained_size
    params = vgg.load_params()
    grams = perceptual.style_grams(params, images.load_image(style_path), spec.style_layers, style_size)
    rows = style_vs_lbfgs(net, params, spec, grams, squares, iters=iters, on_photo=on_photo,
                          progress=progress)
    out = Path(out)
    for row in rows[:3]:
        figure = images.side_by_side([squares[row["name"]], row["images"]["network"],
                                      row["images"]["lbfgs"]], height=size)
        images.save_image(out / f"{row['name']}.png", figure)
    md = fig5_table(rows, checkpoints)
    meta = {"model": str(model), "style": str(style_path), "size": size, "iters": iters,
            "loss": dataclasses.asdict(spec), "style_size": style_size, "photos": [str(f) for f in files]}
    records = [{k: v for k, v in r.items() if k != "images"} for r in rows]
    images.atomic_write_bytes(out / "results.json", json.dumps({**meta, "rows": records}, indent=1).encode())
    images.atomic_write_bytes(out / "table.md", (md + "\n").encode())
    plots.fig5_curves(rows, out / "curves.png", title=f"{model}, {len(rows)} photos at {size}²")
    return md


# --------------------------------------------------------------------------- video stability


def video_clips(photos: Sequence[str | os.PathLike], *, kinds=("pan", "zoom", "rotate"), frames: int = 8,
                size: tuple[int, int] = (180, 320), seed: int = 0) -> dict[str, tuple]:
    """Synthetic clips with known motion (`temporal.synthetic_clip`) over each photo and motion:
    {name: (frames, exact backward flows)}."""
    from fastnst import temporal

    clips = {}
    for i, p in enumerate(photos):
        photo = temporal.fit_photo(images.load_image(p), size)
        for j, kind in enumerate(kinds):
            clips[f"{Path(p).stem}_{kind}"] = temporal.synthetic_clip(
                photo, kind, frames=frames, size=size, seed=seed + 10 * i + j)
    return clips


def video_stability(models: dict[str, stylize.Model], clips: dict, *, vgg_params, spec: losses.LossSpec,
                    style_grams) -> dict:
    """Per model (and for the input itself, the floor): warping error with DIS flow and with the
    exact flow, and the style loss of the outputs (so stability is not bought by losing the style),
    each the mean over clips. Returns {"rows": {...}, "outputs": {model: {clip: frames}}}."""
    from fastnst import temporal

    @jax.jit
    def style_of(frames, params, grams):
        feats = vgg.features(params, frames, spec.style_layers)
        return losses.style_loss(feats, grams)

    rows, outputs = {}, {}
    for name, model in {"input": None, **models}.items():
        dis, exact, style = [], [], []
        outputs[name] = {}
        for clip, (frames, flows) in clips.items():
            out = frames if model is None else np.asarray(stylize.apply(model, frames))
            outputs[name][clip] = out
            dis.append(temporal.warping_error(frames, out))
            exact.append(temporal.warping_error(frames, out, flows=flows))
            style.append(float(style_of(jnp.asarray(np.clip(out, 0, 255)), vgg_params, style_grams)))
        rows[name] = {"warping_error": float(np.mean(dis)), "warping_error_exact_flow": float(np.mean(exact)),
                      "style_loss": float(np.mean(style)), "clips": len(clips)}
    return {"rows": rows, "outputs": outputs}


def video_table(rows: dict) -> str:
    """Markdown: warping error (DIS and exact flow) and style loss per model."""
    lines = ["| output | warping error (DIS flow) | warping error (exact flow) | style loss |",
             "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['warping_error']:.5f} | {r['warping_error_exact_flow']:.5f} | "
                     f"{r['style_loss']:.3f} |")
    return "\n".join(lines)


def write_video_eval(result: dict, out: str | os.PathLike, *, meta: dict) -> str:
    """Writes table.md, results.json and contact.jpg (rows: input and each model; 4 frames of the
    first clip) into `out`; returns the table."""
    import json

    out = Path(out)
    md = video_table(result["rows"])
    images.atomic_write_bytes(out / "table.md", (md + "\n").encode())
    doc = json.dumps({**meta, "rows": result["rows"]}, indent=1)
    images.atomic_write_bytes(out / "results.json", doc.encode())
    first = next(iter(next(iter(result["outputs"].values()))))
    strips = []
    for per_clip in result["outputs"].values():
        frames = per_clip[first]
        picks = [frames[i] for i in np.linspace(0, len(frames) - 1, 4).round().astype(int)]
        strips.append(images.side_by_side(picks, height=160))
    width = max(s.shape[1] for s in strips)
    sheet = np.concatenate([np.pad(s, ((0, 8), (0, width - s.shape[1]), (0, 0)), constant_values=255)
                            for s in strips])
    images.save_image(out / "contact.jpg", sheet)
    return md
