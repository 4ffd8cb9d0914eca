"""The training config's schema: one validation of the whole config, before any work.

`validate(config)` raises `ConfigError` with one line naming the key, the value and what is
allowed. `resume_differences` compares a config with the one a workdir was created with and
sorts the differences into those that would change the run (refused) and harmless ones
(allowed and recorded).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fastnst import losses, nets, vgg
from fastnst.errors import ConfigError

# Keys that may differ when resuming a workdir: they change how long or how verbosely a run goes,
# or the optimiser's step size (so a diverged run can be resumed with a smaller one), not what is
# trained.
HARMLESS_ON_RESUME = frozenset({
    "train.steps", "train.log_every", "train.ckpt_every", "train.keep", "train.sample_every",
    "train.time_limit_s", "train.lr", "data.workers", "data.cache", "vgg_weights"})

TOP_KEYS = {"seed", "style_image", "style_size", "model", "data", "loss", "train", "vgg_weights"}
DATA_SOURCES = ("folder", "tfds")
PRECISIONS = ("float32", "bfloat16")


def _get(c: Mapping, dotted: str) -> Any:
    out = c
    for part in dotted.split("."):
        out = out[part]
    return out


def _int(c: Mapping, key: str, lo: int, hi: float = math.inf) -> int:
    v = _get(c, key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        rng = f">= {lo}" if hi == math.inf else f"in [{lo}, {int(hi)}]"
        raise ConfigError(f"{key} must be an integer {rng}, got {v!r}")
    return v


def _num(c: Mapping, key: str, lo: float, *, strict: bool = False) -> float:
    v = _get(c, key)
    ok = (not isinstance(v, bool) and isinstance(v, int | float) and math.isfinite(v)
          and (v > lo if strict else v >= lo))
    if not ok:
        raise ConfigError(f"{key} must be a finite number {'>' if strict else '>='} {lo}, got {v!r}")
    return float(v)


def validate(config) -> dict:
    """Checks every value of a training config; returns it as a plain dict.

    Raises:
      ConfigError: the first invalid value, in one line.
    """
    c = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    unknown = sorted(set(c) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known: {', '.join(sorted(TOP_KEYS))}")
    for block in ("model", "data", "loss", "train"):
        if not isinstance(c.get(block), Mapping):
            raise ConfigError(f"config.{block} is missing")
    _int(c, "seed", 0)
    model = nets.model_config(c["model"])
    t = c["train"]
    if t.get("precision", "float32") not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {t['precision']!r}")
    for key, lo in (("batch_size", 1), ("steps", 1), ("log_every", 1), ("ckpt_every", 1), ("keep", 1),
                    ("sample_every", 0)):
        _int(c, f"train.{key}", lo)
    size = _int(c, "train.image_size", 32, 4096)
    _num(c, "train.lr", 0.0, strict=True)
    _num(c, "train.time_limit_s", 0.0)
    if model["task"] == "sr" and (size % model["scale"] or size // model["scale"] < 8):
        raise ConfigError(f"train.image_size ({size}) must be a multiple of model.scale "
                          f"({model['scale']}) with at least 8 px per side after downscaling")
    del t

    d = c["data"]
    if d.get("source") not in DATA_SOURCES:
        raise ConfigError(f"data.source must be one of {', '.join(DATA_SOURCES)}, got {d.get('source')!r}")
    _int(c, "data.holdout", 0)
    _int(c, "data.workers", 1, 256)
    _num(c, "data.sr_sigma", 0.0)

    _validate_loss(c)
    return c


def _validate_loss(c: Mapping) -> None:
    loss = c["loss"]
    spec = losses.LossSpec.from_config(loss)
    for term in losses.terms():
        if term in loss:
            _num(c, f"loss.{term}", 0.0)
    if loss.get("stability_shift", 0) > c["train"]["image_size"] // 4:  # (its type: LossSpec)
        raise ConfigError(f"loss.stability_shift must be at most train.image_size // 4 "
                          f"({c['train']['image_size'] // 4}), got {loss['stability_shift']}")
    if not spec.weights:
        raise ConfigError(f"every loss weight is 0; set at least one of {', '.join(losses.terms())}")
    for key in losses.LAYER_KEYS:
        bad = [name for name in loss.get(key, ()) if name not in vgg.LAYERS]
        if bad:
            raise ConfigError(f"loss.{key}: unknown VGG layer(s) {bad}; choose from {', '.join(vgg.LAYERS)}")
    if spec.weight("content") and not spec.content_layers:
        raise ConfigError("loss.content is on but loss.content_layers is empty")
    if spec.weight("style"):
        if not spec.style_layers:
            raise ConfigError("loss.style is on but loss.style_layers is empty")
        if not c.get("style_image"):
            raise ConfigError("loss.style is on but style_image is not set")
        _int(c, "style_size", 32, 4096)


def _flatten(d: Mapping, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = list(v) if isinstance(v, tuple | list) else v
    return out


def resume_differences(recorded: Mapping, current: Mapping) -> tuple[dict, dict]:
    """(refused, harmless): dotted key -> (recorded value, current value) for every difference.

    Keys the recorded config lacks (written by an older fastnst) count as harmless."""
    a, b = _flatten(recorded), _flatten(current)
    diffs = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    refused = {k: v for k, v in diffs.items() if k not in HARMLESS_ON_RESUME and k in a}
    harmless = {k: v for k, v in diffs.items() if k not in refused}
    return refused, harmless
