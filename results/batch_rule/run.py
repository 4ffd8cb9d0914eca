"""Does a larger batch reach the batch-4 objective for the same images seen? (CPU, small scale)

  .venv/bin/python results/batch_rule/run.py OUT IMAGES BATCH:LR ...
  e.g. results/batch_rule/run.py /tmp/batch 512 4:1e-3 16:2e-3 16:4e-3

Every arm trains the `runlocal` network (half width, instance norm, resize-convolution, 128 px
crops) from the same initialisation (seed 0) on starry_night for IMAGES / BATCH steps, so each sees
the same number of images, with Adam at the arm's constant learning rate. Reported: the image
objective (content + style + TV) on 256 px centre squares of the 10 held-out photos, its ratio
to the first arm's, and the training time. Writes OUT/results.json and OUT/table.md.
"""
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from fastnst import data, evaluate, gatys, images, modelfile, perceptual, stylize, train, vgg
from fastnst.configs import style as style_config


def main(out, n_images, arms):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shared = data.shared_data()
    held = data.FolderSource(shared / "train", holdout=10).heldout
    squares = [evaluate.center_square(images.load_image(f), 256) for f in held]
    params = vgg.load_params()
    rows = []
    for batch, lr in arms:
        c = style_config.get_config("runlocal")
        c.data.holdout = 10
        steps = n_images // batch
        c.train.update(batch_size=batch, lr=lr, steps=steps, log_every=max(1, steps // 8),
                       ckpt_every=steps, sample_every=10**9)
        t0 = time.monotonic()
        run = train.train_and_evaluate(c, out / f"b{batch}_lr{lr:g}", progress=False)
        train_s = time.monotonic() - t0
        m = modelfile.load_model(run.model_path)
        spec, style_size = perceptual.of_model(m.meta)
        grams = perceptual.style_grams(params, images.load_image(c.style_image), spec.style_layers, style_size)
        value = jax.jit(lambda img, cf: gatys.objective(spec, params, cf, grams)(img))
        objs = [float(value(np.asarray(stylize.apply(m, p)),
                            vgg.features(params, jnp.asarray(p[None], jnp.float32), spec.content_layers)))
                for p in squares]
        rows.append({"batch": batch, "lr": lr, "steps": steps, "images": steps * batch,
                     "objective": float(np.mean(objs)), "per_photo": objs, "train_s": train_s})
        print(rows[-1]["batch"], lr, steps, round(rows[-1]["objective"], 3), round(train_s), flush=True)
    ref = rows[0]["objective"]
    lines = ["| batch | lr | steps | images seen | held-out objective | vs first row | train s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['lr']:g} | {r['steps']} | {r['images']} | {r['objective']:.3f} | "
              f"{100 * (r['objective'] / ref - 1):+.1f}% | {r['train_s']:.0f} |" for r in rows]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]),
         [(int(b), float(lr)) for b, lr in (a.split(":") for a in sys.argv[3:])])
