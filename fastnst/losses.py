"""Perceptual losses of Johnson et al. (2016), §3.2-3.3, as small pure functions.

Images are NHWC in [0, 255]; features are dicts of NHWC VGG activations. Every function reduces
to a scalar that is a mean over the batch. Nothing here knows about modules or configs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

TERMS = ("content", "style", "pixel", "tv")


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """The static (hashable) part of the objective: which terms, weights and layers."""

    weights: tuple[tuple[str, float], ...]
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]

    @classmethod
    def from_config(cls, loss: Mapping) -> LossSpec:
        """From a mapping with term weights and `content_layers` / `style_layers`; terms with
        weight 0 (or absent) and their layers are dropped."""
        weights = tuple((k, float(loss[k])) for k in TERMS if loss.get(k, 0.0))
        w = dict(weights)
        return cls(weights=weights,
                   content_layers=tuple(loss.get("content_layers", ())) if w.get("content") else (),
                   style_layers=tuple(loss.get("style_layers", ())) if w.get("style") else ())


def feature_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Feature reconstruction loss ||phi_j(y_hat) - phi_j(y)||^2 / (C_j H_j W_j), batch mean."""
    return jnp.mean(jnp.square(pred - target))


def gram(feats: jax.Array) -> jax.Array:
    """Gram matrices G_j = psi psi^T / (C_j H_j W_j) of [N, H, W, C] features -> [N, C, C].

    One einsum contracting the spatial axes: no reshaped copy of the features is made.
    """
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
        diff = gram(pred_feats[name]) - target_grams[name]
        total = total + w * jnp.mean(jnp.sum(jnp.square(diff), axis=(-2, -1)))
    return total


def pixel_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
    """Pixel loss ||y_hat - y||^2 / (C H W), batch mean."""
    return jnp.mean(jnp.square(pred - target))


def tv_loss(images: jax.Array) -> jax.Array:
    """Total variation regulariser: squared differences of neighbouring pixels / (C H W).

    The squared (beta = 2) form of Mahendran & Vedaldi that the paper's code uses, normalised by
    the image size like the pixel loss, so that its weight does not depend on the resolution and
    sits in the paper's 1e-6..1e-4 range for [0, 255] images and torchvision-normalised VGG
    features. Batch mean.
    """
    _, h, w, c = images.shape
    dy = jnp.sum(jnp.square(images[:, 1:, :, :] - images[:, :-1, :, :]), axis=(1, 2, 3))
    dx = jnp.sum(jnp.square(images[:, :, 1:, :] - images[:, :, :-1, :]), axis=(1, 2, 3))
    return jnp.mean(dx + dy) / (c * h * w)


def total_loss(weights: Mapping[str, float], *, pred: jax.Array,
               pred_feats: Mapping[str, jax.Array] | None = None,
               content_feats: Mapping[str, jax.Array] | None = None,
               style_grams: Mapping[str, jax.Array] | None = None,
               style_layer_weights: Mapping[str, float] | None = None,
               content_layer_weights: Mapping[str, float] | None = None,
               target: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Weighted sum of the losses named in `weights` and each weighted part.

    Args:
      weights: term -> weight, terms among `content` (feature loss over every layer in
        `content_feats`), `style`, `pixel`, `tv`. Terms with weight 0 are not computed.
      pred: generated images [N, H, W, 3] in [0, 255].
      pred_feats: VGG features of `pred` (needed by `content` and `style`).
      content_feats: VGG features of the content/target images at the content layer(s).
      style_grams: target Gram matrices per style layer.
      style_layer_weights: per-layer style weights (default 1 for every layer in `style_grams`).
      content_layer_weights: per-layer content weights (default 1 for every layer in
        `content_feats`). Layer weights may be traced arrays, so one compiled objective serves
        several layer choices.
      target: target images for the pixel loss.

    Returns:
      (total, parts) where parts maps each computed term to its weighted value.
    """
    unknown = set(weights) - set(TERMS)
    if unknown:
        raise ValueError(f"unknown loss term(s) {sorted(unknown)}")
    parts = {}
    if weights.get("content", 0.0):
        cw = content_layer_weights or {name: 1.0 for name in content_feats}
        parts["content"] = weights["content"] * sum(
            w * feature_loss(pred_feats[name], content_feats[name]) for name, w in cw.items())
    if weights.get("style", 0.0):
        parts["style"] = weights["style"] * style_loss(pred_feats, style_grams, style_layer_weights)
    if weights.get("pixel", 0.0):
        parts["pixel"] = weights["pixel"] * pixel_loss(pred, target)
    if weights.get("tv", 0.0):
        parts["tv"] = weights["tv"] * tv_loss(pred)
    total = sum(parts.values(), jnp.float32(0.0))
    return total, parts
