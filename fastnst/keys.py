"""The one way a run's random keys are made: every key derives from `config.seed`.

* `run_keys(seed)` -> (init, run): `init` initialises the network; `run` is the base of every key a
  step draws (it travels with the step's other inputs, `step.StepInputs.rng`, as raw key data).
* `step_keys(run, step)` -> (data, loss): `fold_in(run, step)`, taken once per step and split in
  two: `data` draws the step's crops and flips (`augment.draw`), `loss` the stochastic loss terms
  (the stability term's perturbation). A step's draws are a pure function of (seed, step), so a
  resumed run, or one that runs several steps per dispatch, draws exactly what an uninterrupted one
  would.
* `order_key(seed)`: the order in which photos are visited, one permutation per epoch
  (`fold_in(order, epoch)`); kept apart from `run` so that it never equals a step's key.
"""

from __future__ import annotations

import jax


def run_keys(seed: int) -> tuple[jax.Array, jax.Array]:
    """(init key, run key) of a run with `seed`."""
    init, run = jax.random.split(jax.random.key(seed))
    return init, run


def step_keys(run: jax.Array, step) -> tuple[jax.Array, jax.Array]:
    """(data key, loss key) of global step `step` (an int or a traced int32)."""
    data, loss = jax.random.split(jax.random.fold_in(run, step))
    return data, loss


def order_key(seed: int) -> jax.Array:
    """The base key of the photo order (one permutation per epoch)."""
    return jax.random.fold_in(jax.random.key(seed), 1)
