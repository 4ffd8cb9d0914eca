"""Perceptual losses of Johnson et al. (2016), §3.2-3.3, as small pure functions, and the registry
of loss terms that training, the Gatys objective and the benchmarks all sum the same way.

Images are NHWC in [0, 255]; features are dicts of NHWC VGG activations. Every function reduces
to a scalar that is a mean over the batch.

Adding a loss term is one function and one config key: decorate a function whose parameters are
all keyword-only with `@register("name")` and give `config.loss.name` a weight. Its parameters are
its declared inputs (those without a default are required); `total_loss` hands each term exactly
the inputs it declares. An input that no registered term declares, or a required one that is
missing, is an error at the call, so a misspelt name fails instead of being dropped. A term's
settings (`register(..., options=...)`) live with the term; their config keys are
`<term>_<option>` (e.g. `loss.stability_noise`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping

import chex
import jax
import jax.numpy as jnp

from fastnst.errors import ConfigError

TermFn = Callable[..., jax.Array]
LAYER_KEYS = ("content_layers", "style_layers")


@dataclasses.dataclass(frozen=True)
class Term:
    """A registered loss term: its function, the inputs it declares and its options' defaults."""

    fn: TermFn
    inputs: frozenset[str]
    required: frozenset[str]
    options: Mapping[str, float | int]
    network: bool = False  # reads the network itself (a second pass, its layers): not an image's objective


REGISTRY: dict[str, Term] = {}


def register(name: str, *, options: Mapping[str, float | int] | None = None, network: bool = False
             ) -> Callable[[TermFn], TermFn]:
    """Registers a loss term under `name` (its config key).

    The function's parameters must all be keyword-only and named (no `**kwargs`): they are the
    inputs the term reads. `options` maps each setting of the term to its default (an int or a
    float, >= 0); the config key of option `o` is `<name>_<o>`. `network`: the term regularises
    the network (it reads a second pass or the network's layers), so it is part of training's
    objective but not of an image's (`LossSpec.of_image`: L-BFGS, the evaluations).
    """

    def deco(fn: TermFn) -> TermFn:
        params = list(inspect.signature(fn).parameters.values())
        loose = [p.name for p in params if p.kind is not p.KEYWORD_ONLY]
        if loose:
            raise ValueError(f"loss term {name!r}: every parameter must be keyword-only and named "
                             f"(they are its declared inputs); not {loose}")
        opts = dict(options or {})
        keys = {name, *(f"{name}_{o}" for o in opts)}
        if keys & set(config_keys()):
            raise ValueError(f"loss term {name!r} is already defined")
        REGISTRY[name] = Term(fn, frozenset(p.name for p in params),
                              frozenset(p.name for p in params if p.default is p.empty), opts, network)
        return fn

    return deco


def option_keys() -> dict[str, tuple[str, str]]:
    """Config key -> (term, option) for every registered term's options."""
    return {f"{t}_{o}": (t, o) for t, term in REGISTRY.items() for o in term.options}


def config_keys() -> tuple[str, ...]:
    """Every key `config.loss` may hold: term weights, layer lists, term options."""
    return (*REGISTRY, *LAYER_KEYS, *option_keys())


