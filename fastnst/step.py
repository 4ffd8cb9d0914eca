"""The train step: pure, and its one jitted form (sharded over a device mesh).

`train_step(state, batch, inputs)` is module-level and pure: everything it needs is an argument,
`inputs` (`StepInputs`) holding all but the state and the batch. A step is two stages: `prepare`
(on the device, before the loss: the batch itself when the photos live on the device, the content
target's VGG features, per-image style targets) and `update` (the loss, its gradient, one Adam
step). `jit_step(mesh, steps)` is the only compiled form, one or K steps per call: training
(`train.train_and_evaluate`), `bin/bench` and the tests all call it, so what is measured and tested
is what trains.
"""

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct
from flax.training import train_state
from jax.sharding import Mesh

from fastnst import augment, keys, losses, nets, parallel, variants, vgg


class TrainState(train_state.TrainState):
    """Flax's TrainState plus batch-norm statistics."""
    batch_stats: Any = dataclasses.field(default_factory=dict)


def variables_of(state: TrainState, params=None) -> dict:
    """The variables dict (`params`, and `batch_stats` when there are any) of a state."""
    v = {"params": state.params if params is None else params}
    return {**v, "batch_stats": state.batch_stats} if state.batch_stats else v


@struct.dataclass
class StepInputs:
    """What the step takes besides the state and the batch: a frozen pytree, so one argument
    carries the arrays (replicated over the devices) and the static choices (part of its tree
    structure, so a new spec or precision compiles anew, as static arguments would).

    Attributes:
      vgg_params: VGG-16 variables (never differentiated).
      style_grams: Gram targets per style layer ([1, C, C], [S, C, C] for S styles, or [M, 1, C, C]
        for M networks side by side); empty when there is no style term.
      spec: the loss terms, weights and layers (static).
      rng: raw key data of the run key (`keys.run_keys`); each step takes `keys.step_keys(rng,
        step)` once: the data key for `prepare`, the loss key for stochastic terms. None: no
        stochastic term and no data on the device.
      precision: 'float32' or 'bfloat16' for VGG-16 (static); losses, Grams and parameters stay
        float32, the transformation net computes in its own dtype.
      images: the training photos on the device (`augment.DeviceImages`), or None: batches come
        from the host loader.
      data: how `prepare` makes a batch from `images` (`augment.DataSpec`, static).
    """
    vgg_params: Mapping
    style_grams: Mapping
    spec: losses.LossSpec = struct.field(pytree_node=False)
    rng: jax.Array | None = None
    precision: str = struct.field(pytree_node=False, default="float32")
    images: augment.DeviceImages | None = None
    data: augment.DataSpec | None = struct.field(pytree_node=False, default=None)


def prepare(batch: Mapping[str, jax.Array], key: jax.Array | None, step, inputs: StepInputs) -> dict:
    """The stage before the loss, on the device, inside the jitted step: what a batch needs that
    does not depend on the parameters being trained.

    * With photos on the device (`inputs.images`), the batch of global step `step` is made here
      from the data `key` (`augment.batch`: crops, flips, the SR degradation); the given `batch` is
      then empty.
    * The content target's VGG features (`content`), once per batch.
    * For a multi-style net, each image's one-hot style weights (`style_weights`) and Gram targets
      (`style_grams`).
    """
    if inputs.images is not None:
        if key is None:
            raise ValueError("photos on the device need the run key (StepInputs.rng)")
        batch = augment.batch(inputs.images, inputs.data, key, step)
    out, spec = dict(batch), inputs.spec
    if spec.content_layers:
        out["content"] = vgg.features(inputs.vgg_params, out["target"], spec.content_layers,
                                      dtype=jnp.dtype(inputs.precision))
    if "style" in out:  # a multi-style net: each image's style weights and Gram targets
        num_styles = next(iter(inputs.style_grams.values())).shape[0]
        out["style_weights"] = jax.nn.one_hot(out["style"], num_styles, dtype=jnp.float32)
        out["style_grams"] = {k: g[out["style"]] for k, g in inputs.style_grams.items()}
    return out


