"""The floored instance norm from scratch: does a new network train as well as with plain instance norm?

  .venv/bin/python results/discs/scratch_experiment.py OUT STEPS NORM ...
  e.g. results/discs/scratch_experiment.py /tmp/scratch 300 instance instance_floor

Each arm trains `configs/style.py:runlocal` (half width, 128 px crops, batch 2, starry_night) from
scratch for STEPS steps with the same seed and data (the training photos less the 10 held out),
only `model.norm` differing; then measures it as spike_experiment.py does (disc area on the 10
held-out photos and the 3 content photos at 512 px, the image objective on 256 px centre squares).
Writes OUT/NORM/ (the run), OUT/results.json and OUT/sheet.jpg (photo | each arm, discs in red).
Plain instance norm paints large discs within runlocal's 300 steps (results/discs/README.md).
"""
import json
import sys
import time
from pathlib import Path

from spike_experiment import measure, objective_fn, photo_sets, summary, write_sheet

from fastnst import data, images, modelfile, perceptual, train, vgg
from fastnst.configs import style as style_config


def main(out, steps, norms):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    photos512, squares = photo_sets(data.shared_data())
    params = vgg.load_params()
    results, sheets = {}, {}
    for norm in norms:
        c = style_config.get_config("runlocal")
        c.model.norm = norm
        c.data.holdout = 10
        c.train.update(steps=steps, ckpt_every=steps, sample_every=10**9, log_every=25)
        t0 = time.monotonic()
        run = train.train_and_evaluate(c, out / norm, progress=False)
        m = modelfile.load_model(run.model_path)
        spec, style_size = perceptual.of_model(m.meta)
        grams = perceptual.style_grams(params, images.load_image(c.style_image), spec.style_layers, style_size)
        results[norm], sheets[norm] = measure(m, photos512, squares, objective_fn(spec, params, grams), params, spec)
        results[norm].update(steps=steps, train_s=time.monotonic() - t0)
        print(norm, summary(results[norm]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    # (write_sheet orders rows by the first arm's disc area, under the key "shipped")
    first = next(iter(results))
    write_sheet(out / "sheet.jpg", {"shipped": results[first], **results}, sheets, photos512["held_out_10"])


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