def terms() -> tuple[str, ...]:
    """Names of the registered loss terms, in registration order."""
    return tuple(REGISTRY)


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """The static (hashable) objective: a weight per registered term, the VGG layers used and the
    options of the terms that are on (each option's default unless the config sets it)."""

    weights: tuple[tuple[str, float], ...] = ()
    content_layers: tuple[str, ...] = ()
    style_layers: tuple[str, ...] = ()
    options: tuple[tuple[str, float | int], ...] = ()  # (config key, value), e.g. ("stability_noise", 8.0)

    def __post_init__(self):
        unknown = [k for k, _ in self.weights if k not in REGISTRY]
        if unknown:
            raise ConfigError(f"unknown loss term(s) {unknown}; known: {', '.join(REGISTRY)}")

    @classmethod
    def from_config(cls, loss: Mapping, *, key_name: Callable[[str], str] = "loss.{}".format) -> LossSpec:
        """From `config.loss`: a weight per term, `content_layers` / `style_layers`, term options.

        The one place of the objective's rules: unknown keys fail with the known ones listed; a
        weight must be a finite number >= 0 and not all may be 0; a content or style term that is
        on needs its layers (whether they are VGG-16's: `perceptual.spec`); an option must be a
        number >= 0 (an integer where its default is one), whether its term is on or not. Terms
        with weight 0 are dropped, and so are the layers of a content or style term that is off
        and the options of any term that is off. `key_name` says how messages name a key
        (`bin/optimize` names its flags).

        Raises:
          ConfigError: the first invalid value, in one line.
        """
        loss = dict(loss)
        unknown = sorted(set(loss) - set(config_keys()))
        if unknown:
            raise ConfigError(f"unknown loss key(s) {unknown}; known: {', '.join(config_keys())}")
        for k in REGISTRY:
            v = loss.get(k, 0.0)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"{key_name(k)} must be a finite number >= 0, got {v!r}")
        weights = tuple((k, float(loss[k])) for k in REGISTRY if loss.get(k, 0.0))
        if not weights:
            raise ConfigError(f"every loss weight is 0; set at least one of {', '.join(REGISTRY)}")
        w = dict(weights)
        layers = {}
        for key, term in zip(LAYER_KEYS, ("content", "style"), strict=True):
            names = tuple(loss.get(key, ()))
            if w.get(term) and not names:
                raise ConfigError(f"{key_name(term)} is on but {key_name(key)} is empty")
            layers[key] = names if w.get(term) else ()
        given = {key: _option(key, loss[key]) for key in option_keys() if key in loss}
        options = tuple((key, given.get(key, REGISTRY[t].options[o]))
                        for key, (t, o) in option_keys().items() if w.get(t))
        return cls(weights=weights, options=options, **layers)

    def of_image(self) -> LossSpec:
        """The objective of an image alone: this one without the terms that regularise a network
        (`register(network=True)`: stability, spike) and their options. What the evaluations score
        a network's output by, so networks trained with and without those terms compare."""
        off = {k for k, _ in self.weights if REGISTRY[k].network}
        return dataclasses.replace(self, weights=tuple((k, w) for k, w in self.weights if k not in off),
                                   options=tuple((k, v) for k, v in self.options
                                                 if option_keys()[k][0] not in off))

    def weight(self, term: str) -> float:
        """The weight of `term` (0 when it is off)."""
        return dict(self.weights).get(term, 0.0)

    def option(self, term: str, name: str) -> float | int:
        """Option `name` of `term` (its default when the config does not set it)."""
        return dict(self.options).get(f"{term}_{name}", REGISTRY[term].options[name])

    @property
    def vgg_layers(self) -> tuple[str, ...]:
        """Every VGG layer the objective reads, content layers first, without repeats."""
        return tuple(dict.fromkeys(self.content_layers + self.style_layers))


def _option(key: str, value) -> float | int:
    term, name = option_keys()[key]
    as_int = isinstance(REGISTRY[term].options[name], int)
    ok = (not isinstance(value, bool) and isinstance(value, int if as_int else int | float)
          and math.isfinite(value) and value >= 0)
    if not ok:
        kind = "an integer" if as_int else "a finite number"
        raise ConfigError(f"loss.{key} must be {kind} >= 0, got {value!r}")
    return int(value) if as_int else float(value)