def update(state: TrainState, batch: Mapping, inputs: StepInputs,
           key: jax.Array | None = None) -> tuple[TrainState, dict]:
    """One Adam step on the transformation net from a prepared batch (`prepare`); `key` draws the
    stochastic terms (the stability term's perturbation). Returns (new state, metrics): `loss` and
    each weighted part."""
    spec, dtype = inputs.spec, jnp.dtype(inputs.precision)
    kw = {"style": batch["style_weights"]} if "style_weights" in batch else {}
    style_grams = batch.get("style_grams", inputs.style_grams)

    spikes = bool(spec.weight("spike"))

    def loss_fn(params):
        mutable = ["batch_stats"] if state.batch_stats else False
        captured = [*(mutable or []), "intermediates"] if spikes else mutable
        out = state.apply_fn(variables_of(state, params), batch["input"], train=True, mutable=captured,
                             capture_intermediates=_whole_image_norms if spikes else False, **kw)
        pred, updates = out if captured else (out, {})
        updates, extra = dict(updates), {}
        if spikes:  # the outputs of the instance norms, for the spike term
            extra["norm_outputs"] = tuple(jax.tree.leaves(updates.pop("intermediates", {})))
            extra["spike_threshold"] = spec.option("spike", "threshold")
        if spec.weight("stability"):
            if key is None:
                raise ValueError("the stability term needs `rng`")
            shift = spec.option("stability", "shift")
            noisy, offset = losses.perturb(batch["input"], key, spec.option("stability", "noise"), shift)
            out2 = state.apply_fn(variables_of(state, params), noisy, train=True, mutable=mutable, **kw)
            extra["pred_perturbed"] = out2[0] if mutable else out2
            if shift:  # compare with the same crop of `pred` (output px: x scale)
                extra["perturb_offset"] = offset * (pred.shape[1] // batch["input"].shape[1])
        feats = (vgg.features(inputs.vgg_params, pred, spec.vgg_layers, dtype=dtype)
                 if spec.vgg_layers else None)
        total, parts = losses.total_loss(spec, pred=pred, pred_feats=feats,
                                         content_feats=batch.get("content"), style_grams=style_grams,
                                         target=batch["target"], **extra)
        return total, (parts, updates)

    (total, (parts, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads, batch_stats=updates.get("batch_stats", state.batch_stats))
    return state, {"loss": total, **parts}


def _whole_image_norms(module, method: str) -> bool:
    """Flax's capture filter: the outputs of the norm layers with whole-image statistics (as
    `variants.is_layer_of` tells them, so the instance norm inside a conditional one is not a second)."""
    return method == "__call__" and any(variants.is_layer_of(module, k) for k in variants.NORMS.values()
                                        if k.image_stats)


def _keys(inputs: StepInputs, step) -> tuple[jax.Array | None, jax.Array | None]:
    return keys.step_keys(inputs.rng, step) if inputs.rng is not None else (None, None)


def _constrain(batch: dict, shard):
    return batch if shard is None else jax.lax.with_sharding_constraint(batch, shard)


def train_step(state: TrainState, batch: Mapping[str, jax.Array], inputs: StepInputs, *,
               shard=None) -> tuple[TrainState, dict]:
    """One training step: `prepare` the batch, then `update`.

    Args:
      state: the transformation net's TrainState.
      batch: `input` [N,h,w,3] for the net, `target` [N,H,W,3] for the losses, both in [0, 255];
        for a multi-style net also `style` [N] (each image's style index). Empty (`{}`) when the
        photos are on the device (`inputs.images`).
      inputs: everything else (`StepInputs`).
      shard: where the prepared batch lives (the mesh's `data` sharding; `jit_step` passes it), so
        a batch made on the device is split over the devices like a host batch.

    Returns:
      (new state, metrics): metrics hold `loss` and each weighted part.
    """
    data_key, loss_key = _keys(inputs, state.step)
    batch = _constrain(prepare(batch, data_key, state.step, inputs), shard)
    return update(state, batch, inputs, loss_key)


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


@functools.lru_cache(maxsize=16)
def jit_step(mesh: Mesh | None = None, steps: int = 1):
    """`train_step` jitted with explicit shardings on `mesh` (default: every device of the job):
    the batch split along the `data` axis, everything else replicated, so XLA inserts the gradient
    all-reduce and batch norm sees the global batch. The state is donated. Call it as
    `step(state, batch, inputs)` (`inputs`: a `StepInputs`).

    With `steps` K > 1 one call runs K steps (`lax.scan`): the batch holds K batches stacked on a
    leading axis (or is `{}` with the photos on the device) and the metrics come back stacked [K].
    K = 1 is the plain step."""
    return _sharded_jit(train_step, mesh, steps)


def _sharded_jit(step, mesh: Mesh | None, steps: int = 1):
    """`step` (train_step's signature) jitted on `mesh`: batch along `data`, the rest replicated,
    the state donated; K > 1 steps scanned in one call."""
    mesh = mesh or parallel.make_mesh()
    rep, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
    if steps == 1:
        fn, batch_sharding = functools.partial(step, shard=data), data
    else:
        def fn(state, batches, inputs):
            return jax.lax.scan(lambda s, b: step(s, b, inputs, shard=data), state, batches, length=steps)

        batch_sharding = parallel.data_sharded(mesh, axis=1)
    return jax.jit(fn, donate_argnums=0, in_shardings=(rep, batch_sharding, rep), out_shardings=(rep, rep))


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


def side_by_side_step(states: TrainState, batch: Mapping[str, jax.Array], inputs: StepInputs, *,
                      shard=None) -> tuple[TrainState, dict]:
    """`train_step` for M networks of one architecture at once, each towards its own style:
    `states` and `inputs.style_grams` carry a leading model axis [M, ...]; the batch, VGG and the
    keys are shared. The batch is prepared once (content target's VGG pass included) and the M
    updates run under `vmap`, so the networks' passes and their VGG passes run as one batch of
    M x N images, which keeps a large accelerator busy where one small network would not.
    Returns (states, metrics [M])."""
    step = states.step[0]  # (they all step together)
    data_key, loss_key = _keys(inputs, step)
    batch = _constrain(prepare(batch, data_key, step, inputs), shard)

    def one(state, grams):
        return update(state, batch, inputs.replace(style_grams=grams), loss_key)

    return jax.vmap(one)(states, inputs.style_grams)


@functools.lru_cache(maxsize=16)
def jit_side_by_side_step(mesh: Mesh | None = None, steps: int = 1):
    """`side_by_side_step` jitted like `jit_step` (`step(states, batch, inputs)`, the batch split
    over the mesh's `data` axis, the stacked state donated, K steps per call)."""
    return _sharded_jit(side_by_side_step, mesh, steps)
