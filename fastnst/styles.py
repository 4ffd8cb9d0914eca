"""Choosing and mixing the styles of a multi-style model (conditional instance norm).

A multi-style model holds one gamma and beta per style in each norm layer ([S, C]: the norm kind's
`per_style` parameters) and the style names in its file (`meta["styles"]`). `select(model,
"candy:0.7,udnie:0.3")` bakes a choice into an ordinary model of the kind's `baked` norm (instance
norm: gamma = w @ gamma_S, beta = w @ beta_S), so everything that takes
a model -- tiling, video, colour preservation, strength, export -- works on it unchanged.
"""

from __future__ import annotations

import math

import jax
import numpy as np

from fastnst import nets, variants
from fastnst.errors import ConfigError
from fastnst.modelfile import Model


def is_multistyle(model: Model) -> bool:
    return nets.is_multistyle(model.net)


def names(model: Model) -> list[str]:
    """The style names of a multi-style model, in index order (their indices when unnamed)."""
    n = int(model.config.get("num_styles", 1))
    given = model.meta.get("styles")
    if isinstance(given, list) and len(given) == n and all(isinstance(s, str) for s in given):
        return list(given)
    return [str(i) for i in range(n)]


def weights(spec: str, styles: list[str]) -> np.ndarray:
    """Convex style weights [S] from `NAME_OR_INDEX` or `a:0.7,b:0.3` (weights >= 0, normalised to
    sum 1; a style named twice adds up).

    Raises:
      ConfigError: an unknown style, a bad weight, or weights that sum to 0.
    """
    out = np.zeros(len(styles), np.float64)
    for item in filter(None, (p.strip() for p in str(spec).split(","))):
        key, sep, value = item.rpartition(":") if ":" in item else (item, "", "1")
        if key in styles:
            i = styles.index(key)
        elif key.isdigit() and int(key) < len(styles):
            i = int(key)
        else:
            raise ConfigError(f"--style: unknown style {key!r}; this model holds {', '.join(styles)} "
                              f"(or their indices 0-{len(styles) - 1})")
        try:
            w = float(value)
        except ValueError:
            w = math.nan
        if not (math.isfinite(w) and w >= 0) or (sep and not value):
            raise ConfigError(f"--style: the weight of {key!r} must be a number >= 0, got {value!r}")
        out[i] += w
    if not out.sum() > 0:
        raise ConfigError(f"--style {spec!r}: name at least one style with a weight > 0")
    return (out / out.sum()).astype(np.float32)


def select(model: Model, style: str | None) -> Model:
    """The model to run for `style`: a multi-style model baked into an instance-norm model for
    those style weights; a single-style model as it is (a `style` given to it is an error)."""
    if not is_multistyle(model):
        if style:
            raise ConfigError("--style: this model holds one style; --style is for multi-style models")
        return model
    styles = names(model)
    if not style:
        raise ConfigError(f"this model holds {len(styles)} styles ({', '.join(styles)}); choose one or a "
                          "mix with --style (e.g. --style=0 or --style=a:0.7,b:0.3)")
    w = weights(style, styles)

    def bake(leaf, held_per_style):
        return np.asarray(w @ np.asarray(leaf)) if held_per_style else leaf

    params = model.variables["params"]
    variables = {**model.variables, "params": jax.tree.map(bake, params, nets.per_style(model.net, params))}
    config = {**model.config, "norm": variants.norm(model.net.norm).baked, "num_styles": 1}
    mix = {s: float(x) for s, x in zip(styles, w, strict=True) if x > 0}
    return Model(config=config, variables=variables, meta={**model.meta, "styles": None, "style_mix": mix})


def mixing_strip(model: Model, photo: np.ndarray, a: str, b: str, n: int = 5) -> list[np.ndarray]:
    """`photo` stylized with n mixes from style `a` to style `b` (weights 1-t, t for t in [0, 1])."""
    from fastnst import stylize

    return [np.asarray(stylize.apply(select(model, f"{a}:{1 - t:.4f},{b}:{t:.4f}"), photo))
            for t in np.linspace(0.0, 1.0, n)]
