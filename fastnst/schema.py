"""The training config's schema: one validation of the whole config, into one frozen, typed value.

`validate(config, init_model)` checks every value of an ml_collections config (or a plain dict)
before any work and returns a `Config`; it reads no file (the model named by `init_from` is given
to it; `load(config)` reads that file, then validates). The `Config` holds frozen dataclasses per
section, the model block completed by `nets.model_config` and the loss block turned into a
`losses.LossSpec`. Every consumer (the trainer, the data pipeline) takes the `Config`; nothing
reads the raw ConfigDict after it. Each rule lives once: architecture options in `nets`, the
objective's in `losses` (its VGG layers checked by `perceptual.spec` against `vgg`), data sources
in `data`, the rest (and the rules across sections) here. A bad value raises `ConfigError` with one
line naming the key, the value and what is allowed.

`resume_differences` compares a config with the one a workdir was created with and sorts the
differences into those that would change the run (refused) and harmless ones (allowed and recorded).
"""

from __future__ import annotations

import dataclasses
import math
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fastnst import data, losses, modelfile, nets, perceptual, variants, warmstart
from fastnst.errors import ConfigError

# Keys that may differ when resuming a workdir: they change how long or how verbosely a run goes,
# or the optimiser's step size (so a diverged run can be resumed with a smaller one), not what is
# trained.
HARMLESS_ON_RESUME = frozenset({
    "train.steps", "train.log_every", "train.ckpt_every", "train.keep", "train.sample_every",
    "train.time_limit_s", "train.lr", "data.workers", "data.cache", "vgg_weights",
    # How batches are delivered, not which: both data paths and any K give the same batches.
    "train.steps_per_dispatch", "data.on_device"})

PRECISIONS = ("float32", "bfloat16")
_REQUIRED = dataclasses.MISSING
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """`config.data`: where training photos come from and how they are prepared."""
    source: str
    folder: str = ""
    tfds_name: str = "coco/2014"
    tfds_data_dir: str = ""
    holdout: int = 0  # photos kept out of training (samples, evaluation)
    workers: int = 4  # decoding threads
    sr_sigma: float = 1.0  # Gaussian blur before the SR downscaling
    cache: bool = False  # keep decoded photos in memory
    on_device: bool = False  # decode every photo once into one uint8 array on the device (augment)
    flip: bool = False  # mirror each crop with probability 1/2 (both data paths)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """`config.train`: the optimisation and its bookkeeping."""
    batch_size: int
    image_size: int
    steps: int
    lr: float
    log_every: int
    ckpt_every: int
    keep: int
    sample_every: int
    time_limit_s: float = 0.0  # 0 = none
    precision: str = "float32"
    steps_per_dispatch: int = 1  # K steps per jitted call; logging and checkpoints act between calls


@dataclasses.dataclass(frozen=True)
class Config:
    """A validated training config. `record()` is what `config.json` holds."""
    seed: int
    model: Mapping[str, Any]  # `nets.model_config`: task, scale, norm, upsample, padding, width (read-only)
    data: DataConfig
    loss: losses.LossSpec
    train: TrainConfig
    style_image: str = ""
    style_images: tuple[str, ...] = ()  # a multi-style net's styles, or one single-style net each
    style_size: int = 512
    vgg_weights: str = ""  # "" = the default resolution order (fastnst/vgg.py)
    init_from: str = ""  # a model file or shipped name to start from (`warmstart`)
    loss_settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # `config.loss` as given
    start: warmstart.Start | None = None  # the loaded `init_from`

    @property
    def kept_styles(self) -> int:
        """Styles of the `init_from` model this run keeps and adds to (0 unless adding styles)."""
        return (self.start.old_styles or 0) if self.start else 0

    @property
    def side_by_side(self) -> int:
        """How many single-style networks this run trains side by side (0: one network)."""
        return len(self.style_images) if not variants.norm(self.model["norm"]).multistyle else 0

    @property
    def scale(self) -> int:
        """The SR factor (1 for style transfer)."""
        return self.model["scale"] if self.model["task"] == "sr" else 1

    def record(self) -> dict:
        """The config as plain JSON-able data, keyed like the config file."""
        return {"seed": self.seed, "style_image": self.style_image, "style_images": list(self.style_images),
                "style_size": self.style_size,
                "vgg_weights": self.vgg_weights, "init_from": self.init_from, "model": dict(self.model),
                "data": dataclasses.asdict(self.data), "loss": dict(self.loss_settings),
                "train": dataclasses.asdict(self.train)}


