"""Measures multi-style training against single-style networks on this CPU (issue 27):

    .venv/bin/python -m tests.measure_multistyle [--steps=300] [--out=results/multistyle]

1. Four styles in one network (configs/multistyle.py:runlocal, 4 x STEPS steps) vs four
   single-style networks (configs/style.py:runlocal, STEPS steps each): every style sees the same
   number of training images. Per-style content and style loss of each network's output on 7
   held-out photos (../shared/data/content and the training folder's held-out files, 256x256).
2. A fifth style (wave) three ways, STEPS steps each: added to the 4-style network (gamma/beta
   only, at Adam lr 1e-3, 3e-3 and 1e-2: 1,600 numbers tolerate a larger step than the whole
   network), from scratch, and fine-tuned from the shipped `the_scream` (width 1.0). Training
   objective (the weighted loss, mean of the last log lines) against CPU minutes (the loop's own
   images/s, so start-up is not counted), one plot.
3. Contact sheet of the four styles and a mixing strip candy -> udnie.

Every run is `bin/train` in a subprocess, as a user runs it; workdirs under --work.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ADD_LRS = ("1e-3", "3e-3", "1e-2")
STYLES = ("candy", "udnie", "mosaic", "la_muse")
FIFTH = "wave"


def _train(work: Path, config: str, *overrides: str) -> Path:
    if not (work / "model.msgpack").is_file():
        args = [sys.executable, "bin/train", f"--config={config}", f"--workdir={work}", "--noprogress",
                "--config.train.sample_every=0", "--config.train.ckpt_every=100000", *overrides]
        print(" ".join(args[1:]), flush=True)
        subprocess.run(args, cwd=ROOT, check=True)
    return work / "model.msgpack"


def _cpu_minutes_and_loss(work: Path, batch: int = 2) -> tuple[list, list]:
    rows = [json.loads(ln) for ln in (work / "metrics.jsonl").read_text().splitlines()]
    t, xs, ys, prev = 0.0, [], [], 0
    for r in rows:
        t += (r["step"] - prev) * batch / r["images_per_s"] / 60
        prev = r["step"]
        xs.append(t)
        ys.append(r["loss"])
    w = min(5, len(ys))
    smooth = np.convolve(ys, np.ones(w) / w, mode="valid")  # the loss of one batch is noisy
    return xs[w - 1:], [float(v) for v in smooth]


def _photos(size: int = 256) -> dict:
    from fastnst import evaluate, images

    shared = ROOT / "../shared/data"
    files = images.list_images(shared / "content") + images.list_images(shared / "train")[-4:]
    return {f.stem: evaluate.center_square(images.load_image(f), size) for f in files}


def _losses(model, style: str, photos: dict, vgg_params) -> dict:
    """Mean weighted content and style loss (configs/style.py weights) of the model's outputs."""
    from fastnst import images, losses, perceptual, stylize, vgg
    from fastnst.configs import style as style_config

    spec = losses.LossSpec.from_config(style_config.get_config().loss)
    grams = perceptual.style_grams(vgg_params, images.load_image(f"{style_config.STYLES}/{style}.jpg"),
                                 spec.style_layers, 256)
    parts = []
    for x in photos.values():
        y = jnp.asarray(stylize.apply(model, x)[None])
        _, p = losses.total_loss(spec, pred=y, pred_feats=vgg.features(vgg_params, y, spec.vgg_layers),
                                 content_feats=vgg.features(vgg_params, jnp.asarray(x[None]),
                                                            spec.content_layers),
                                 style_grams=grams)
        parts.append({k: float(v) for k, v in p.items()})
    return {k: float(np.mean([p[k] for p in parts])) for k in ("content", "style")}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--work", default="runs/measure_multistyle")
    ap.add_argument("--out", default="results/multistyle")
    ap.add_argument("--keep-table", action="store_true",
                    help="keep part 1's table from the existing results.json (no single-style runs)")
    a = ap.parse_args()
    from fastnst import images, modelfile, plots, styles, stylize, vgg

    work, out, n = ROOT / a.work, ROOT / a.out, a.steps
    out.mkdir(parents=True, exist_ok=True)
    old = json.loads((out / "results.json").read_text()) if a.keep_table else None
    singles = {} if old else {s: _train(work / s, f"configs/style.py:runlocal,style={s}",
                                        f"--config.train.steps={n}") for s in STYLES}
    multi = _train(work / "multi4", f"configs/multistyle.py:runlocal,styles={'+'.join(STYLES)}",
                   f"--config.train.steps={4 * n}")
    fifth = {
        f"gamma/beta only, added to the 4-style net, lr {lr}": _train(
            work / f"add_wave_lr{lr}", f"configs/multistyle.py:runlocal,styles={FIFTH}",
            f"--config.train.steps={n}", f"--config.init_from={multi}", f"--config.train.lr={lr}")
        for lr in ADD_LRS}
    fifth |= {
        "from scratch": _train(work / FIFTH, f"configs/style.py:runlocal,style={FIFTH}",
                               f"--config.train.steps={n}"),
        "fine-tuned from the_scream (width 1.0)": _train(
            work / "finetune_wave", f"configs/style.py:runlocal,style={FIFTH}", f"--config.train.steps={n}",
            "--config.model.width=1.0", "--config.model.norm=instance",  # (the shipped net's norm)
            "--config.init_from=the_scream"),
    }
    params, photos = vgg.load_params(), _photos()
    m4 = modelfile.load_model(multi)
    rows = old["table"] if old else []
    for s in singles:
        one = _losses(modelfile.load_model(singles[s]), s, photos, params)
        many = _losses(styles.select(m4, s), s, photos, params)
        rows.append({"style": s, "single": one, "multi": many,
                     "ratio": {k: many[k] / one[k] for k in one}})
    curves = {k: _cpu_minutes_and_loss(p.parent) for k, p in fifth.items()}
    target = curves["from scratch"][1][-1]
    reach = {k: next((x for x, y in zip(*c, strict=True) if y <= target), None)
             for k, c in curves.items()}
    plots.curves(curves, out / "fifth_style.png", xlabel="CPU minutes (training loop, 2 cores)",
                 ylabel="training objective (moving mean of 5 logs)",
                 hline=("from scratch, final", target),
                 title=f"adding '{FIFTH}': {n} steps each, batch 2, 128 px")
    added = modelfile.load_model(next(iter(fifth.values())))
    leaves = jax.tree.leaves(added.variables["params"])
    per_style = sum(np.size(p) for p in leaves if np.ndim(p) == 2) // added.config["num_styles"]
    total = sum(np.size(p) for p in leaves)
    x = photos["chicago"] if "chicago" in photos else next(iter(photos.values()))
    sheet = [x] + [np.asarray(stylize.apply(styles.select(m4, s), x)) for s in STYLES]
    images.save_image(out / "sheet.png", images.side_by_side(sheet, height=192))
    strip = [np.asarray(stylize.apply(styles.select(m4, f"candy:{1 - t:.2f},udnie:{t:.2f}"), x))
             for t in np.linspace(0, 1, 5)]
    images.save_image(out / "mix_strip.png", images.side_by_side(strip, height=192))
    result = {"steps": n, "styles": STYLES, "table": rows, "fifth": {
        k: {"final_objective": c[1][-1], "cpu_minutes": c[0][-1], "minutes_to_scratch_final": reach[k]}
        for k, c in curves.items()}, "params_per_style": per_style, "params_total": total}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    md = ["| style | single: content | single: style | 4-style: content | 4-style: style | ratio content "
          "| ratio style |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['style']} | {r['single']['content']:.2f} | {r['single']['style']:.2f} | "
                  f"{r['multi']['content']:.2f} | {r['multi']['style']:.2f} | {r['ratio']['content']:.2f} | "
                  f"{r['ratio']['style']:.2f} |")
    md += ["", "| fifth style | final objective | CPU minutes | minutes to scratch's final |",
           "|---|---|---|---|"]
    for k, v in result["fifth"].items():
        reached = v["minutes_to_scratch_final"]
        m = f"{reached:.2f}" if reached is not None else "not reached"
        md.append(f"| {k} | {v['final_objective']:.2f} | {v['cpu_minutes']:.2f} | {m} |")
    md += ["", f"Parameters per added style: {per_style} of {total}."]
    (out / "table.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