def feature_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Feature reconstruction loss ||phi_j(y_hat) - phi_j(y)||^2 / (C_j H_j W_j), batch mean."""
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def gram(feats: jax.Array) -> jax.Array:
    """Gram matrices G_j = psi psi^T / (C_j H_j W_j) of [N, H, W, C] features -> [N, C, C].

    One einsum contracting the spatial axes: no reshaped copy of the features is made.
    """
    chex.assert_rank(feats, 4)
    _, h, w, c = feats.shape
    g = jnp.einsum("nhwc,nhwd->ncd", feats, feats, preferred_element_type=jnp.float32)
    return g / (c * h * w)


def style_loss(pred_feats: Mapping[str, jax.Array], target_grams: Mapping[str, jax.Array],
               layer_weights: Mapping[str, float] | None = None) -> jax.Array:
    """Style reconstruction loss: sum over layers of w_j ||G_j(y_hat) - G_j(y_s)||_F^2.

    `target_grams[j]` is [C, C] or [N or 1, C, C]; it carries no spatial size, so the style image
    and the output may have different sizes. Squared Frobenius norm per image, batch mean.
    """
    layer_weights = layer_weights or {name: 1.0 for name in target_grams}
    total = jnp.float32(0.0)
    for name, w in layer_weights.items():
        g = gram(pred_feats[name])
        chex.assert_equal(g.shape[-2:], target_grams[name].shape[-2:])
        total = total + w * jnp.mean(jnp.sum(jnp.square(g - target_grams[name]), axis=(-2, -1)))
    return total


def pixel_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Pixel loss ||y_hat - y||^2 / (C H W), batch mean."""
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)))


def tv_loss(images: jax.Array) -> jax.Array:
    """Total variation regulariser: squared differences of neighbouring pixels / (C H W).

    The squared (beta = 2) form of Mahendran & Vedaldi that the paper's code uses, normalised by
    the image size like the pixel loss, so that its weight does not depend on the resolution and
    sits in the paper's 1e-6..1e-4 range for [0, 255] images and torchvision-normalised VGG
    features. Batch mean.
    """
    _, h, w, c = images.shape
    images = images.astype(jnp.float32)
    dy = jnp.sum(jnp.square(images[:, 1:, :, :] - images[:, :-1, :, :]), axis=(1, 2, 3))
    dx = jnp.sum(jnp.square(images[:, :, 1:, :] - images[:, :, :-1, :]), axis=(1, 2, 3))
    return jnp.mean(dx + dy) / (c * h * w)


# --------------------------------------------------------------------------- registered terms


@register("content")
def content_term(*, pred_feats, content_feats, content_layer_weights=None) -> jax.Array:
    """Feature loss summed over the content layers (per-layer weights default to 1)."""
    cw = content_layer_weights or {name: 1.0 for name in content_feats}
    return sum(w * feature_loss(pred_feats[name], content_feats[name]) for name, w in cw.items())


@register("style")
def style_term(*, pred_feats, style_grams, style_layer_weights=None) -> jax.Array:
    """Gram style loss over the style layers."""
    return style_loss(pred_feats, style_grams, style_layer_weights)


@register("pixel")
def pixel_term(*, pred, target) -> jax.Array:
    """Per-pixel MSE against the target images."""
    return pixel_loss(pred, target)


@register("tv")
def tv_term(*, pred) -> jax.Array:
    """Total variation of the output."""
    return tv_loss(pred)


# noise: std of the Gaussian input noise, on 0..255; shift: the largest shift (input px), 0 = none.
@register("stability", options={"noise": 8.0, "shift": 0}, network=True)
def stability_term(*, pred, pred_perturbed, perturb_offset=None) -> jax.Array:
    """Stability (Gupta et al., ICCV 2017): squared difference between the outputs for an input
    and for the same input slightly perturbed (`perturb`), / (C H W), batch mean.

    When the perturbation also shifted the input (a crop at `perturb_offset`, given in output
    pixels), the perturbed output is compared with the same crop of `pred`: the output should
    move with the content, as it must in a panning shot.
    """
    ref = pred if perturb_offset is None else crop(pred, perturb_offset, pred_perturbed.shape[1:3])
    return jnp.mean(jnp.square(ref - pred_perturbed))