TOP_KEYS = {f.name for f in dataclasses.fields(Config)} - {"loss_settings", "start"}


def _check(key: str, value, kind: type) -> Any:
    """`value` as `kind` (int, float, str or bool), or ConfigError."""
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v),
          str: lambda v: isinstance(v, str)}[kind](value)
    if not ok:
        what = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}[kind]
        raise ConfigError(f"{key} must be {what}, got {value!r}")
    return kind(value)


def _section(cls, block: Mapping, name: str):
    """One dataclass section from a config block: unknown keys refused, missing required ones
    named, every value of its field's type."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(block) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in config.{name}; known: {', '.join(fields)}")
    values = {}
    for key, f in fields.items():
        if key not in block:
            if f.default is _REQUIRED:
                raise ConfigError(f"{name}.{key} is missing")
            continue
        values[key] = _check(f"{name}.{key}", block[key], _TYPES[f.type])  # (annotations are strings)
    return cls(**values)


def _at_least(key: str, value: float, lo: float, hi: float = math.inf, *, strict: bool = False) -> None:
    if not (value > lo if strict else value >= lo) or value > hi:
        rng = (f"> {lo}" if strict else f">= {lo}") if hi == math.inf else f"in [{lo}, {hi}]"
        raise ConfigError(f"{key} must be {rng}, got {value!r}")


def _plain(config) -> dict:
    return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def load(config) -> Config:
    """`validate`, with the model file or shipped model that `init_from` names read first (the one
    file a config's validation needs).

    Raises:
      ConfigError / WeightsError: an invalid value, or no such model.
    """
    if isinstance(config, Config):
        return config
    init_from = _plain(config).get("init_from", "")
    return validate(config, warmstart.read(init_from) if isinstance(init_from, str) and init_from else None)


def validate(config, init_model: modelfile.Model | None = None) -> Config:
    """Checks every value of a training config (ConfigDict or dict); returns it as a `Config`.
    Pure: `init_model` is the model `init_from` names, already loaded (`load` reads it).

    Raises:
      ConfigError: the first invalid value, in one line.
    """
    if isinstance(config, Config):
        return config
    c = _plain(config)
    unknown = sorted(set(c) - TOP_KEYS)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}; known: {', '.join(sorted(TOP_KEYS))}")
    for block in ("model", "data", "loss", "train"):
        if not isinstance(c.get(block), Mapping):
            raise ConfigError(f"config.{block} is missing")
    if "seed" not in c:
        raise ConfigError("seed is missing")
    seed = _check("seed", c["seed"], int)
    _at_least("seed", seed, 0)
    model = nets.model_config(c["model"])
    init_from = _check("init_from", c.get("init_from", ""), str)
    start = None
    if init_from:  # the trained net: the file's, plus the styles this run adds
        if init_model is None:
            raise ConfigError(f"init_from {init_from}: the model is not loaded (schema.load reads it)")
        start, block = warmstart.plan(init_model, init_from, model, len(c.get("style_images", ()) or ()))
        model = nets.model_config(block)
    train = _train(c["train"], model)
    d = _section(DataConfig, c["data"], "data")
    if d.source not in data.SOURCES:
        raise ConfigError(f"data.source must be one of {', '.join(data.SOURCES)}, got {d.source!r}")
    _at_least("data.holdout", d.holdout, 0)
    _at_least("data.workers", d.workers, 1, 256)
    _at_least("data.sr_sigma", d.sr_sigma, 0.0)

    spec = perceptual.spec(c["loss"])
    if c["loss"].get("stability_shift", 0) > train.image_size // 4:  # (its type: LossSpec)
        raise ConfigError(f"loss.stability_shift must be at most train.image_size // 4 "
                          f"({train.image_size // 4}), got {c['loss']['stability_shift']}")
    if spec.weight("spike") and not variants.norm(model["norm"]).image_stats:
        raise ConfigError(f"loss.spike acts on instance norms' outputs; model.norm={model['norm']!r} has "
                          "none (use norm='instance_floor' or set loss.spike=0)")
    style_image = _check("style_image", c.get("style_image", ""), str)
    style_images = _style_images(c.get("style_images", ()), model, spec, start)
    style_size = _check("style_size", c.get("style_size", 512), int)
    if spec.style_layers:
        if not (style_image or style_images):
            raise ConfigError("loss.style is on but style_image is not set")
        _at_least("style_size", style_size, 32, 4096)
    return Config(seed=seed, model=types.MappingProxyType(model), data=d, loss=spec, train=train,
                  style_image=style_image, style_images=style_images, style_size=style_size,
                  vgg_weights=_check("vgg_weights", c.get("vgg_weights", ""), str), init_from=init_from,
                  loss_settings=types.MappingProxyType(dict(c["loss"])), start=start)


def _style_images(given, model: Mapping, spec: losses.LossSpec, start) -> tuple[str, ...]:
    """A multi-style net trains towards `style_images`, one per `model.num_styles` (less the
    styles of the `start` model it adds to), with the style loss on. For a single-style net,
    `style_images` means one network per image, trained side by side in one step
    (`step.side_by_side_step`); `style_image` is then unused."""
    if isinstance(given, str) or not isinstance(given, list | tuple) or not all(
            isinstance(p, str) and p for p in given):
        raise ConfigError(f"style_images must be a list of image paths, got {given!r}")
    if not variants.norm(model["norm"]).multistyle:  # one net per style, trained side by side
        if given and model["task"] != "style":
            raise ConfigError("style_images is for style networks")
        if given and start:
            raise ConfigError("init_from cannot start networks trained side by side (style_images with a "
                              "single-style net); train them one at a time")
        if given and not spec.style_layers:
            raise ConfigError("networks trained side by side need the style loss (loss.style > 0)")
        stems = [Path(p).stem for p in given]  # (each network's model file is named after its style)
        if len(set(stems)) != len(stems):
            raise ConfigError(f"style_images: two images share a name ({', '.join(stems)})")
        return tuple(given)
    old = (start.old_styles or 0) if start else 0
    if len(given) != model["num_styles"] - old or not given:
        raise ConfigError(f"style_images holds {len(given)} images but model.num_styles is "
                          f"{model['num_styles']}" + (f" ({old} from init_from)" if old else ""))
    if not spec.style_layers:
        raise ConfigError("a multi-style net needs the style loss (loss.style > 0)")
    return tuple(given)


def _train(block: Mapping, model: Mapping) -> TrainConfig:
    t = _section(TrainConfig, block, "train")
    if t.precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    for key, lo in (("batch_size", 1), ("steps", 1), ("log_every", 1), ("ckpt_every", 1), ("keep", 1),
                    ("sample_every", 0), ("steps_per_dispatch", 1)):
        _at_least(f"train.{key}", getattr(t, key), lo)
    _at_least("train.image_size", t.image_size, 32, 4096)
    _at_least("train.lr", t.lr, 0.0, strict=True)
    _at_least("train.time_limit_s", t.time_limit_s, 0.0)
    size, scale = t.image_size, model["scale"]
    if model["task"] == "sr" and (size % scale or size // scale < 8):
        raise ConfigError(f"train.image_size ({size}) must be a multiple of model.scale "
                          f"({scale}) with at least 8 px per side after downscaling")
    return t


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

    Keys the recorded config lacks (written by an older fastnst) count as harmless, and so do the
    devices (`mesh.*`): a run may resume on other hardware."""
    a, b = _flatten(recorded), _flatten(current)
    diffs = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}
    refused = {k: v for k, v in diffs.items()
               if k not in HARMLESS_ON_RESUME and not k.startswith("mesh.") and k in a}
    harmless = {k: v for k, v in diffs.items() if k not in refused}
    return refused, harmless
