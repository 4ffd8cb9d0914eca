"""Training-side tables: the train step's throughput against the device's peak, networks side by
side, and the data loader.

  bin/bench --train [--batches=4,16] [--precision=bfloat16] [--steps-per-call=K] [--out=DIR]
  bin/bench --recipe [--out=DIR]

* `throughput`: images/s, FLOPs per image and the fraction of the device's peak of the train step
  as the trainer runs it with its photos on the device (docs/throughput.md).
* `side_by_side`: the training loop's step time (`bench.train_step`, i.e. `train_and_evaluate` on
  synthetic photos) for 1, 2 and 4 style networks in one step, and per network.
* `loader`: images/s that `data.Batches` delivers from a photo folder with 1 and 2 decoding
  workers, on the first pass (JPEG decoding and resizing) and from the in-memory cache.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from fastnst import bench, data, images


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


def throughput(loss, task: str = "style", *, batches=(4, 16), size: int = 256, variant=None,
               precision: str = "float32", steps_per_call: int = 1, calls: int = 3,
               photos: int = 16) -> list[dict]:
    """The train step as the trainer runs it with its photos on the device (`jit_step`, K steps
    per call, crops cut inside the step), at each batch size: images/s, FLOPs per image (XLA's cost
    analysis of the compiled step, the traced convolutions and products, and the forward-count
    rule; `flops`), the FLOP/s achieved and the fraction of the device's peak (bf16 tensor-core
    peak on a GPU, a measured float32 matmul on a CPU). `loss` is a `config.loss` block; the
    network is the paper's (`variant` overrides), SR at x4 with `size` the HR crop. VGG-16 has
    random weights of the real shapes (the same work as the real ones)."""
    from fastnst import augment, flops, keys, losses, nets, parallel, perceptual, vgg
    from fastnst.step import StepInputs, create_train_state, train_step

    variant = dict(variant or bench.PAPER_STYLE)
    scale = 4 if task == "sr" else 1
    net = nets.build({"task": task, **variant, **({"scale": scale} if task == "sr" else {})})
    compute = net.clone(dtype=jnp.dtype(precision)) if precision != "float32" else net
    spec = losses.LossSpec.from_config(loss)
    vgg_params = vgg.random_params()
    style = np.asarray(bench._image(size, seed=2)[0])
    grams = perceptual.style_grams(vgg_params, style, spec.style_layers, size) if spec.style_layers else {}
    src = data.SyntheticSource(photos, shape=(size * 5 // 4, size * 3 // 2))
    pics = [images.to_uint8(data.prepare_photo(src.load(i), size, scale if scale > 1 else 0))
            for i in range(photos)]
    mesh = parallel.make_mesh()
    peak = flops.peak_flops()
    init, run = keys.run_keys(0)
    rule = flops.rule_of_thumb(net, nets.init(net, init, scale=scale), size, scale, vgg_params,
                               spec.content_layers, spec.vgg_layers)["per_image"]
    shared = parallel.replicate((vgg_params, grams, jax.random.key_data(run),
                                 augment.pack(pics, keys.order_key(0))), mesh)  # (the same for every batch)
    rows = []
    for b in batches:
        dspec = augment.DataSpec(batch_size=b, size=size, sr_scale=scale if scale > 1 else 0)
        state = parallel.replicate(create_train_state(compute, init, lr=1e-3, scale=scale), mesh)
        inputs = StepInputs(shared[0], shared[1], spec, shared[2], precision, shared[3], dspec)
        traced = flops.jaxpr_flops(train_step, state, {}, inputs)
        t = _time_step(state, inputs, mesh, steps_per_call, calls)  # (donates `state`)
        dt, xla = t["call_s"], t["xla_flops"]
        ips = b * steps_per_call / dt
        per_image = (xla / b) if xla else traced / b
        peak_used = peak["bf16"] or peak["fp32"]
        rows.append({"task": task, "batch": b, "size": size, "precision": precision,
                     "steps_per_call": steps_per_call, "step_s": dt / steps_per_call, "images_per_s": ips,
                     "gflop_per_image_xla": xla / b / 1e9 if xla else None,
                     "gflop_per_image_traced": traced / b / 1e9, "gflop_per_image_rule": rule / 1e9,
                     "achieved_tflop_s": per_image * ips / 1e12,
                     "peak_tflop_s": peak_used / 1e12 if peak_used else None,
                     "peak_kind": "bf16" if peak["bf16"] else "fp32 (measured)" if peak["fp32"] else None,
                     "fraction_of_peak": per_image * ips / peak_used if peak_used else None,
                     "compile_s": t["compile_s"], "first_call_s": t["first_call_s"],
                     "peak_memory_bytes": bench.peak_memory_bytes()})
    return rows


def _time_step(state, inputs, mesh, steps_per_call: int, calls: int) -> dict:
    """Compiles the one-step program (for XLA's FLOP count), then times `calls` calls of K steps
    after one warm-up call."""
    from fastnst import flops
    from fastnst.step import jit_step

    t0 = time.perf_counter()
    one = jit_step(mesh, 1).lower(state, {}, inputs).compile()
    compile_one = time.perf_counter() - t0
    xla = flops.xla_flops(one)
    call = jit_step(mesh, steps_per_call)
    t0 = time.perf_counter()
    state, m = call(state, {}, inputs)  # compiles (K > 1) and warms up
    jax.block_until_ready(m)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(calls):
        state, m = call(state, {}, inputs)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / calls
    return {"call_s": dt, "xla_flops": xla, "compile_s": compile_one, "first_call_s": first}


def throughput_markdown(rows: list[dict], device: dict) -> str:
    lines = [f"Device: {device['device']} ({device['platform']}), jax {device['jax']}.", "",
             "| task | batch | crop | precision | K | ms/step | images/s | GFLOP/img XLA / traced / rule | "
             "TFLOP/s | of peak |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        x = f"{r['gflop_per_image_xla']:.1f}" if r["gflop_per_image_xla"] else "n/a"
        frac = f"{100 * r['fraction_of_peak']:.1f}% of {r['peak_tflop_s']:.3g} ({r['peak_kind']})" \
            if r["fraction_of_peak"] else "n/a"
        lines.append(f"| {r['task']} | {r['batch']} | {r['size']} | {r['precision']} | "
                     f"{r['steps_per_call']} | "
                     f"{r['step_s'] * 1000:.1f} | {r['images_per_s']:.2f} | {x} / "
                     f"{r['gflop_per_image_traced']:.1f} / {r['gflop_per_image_rule']:.1f} | "
                     f"{r['achieved_tflop_s']:.3g} | {frac} |")
    return "\n".join(lines)