# threshold: how many of its channel's standard deviations (over the image) a value of a
# normalisation layer's output may lie from the channel's mean before it counts as a spike.
@register("spike", options={"threshold": 4.0}, network=True)
def spike_term(*, norm_outputs, spike_threshold=4.0) -> jax.Array:
    """A penalty on the spikes that paint bright discs (results/discs/README.md): each output of a
    normalisation with whole-image statistics (instance norm), standardised per image and channel,
    pays the square of how far it lies beyond `spike_threshold` standard deviations; mean over the
    values, then over the layers. A disc is a few per cent of the pixels holding most of a channel's
    variance (up to 90% in the shipped networks: 6 and more standard deviations out), which lets
    the network set that channel's statistics for the whole image; ordinary features stay within.
    Measured: it does not remove the discs; trained with it, a network paints larger ones whose
    values stay under the threshold (results/discs/README.md). Kept, off, for experiments.
    """
    if not norm_outputs:
        raise ValueError("the spike term needs a network with whole-image normalisation (instance norm)")
    total = jnp.float32(0.0)
    for y in norm_outputs:
        y = y.astype(jnp.float32)
        mean = jnp.mean(y, axis=(1, 2), keepdims=True)
        std = jnp.std(y, axis=(1, 2), keepdims=True)
        z = (y - mean) / (std + 1e-3)
        total = total + jnp.mean(jnp.square(jax.nn.relu(jnp.abs(z) - spike_threshold)))
    return total / len(norm_outputs)


def perturb(images: jax.Array, key: jax.Array, noise: float, shift: int = 0) -> tuple[jax.Array, jax.Array]:
    """The stability term's perturbation and the shift it applied (dy, dx in input pixels).

    With `shift` > 0 the images are first cropped by `shift` px in each dimension at a random
    offset in [0, shift]^2 (a camera move of up to `shift` px); then Gaussian noise of std `noise`
    (on 0..255) is added and the result clipped. The noise uses `key` itself and the offset a key
    folded from it, so a shift-free run draws the same noise with or without this option.
    """
    offset = jnp.zeros((2,), jnp.int32)
    if shift:
        _, h, w, _ = images.shape
        offset = jax.random.randint(jax.random.fold_in(key, 1), (2,), 0, shift + 1)
        images = crop(images, offset, (h - shift, w - shift))
    noisy = jnp.clip(images + noise * jax.random.normal(key, images.shape, images.dtype), 0.0, 255.0)
    return noisy, offset


def crop(images: jax.Array, offset: jax.Array, size: tuple[int, int]) -> jax.Array:
    """images[:, dy:dy+h, dx:dx+w] for a traced offset (dy, dx) and a static size (h, w)."""
    n, _, _, c = images.shape
    return jax.lax.dynamic_slice(images, (0, offset[0], offset[1], 0), (n, *size, c))


def _call_term(name: str, term: Term, inputs: Mapping) -> jax.Array:
    missing = sorted(k for k in term.required if inputs.get(k) is None)
    if missing:
        raise ValueError(f"loss term {name!r} needs input(s) {missing}")
    return term.fn(**{k: v for k, v in inputs.items() if k in term.inputs and v is not None})


def total_loss(weights: LossSpec | Mapping[str, float], **inputs) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of the registered terms with a non-zero weight, and each weighted part.

    Args:
      weights: a LossSpec, or a mapping term -> weight (unknown terms fail).
      **inputs: what the terms read, by keyword: `pred` (generated images [N, H, W, 3] in
        [0, 255]), `target` (pixel-loss targets), `pred_feats` (VGG features of `pred`),
        `content_feats`, `style_grams`, `content_layer_weights` / `style_layer_weights` (per-layer
        weights, default 1; may be traced arrays, so one compiled objective serves several layer
        choices), and any input a registered extension term declares.

    Returns:
      (total, parts) where parts maps each computed term to its weighted value.
    """
    spec = weights if isinstance(weights, LossSpec) else LossSpec(
        weights=tuple((k, float(v)) for k, v in weights.items()))
    known = set().union(*(term.inputs for term in REGISTRY.values()))
    unknown = sorted(set(inputs) - known)
    if unknown:
        raise ValueError(f"no loss term reads input(s) {unknown}; the registered terms read "
                         f"{', '.join(sorted(known))}")
    parts = {name: w * _call_term(name, REGISTRY[name], inputs) for name, w in spec.weights if w}
    total = sum(parts.values(), jnp.float32(0.0))
    return total, parts
