"""The train step: pure, and its one jitted form (sharded over a device mesh).

`train_step` is module-level and pure: everything it needs is an argument. `jit_step(mesh)` is the
only compiled form: training (`train.train_and_evaluate`), `bin/bench` and the tests all call it, so
what is measured and tested is what trains.
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state
from jax.sharding import Mesh

from fastnst import losses, nets, parallel, vgg


class TrainState(train_state.TrainState):
    """Flax's TrainState plus batch-norm statistics."""
    batch_stats: Any = dataclasses.field(default_factory=dict)


def variables_of(state: TrainState, params=None) -> dict:
    """The variables dict (`params`, and `batch_stats` when there are any) of a state."""
    v = {"params": state.params if params is None else params}
    return {**v, "batch_stats": state.batch_stats} if state.batch_stats else v


def train_step(state: TrainState, batch: Mapping[str, jax.Array], vgg_params: Mapping,
               style_grams: Mapping[str, jax.Array], spec: losses.LossSpec,
               rng: jax.Array | None = None, compute_dtype: str = "float32") -> tuple[TrainState, dict]:
    """One Adam step on the transformation net; VGG and the style Grams are frozen inputs.

    Args:
      state: the transformation net's TrainState.
      batch: `input` [N,h,w,3] for the net, `target` [N,H,W,3] for the losses, both in [0, 255];
        for a multi-style net also `style` [N] (each image's style index).
      vgg_params: VGG-16 variables (never differentiated).
      style_grams: Gram targets per style layer ([1, C, C], or [S, C, C] for S styles); empty when
        there is no style term.
      spec: loss terms, weights and layers (static).
      rng: the run's base key, for stochastic terms (the stability term's perturbation); each step
        uses `fold_in(rng, step)`, so a resumed run draws the same perturbation.
      compute_dtype: 'float32' or 'bfloat16' for VGG-16 (the transformation net's dtype is its
        own); losses, Grams and parameters stay float32 (static).

    Returns:
      (new state, metrics): metrics hold `loss` and each weighted part.
    """
    dtype = jnp.dtype(compute_dtype)
    content = vgg.features(vgg_params, batch["target"], spec.content_layers, dtype=dtype) \
        if spec.content_layers else None
    kw = {}
    if "style" in batch:  # a multi-style net: each image's style weights and Gram targets
        num_styles = next(iter(style_grams.values())).shape[0]
        kw["style"] = jax.nn.one_hot(batch["style"], num_styles, dtype=jnp.float32)
        style_grams = {k: g[batch["style"]] for k, g in style_grams.items()}

    def loss_fn(params):
        mutable = ["batch_stats"] if state.batch_stats else False
        out = state.apply_fn(variables_of(state, params), batch["input"], train=True, mutable=mutable, **kw)
        pred, updates = out if mutable else (out, {})
        extra = {}
        if spec.weight("stability"):
            if rng is None:
                raise ValueError("the stability term needs `rng`")
            shift = spec.option("stability", "shift")
            noisy, offset = losses.perturb(batch["input"], jax.random.fold_in(rng, state.step),
                                           spec.option("stability", "noise"), shift)
            out2 = state.apply_fn(variables_of(state, params), noisy, train=True, mutable=mutable, **kw)
            extra["pred_perturbed"] = out2[0] if mutable else out2
            if shift:  # compare with the same crop of `pred` (output px: x scale)
                extra["perturb_offset"] = offset * (pred.shape[1] // batch["input"].shape[1])
        feats = vgg.features(vgg_params, pred, spec.vgg_layers, dtype=dtype) if spec.vgg_layers else None
        total, parts = losses.total_loss(spec, pred=pred, pred_feats=feats, content_feats=content,
                                         style_grams=style_grams, target=batch["target"], **extra)
        return total, (parts, updates)

    (total, (parts, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    return state, {"loss": total, **parts}


def create_train_state(net: nets.TransformNet, rng: jax.Array, *, lr: float, scale: int = 1,
                       variables: dict | None = None, labels=None) -> TrainState:
    """A TrainState (Adam) for `net`: fresh, or from given `variables`. `labels(params)` marks each
    parameter "train" or "frozen"; frozen ones get no optimizer state and never change."""
    variables = variables if variables is not None else nets.init(net, rng, scale=scale)
    tx = optax.adam(lr)
    if labels is not None:
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return TrainState.create(apply_fn=net.apply, params=variables["params"],
                             batch_stats=variables.get("batch_stats", {}), tx=tx)


@functools.lru_cache(maxsize=8)
def jit_step(mesh: Mesh | None = None):
    """`train_step` jitted with explicit shardings on `mesh` (default: every device of the job):
    the batch split along the `data` axis, everything else replicated, so XLA inserts the gradient
    all-reduce and batch norm sees the global batch. The state is donated. Call it with all seven
    arguments, positionally: `step(state, batch, vgg_params, style_grams, spec, rng, compute_dtype)`
    (`spec` and `compute_dtype` static; `rng` may be None without a stochastic term)."""
    return _sharded_jit(train_step, mesh)


def _sharded_jit(step, mesh: Mesh | None):
    """`step` (train_step's signature) jitted on `mesh`: batch along `data`, the rest replicated,
    the state donated, `spec` and `compute_dtype` static."""
    mesh = mesh or parallel.make_mesh()
    rep, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
    return jax.jit(step, static_argnums=(4, 6), donate_argnums=0,
                   in_shardings=(rep, data, rep, rep, rep), out_shardings=(rep, rep))


def stack_states(states) -> TrainState:
    """M TrainStates of one architecture as one, every leaf with a leading model axis. The first
    state's static parts (apply_fn, optimizer) are kept: each `optax.adam` call makes new
    closures, so equal optimizers do not compare equal."""
    leaves = zip(*(jax.tree.leaves(s) for s in states), strict=True)
    return jax.tree.unflatten(jax.tree.structure(states[0]), [jnp.stack(x) for x in leaves])


def step_of(state: TrainState) -> int:
    """The step a state is at (stacked states all step together)."""
    return int(jnp.ravel(state.step)[0])


def unstack_state(stacked: TrainState, i: int) -> TrainState:
    """Model `i` of a stacked state."""
    return jax.tree.map(lambda x: x[i], stacked)


def side_by_side_step(states: TrainState, batch: Mapping[str, jax.Array], vgg_params: Mapping,
                      style_grams: Mapping[str, jax.Array], spec: losses.LossSpec,
                      rng: jax.Array | None = None,
                      compute_dtype: str = "float32") -> tuple[TrainState, dict]:
    """`train_step` for M networks of one architecture at once, each towards its own style:
    `states` and `style_grams` carry a leading model axis [M, ...], the batch, VGG and `rng` are
    shared. The batch does not vary over the models, so under `vmap` the content target's VGG pass
    is computed once for all of them; the networks' passes and their VGG passes run as one batch of
    M x N images, which keeps a large accelerator busy where one small network would not.
    Returns (states, metrics [M])."""
    def one(state, grams):
        return train_step(state, batch, vgg_params, grams, spec, rng, compute_dtype)

    return jax.vmap(one)(states, style_grams)


@functools.lru_cache(maxsize=8)
def jit_side_by_side_step(mesh: Mesh | None = None):
    """`side_by_side_step` jitted like `jit_step` (same seven positional arguments, the batch split
    over the mesh's `data` axis, the stacked state donated)."""
    return _sharded_jit(side_by_side_step, mesh)
