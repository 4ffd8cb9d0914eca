"""Network objective (Fig. 5's) of shipped vs H200 models on the held-out photos of the GPU run;
L-BFGS curves read from the GPU run's results.json (same photos, same objective)."""
import json, sys
import numpy as np, jax, jax.numpy as jnp
from fastnst.configs import style as style_config
from fastnst import evaluate, gatys, images, losses, stylize, vgg
spec = losses.LossSpec.from_config(style_config.get_config().loss)
params = vgg.load_params()
out = {}
for s in ("the_scream", "starry_night"):
    res = json.loads(open(f"/tmp/gpu2/styles/{s}/fig5/results.json").read())
    grams = losses.style_targets(params, images.load_image(f".gpu/styles/{s}.jpg"), spec.style_layers, res["style_size"])
    value = jax.jit(lambda im, cf, g: gatys.objective(spec, params, cf, g)(im))
    for label, m in (("shipped", s), ("h200", f"/tmp/h200/new/h200_{s}.msgpack")):
        net = stylize.load_model(m); vals = []; match = []
        for p, row in zip(res["photos"], res["rows"]):
            sq = evaluate.center_square(images.load_image(p), res["size"])
            cf = vgg.features(params, jnp.asarray(sq[None], jnp.float32), spec.content_layers)
            v = float(value(np.asarray(stylize.apply(net, sq)), cf, grams)); vals.append(v)
            below = np.flatnonzero(np.asarray(row["lbfgs"]) <= v); match.append(int(below[0]) if below.size else None)
        out[f"{s}/{label}"] = {"mean": float(np.mean(vals)), "per_photo": vals, "iters_to_match": match,
                               "gpu_network_mean": float(np.mean([r["network"] for r in res["rows"]])),
                               "lbfgs50": float(np.mean([r["lbfgs"][50] for r in res["rows"]]))}
        print(s, label, round(out[f"{s}/{label}"]["mean"], 3), "L-BFGS50", round(out[f"{s}/{label}"]["lbfgs50"], 3), "match", match, flush=True)
json.dump(out, open("/tmp/h200/objective.json", "w"), indent=1)
