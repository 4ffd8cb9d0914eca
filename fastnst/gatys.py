"""The optimisation baseline (Gatys et al.; paper §4.1): projected L-BFGS on the image itself.

Minimises `sum_k w_k * loss_k(y)` (the same `losses.total_loss` the networks are trained with)
over the image y, starting from white noise or the content image. Each iteration is one optax
L-BFGS step (memory 10, zoom line search satisfying the strong Wolfe conditions) followed by a
projection onto [0, 255]. The whole loop is one `lax.scan` inside one jitted function: no host
round trip per iteration (an optional progress callback runs every k iterations).

Projection and L-BFGS: the line search evaluates trial points through the projection, f(P(x + a d)),
with the gradient of f at P(x + a d) passed straight through P. So the accepted iterate is
P(x + a d), and the value and gradient the line search cached are exactly those of the iterate:
one evaluation per iteration, not two (from noise the clip moves the point at every iteration;
docs/cpu_performance.md has the measurement).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import optax.tree_utils as otu

from fastnst import losses, perceptual, vgg


@dataclass
class Result:
    """An optimised image and its objective at every iteration."""
    image: np.ndarray  # HxWx3 float32 in [0, 255]
    objective: np.ndarray  # [iters + 1]: at the start and after every iteration


def objective(spec: losses.LossSpec, vgg_params: Mapping, content_feats: Mapping | None,
              style_grams: Mapping | None, layer_weights: Mapping | None = None
              ) -> Callable[[jax.Array], jax.Array]:
    """The scalar objective of one HxWx3 image, composed from `losses.total_loss`.

    `layer_weights` may hold `content` and/or `style` dicts of per-layer weights (default 1).
    """
    layer_weights = layer_weights or {}
    layers = spec.vgg_layers

    def f(image: jax.Array) -> jax.Array:
        pred = image[None]
        feats = vgg.features(vgg_params, pred, layers) if layers else None
        return losses.total_loss(spec, pred=pred, pred_feats=feats,
                                 content_feats=content_feats, style_grams=style_grams,
                                 content_layer_weights=layer_weights.get("content"),
                                 style_layer_weights=layer_weights.get("style"))[0]

    return f


@functools.partial(jax.jit, static_argnames=("spec", "iters", "every", "callback"))
def run(x0, vgg_params, content_feats, style_grams, layer_weights=None, *, spec, iters, every=0,
        callback=None):
    """`iters` projected L-BFGS iterations from x0 towards given targets (`perceptual.targets`), in
    one jitted `lax.scan`: returns (image, objective at the start and after every iteration)."""
    f = objective(spec, vgg_params, content_feats, style_grams, layer_weights)
    opt = optax.lbfgs(memory_size=10)
    project = functools.partial(jnp.clip, min=0.0, max=255.0)

    def f_projected(y):  # f(P(y)), with the true gradient of f at P(y) (straight through P)
        return f(y + jax.lax.stop_gradient(project(y) - y))

    value_and_grad = optax.value_and_grad_from_state(f_projected)

    def step(carry, i):
        x, state = carry
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f_projected)
        x_new = project(optax.apply_updates(x, updates))  # its value and gradient are in `state`
        v = otu.tree_get(state, "value")
        if callback is not None and every:
            jax.lax.cond((i + 1) % every == 0,
                         lambda: jax.debug.callback(callback, i + 1, v), lambda: None)
        return (x_new, state), v

    x0 = project(x0)
    (x, _), values = jax.lax.scan(step, (x0, opt.init(x0)), jnp.arange(iters))
    return x, jnp.concatenate([f(x0)[None], values])


def initial_image(init: str, shape: tuple[int, int], *, content: np.ndarray | None,
                  key: jax.Array) -> jax.Array:
    """White noise in [0, 255] (the paper) or the content image."""
    if init == "noise":
        return jax.random.uniform(key, (*shape, 3), jnp.float32, 0.0, 255.0)
    if init == "content":
        if content is None:
            raise ValueError("init='content' needs a content image")
        return jnp.asarray(content, jnp.float32)
    raise ValueError(f"init must be 'noise' or 'content', got {init!r}")


def optimize(vgg_params: Mapping, spec: losses.LossSpec, *, content: np.ndarray | None = None,
             style: np.ndarray | None = None, iters: int = 500, init: str = "noise",
             shape: tuple[int, int] | None = None, key: jax.Array | None = None,
             callback: Callable[[int, float], None] | None = None, every: int = 0,
             layer_weights: Mapping | None = None) -> Result:
    """Generates an image by projected L-BFGS.

    Args:
      vgg_params: VGG-16 variables.
      spec: terms, weights and layers (content-only, style-only or both).
      content / style: HxWx3 images in [0, 255], as the spec needs; sizes may differ.
      iters: L-BFGS iterations (the paper's default 500).
      init: 'noise' or 'content'.
      shape: output (H, W); defaults to the content image's size.
      key: PRNG key for the noise initialisation.
      callback: called on the host as callback(iteration, objective) every `every` iterations.
      layer_weights: optional per-layer weights, `{'content': {layer: w}, 'style': {layer: w}}`.
        They are traced, not static: changing them (e.g. reconstructing from each layer of the
        spec in turn, paper Figs. 3-4) reuses one compilation.

    Returns:
      Result with the image and the objective at every iteration.
    """
    if shape is None:
        if content is None:
            raise ValueError("give `shape` when there is no content image")
        shape = content.shape[:2]
    key = jax.random.key(0) if key is None else key
    x0 = initial_image(init, tuple(shape), content=content, key=key)
    cf, sg = perceptual.targets(spec, vgg_params, content, style)
    lw = jax.tree.map(jnp.float32, dict(layer_weights)) if layer_weights else None
    x, values = run(x0, vgg_params, cf, sg, lw, spec=spec, iters=iters, every=every,
                    callback=callback)
    return Result(np.asarray(x), np.asarray(values))


def side_files(out: Path) -> tuple[Path, Path]:
    """The objective's CSV and plot written next to the image `out`."""
    return out.with_name(out.stem + "_objective.csv"), out.with_name(out.stem + "_objective.png")


def save_result(result: Result, out: str | os.PathLike) -> Path:
    """Writes the image to `out`, and OUT_objective.csv / OUT_objective.png (objective per iteration)."""
    from fastnst import images, plots

    out = images.save_image(out, result.image)
    rows = [{"iteration": i, "objective": float(v)} for i, v in enumerate(result.objective)]
    csv = "iteration,objective\n" + "".join(f"{r['iteration']},{r['objective']:.6g}\n" for r in rows)
    objective_csv, objective_png = side_files(out)
    images.atomic_write_bytes(objective_csv, csv.encode())
    plots.loss_curves(rows, objective_png, x="iteration")
    return out


def luminance_inputs(content: np.ndarray | None, style: np.ndarray | None
                     ) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Colour preservation for the optimisation (Gatys et al. 2016, "Preserving Color in Neural
    Artistic Style Transfer", luminance-only transfer): content and style as grey RGB images of
    their luminance, the style's luminance matched to the content's mean and standard deviation.
    Recombine the result with the photo's chroma by `stylize.preserve_color(result, content)`."""
    from fastnst.stylize import rgb_to_yiq

    def grey(y):
        return np.repeat(np.clip(y, 0, 255)[..., None], 3, -1).astype(np.float32)

    cy = rgb_to_yiq(content)[..., 0] if content is not None else None
    sy = rgb_to_yiq(style)[..., 0] if style is not None else None
    if cy is not None and sy is not None:
        sy = (sy - sy.mean()) / max(sy.std(), 1e-6) * cy.std() + cy.mean()
    return (grey(cy) if cy is not None else None), (grey(sy) if sy is not None else None)


_FLAGS = {"content": "--content-weight", "style": "--style-weight", "tv": "--tv-weight",
          "content_layers": "--content-layer", "style_layers": "--style-layers"}


def cli_spec(**loss) -> losses.LossSpec:
    """A LossSpec from command-line weights and layers, checked by `perceptual.spec` (one-line
    errors naming the flags)."""
    return perceptual.spec(loss, key_name=lambda k: _FLAGS.get(k, k))


def optimize_files(spec: losses.LossSpec, *, content: str | None, style: str | None, out: str,
                   size: int = 256, style_size: int | None = None, iters: int = 500, init: str = "noise",
                   seed: int = 0, preserve_color: bool = False, progress: bool = True) -> tuple[Result, Path]:
    """`bin/optimize`: loads and checks the inputs and the output path before any iteration, runs
    projected L-BFGS (optionally on luminance, colours from the photo), writes the results
    (`save_result`)."""
    from tqdm.auto import tqdm

    from fastnst import images, stylize
    from fastnst.errors import FastnstError

    if spec.content_layers and not content:
        raise FastnstError("--content is required when --content-weight is not 0")
    if spec.style_layers and not style:
        raise FastnstError("--style is required when --style-weight is not 0")
    if preserve_color and not content:
        raise FastnstError("--preserve-color needs --content (the colours come from it)")
    photo = images.resize_max_side(images.load_image(content), size) if content else None
    art = images.resize_max_side(images.load_image(style), style_size or size) if style else None
    for name, im in (("content", photo), ("style", art)):
        if im is not None and min(im.shape[:2]) < 32:
            raise FastnstError(f"the {name} image is {im.shape[1]}x{im.shape[0]} at this size; VGG-16 "
                               "needs at least 32 px per side")
    if photo is None and size < 32:
        raise FastnstError("--size must be at least 32 (VGG-16's smallest input)")
    out = images.check_output_path(out)  # fail now, not after 500 iterations
    for written in (out, *side_files(out)):
        images.check_not_an_input(written, [content, style])
    images.check_writable_folder(out.parent)
    c, s = (photo, art) if not preserve_color else luminance_inputs(photo, art)
    bar = tqdm(total=iters, unit="it", disable=not progress)

    def report(i, value):
        bar.n = int(i)
        bar.set_postfix(objective=f"{float(value):.4g}", refresh=True)

    r = optimize(vgg.load_params(), spec, content=c, style=s, iters=iters, init=init,
                 shape=None if c is not None else (size, size), key=jax.random.key(seed), callback=report,
                 every=max(1, iters // 100))
    bar.close()
    if preserve_color:
        r = Result(stylize.preserve_color(r.image, photo), r.objective)
    return r, save_result(r, out)
