"""Training that starts from a trained model (`config.init_from`): adding styles to a multi-style
model by training only their gamma and beta, or fine-tuning every parameter of a model.

* The init model is multi-style and the config's net too: the run adds `style_images` as new
  styles. The new net holds the old styles plus the new ones; every weight is copied, each new
  style's gamma and beta start as the mean of the old styles', and only the conditional norms'
  gamma/beta are given to the optimizer (the rest is frozen: `optax.set_to_zero`, no optimizer
  state). Batches draw only the new styles, so the old styles' rows get exactly zero gradient and
  Adam leaves them unchanged: the old styles come out bit-identical.
* Otherwise the architectures must be equal and every parameter is copied and trained (fine-tuning,
  e.g. from a shipped single-style model towards another style).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from fastnst import modelfile, nets, variants
from fastnst.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Start:
    """A validated `init_from`: the model, and the number of styles it already holds when the run
    adds styles to it (None: fine-tune everything)."""
    model: modelfile.Model
    old_styles: int | None
    old_names: tuple[str, ...] = ()


def read(path: str) -> modelfile.Model:
    """The model `init_from` names (a model file or a shipped name).

    Raises:
      ConfigError / WeightsError: no such model, or not a model file.
    """
    return modelfile.load_model(path)


def plan(m: modelfile.Model, path: str, model_block: Mapping, num_new_styles: int) -> tuple[Start, dict]:
    """The start from model `m` (loaded from `path`, named in messages) and the model block the run
    trains (for a multi-style start: `num_styles` = the old styles + `num_new_styles`).

    Raises:
      ConfigError: an architecture that does not match.
    """
    from fastnst import styles

    adding = all(variants.norm(c.get("norm", "batch")).multistyle for c in (m.config, model_block))
    want = dict(model_block)
    if adding:
        want["num_styles"] = m.config["num_styles"] + num_new_styles
    differ = sorted(k for k in set(m.config) | set(want)
                    if k != "num_styles" and m.config.get(k) != want.get(k))
    if differ:
        shown = ", ".join(f"model.{k}: {m.config.get(k)!r} in the file, {want.get(k)!r} here" for k in differ)
        raise ConfigError(f"init_from {path}: the architecture differs ({shown})")
    if not adding and m.config.get("num_styles", 1) != want.get("num_styles", 1):
        raise ConfigError(f"init_from {path}: it holds {m.config.get('num_styles', 1)} styles, the config's "
                          f"net {want.get('num_styles', 1)}")
    if adding:
        return Start(m, m.config["num_styles"], tuple(styles.names(m))), want
    return Start(m, None), want


def initial_variables(start: Start, fresh: Mapping) -> dict:
    """`fresh` (the new net's initial variables) with the start model's values copied in; a new
    style's gamma/beta rows start as the mean of the old styles'."""
    def copy(new, old):
        old = jnp.asarray(old, new.dtype)
        if new.shape == old.shape:
            return old
        rows = (new.shape[0] - old.shape[0], *old.shape[1:])
        extra = jnp.broadcast_to(old.mean(axis=0, keepdims=True), rows)
        return jnp.concatenate([old, extra])

    return jax.tree.map(copy, dict(fresh), dict(start.model.variables))


def trainable(start: Start | None):
    """A labelling of the parameters for `optax.multi_transform`, or None when all are trained."""
    if start is None or start.old_styles is None:
        return None
    net = start.model.net
    return lambda params: jax.tree.map(lambda per_style: "train" if per_style else "frozen",
                                       nets.per_style(net, params))
