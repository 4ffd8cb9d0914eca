"""Exported models: one msgpack file holding the network config and its variables.

`bin/train` writes one at the end of a run; `bin/stylize` / `bin/upscale` and the notebook load
it with `load_model`, by path or by the name of a model shipped in `fastnst/pretrained/`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from fastnst import nets
from fastnst.errors import WeightsError
from fastnst.images import atomic_write_bytes

FORMAT = "fastnst-model-v1"
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
SUFFIX = ".msgpack"


@dataclasses.dataclass(frozen=True)
class Model:
    """A trained transformation network ready for inference."""

    config: dict  # the `config.model` block: task, scale, norm, upsample, padding, width
    variables: dict
    meta: dict

    @property
    def net(self) -> nets.TransformNet:
        return nets.build(self.config)

    @property
    def scale(self) -> int:
        return int(self.config["scale"]) if self.config["task"] == "sr" else 1


def save_model(path: str | os.PathLike, model_config: Mapping, variables: Mapping, *,
               dtype: str = "float32", meta: Mapping | None = None) -> Path:
    """Writes config + variables (optionally stored as float16/bfloat16) to one file, atomically."""
    store = {"float32": np.float32, "float16": np.float16, "bfloat16": jnp.bfloat16}[dtype]
    host = jax.tree.map(lambda a: np.asarray(jnp.asarray(a, store)), jax.device_get(dict(variables)))
    blob = serialization.msgpack_serialize({
        "format": FORMAT, "config": json.dumps(dict(model_config)),
        "meta": json.dumps(dict(meta or {})), "variables": host})
    return atomic_write_bytes(path, blob)


def resolve(name_or_path: str | os.PathLike) -> Path:
    """A model path, or the file of a shipped model given by name (e.g. `starry_night`)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    shipped = PRETRAINED_DIR / f"{name_or_path}{SUFFIX}"
    if shipped.is_file():
        return shipped
    names = ", ".join(available()) or "none"
    raise WeightsError(f"{name_or_path}: no such model file, and not a shipped model ({names})")


def available() -> list[str]:
    """Names of the models shipped in `fastnst/pretrained/`."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob(f"*{SUFFIX}"))


def load_model(name_or_path: str | os.PathLike) -> Model:
    """Loads an exported model; variables come back as float32 arrays."""
    path = resolve(name_or_path)
    try:
        blob = serialization.msgpack_restore(path.read_bytes())
        if blob.get("format") != FORMAT:
            raise ValueError(f"format {blob.get('format')!r}")
        config, meta = json.loads(blob["config"]), json.loads(blob["meta"])
    except Exception as e:  # msgpack raises several kinds for truncated or foreign files
        raise WeightsError(f"{path}: not a fastnst model file ({e})") from None
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), blob["variables"])
    return Model(config=config, variables=variables, meta=meta)
