"""Exported models: one msgpack file holding the network config and its variables.

`bin/train` writes one at the end of a run; `bin/stylize` / `bin/upscale` and the notebook load
it with `load_model`, by path or by the name of a model shipped in `fastnst/pretrained/`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from fastnst import nets
from fastnst.errors import ConfigError, WeightsError
from fastnst.images import atomic_write_bytes

FORMAT = "fastnst-model-v3"  # v3: multi-style models (model.num_styles, meta["styles"])
PRETRAINED_DIR = Path(__file__).parent / "pretrained"
SUFFIX = ".msgpack"
_STORE_DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class Model:
    """A trained transformation network ready for inference."""

    config: dict  # the `config.model` block, completed with defaults: task, scale, norm, ...
    variables: dict
    meta: dict

    @property
    def net(self) -> nets.TransformNet:
        """The network this model's variables belong to."""
        return nets.build(self.config)

    @property
    def scale(self) -> int:
        """Output size / input size (1 for style transfer)."""
        return int(self.config["scale"]) if self.config["task"] == "sr" else 1


def save_model(path: str | os.PathLike, model_config: Mapping, variables: Mapping, *,
               dtype: str = "float32", meta: Mapping | None = None) -> Path:
    """Writes config + variables (optionally stored as float16/bfloat16) to one file, atomically."""
    store = _STORE_DTYPES[dtype]
    host = jax.tree.map(lambda a: np.asarray(jnp.asarray(a, store)), jax.device_get(dict(variables)))
    blob = serialization.msgpack_serialize({
        "format": FORMAT, "config": json.dumps(nets.model_config(model_config)),
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
    if p.is_dir():
        raise WeightsError(f"{p}: is a folder, not a model file")
    names = ", ".join(available()) or "none"
    raise WeightsError(f"{name_or_path}: no such model file, and not a shipped model ({names})")


def available() -> list[str]:
    """Names of the models shipped in `fastnst/pretrained/`."""
    return sorted(p.stem for p in PRETRAINED_DIR.glob(f"*{SUFFIX}"))


_V1_RESIDUAL = re.compile(r"^(res\d+)_(conv\d|norm\d)$")


def migrate_v1(variables: dict) -> dict:
    """v1 -> v2 variable names: residual blocks became submodules (`res0_conv0` -> `res0/conv0`)."""
    out = {}
    for collection, tree in variables.items():
        new = {}
        for name, leaf in tree.items():
            m = _V1_RESIDUAL.match(name)
            if m:
                new.setdefault(m.group(1), {})[m.group(2)] = leaf
            else:
                new[name] = leaf
        out[collection] = new
    return out


_MIGRATIONS = {"fastnst-model-v1": migrate_v1, "fastnst-model-v2": lambda v: v, FORMAT: lambda v: v}


def load_model(name_or_path: str | os.PathLike) -> Model:
    """Loads an exported model (this format or an earlier one); variables come back as float32.

    The file's config is validated against the architecture's schema and every array against the
    shape the architecture expects, so a damaged or foreign file fails with one line.

    Raises:
      WeightsError: no such model, or a file that is not a valid fastnst model.
    """
    path = resolve(name_or_path)
    try:
        blob = serialization.msgpack_restore(path.read_bytes())
    except Exception as e:  # msgpack raises many kinds for truncated or foreign bytes
        raise WeightsError(f"{path}: not a fastnst model file ({type(e).__name__})") from None
    try:
        return _from_blob(blob)
    except (ConfigError, ValueError, TypeError, KeyError, AttributeError) as e:
        raise WeightsError(f"{path}: not a valid fastnst model file ({e})") from None


def _from_blob(blob) -> Model:
    if not isinstance(blob, dict) or blob.get("format") not in _MIGRATIONS:
        fmt = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise ValueError(f"format {fmt!r}; this version reads {', '.join(_MIGRATIONS)}")
    config, meta = json.loads(blob["config"]), json.loads(blob["meta"])
    if not isinstance(config, dict) or not isinstance(meta, dict):
        raise ValueError("config and meta must be JSON objects")
    config = nets.model_config(config)
    variables = blob["variables"]
    if not isinstance(variables, dict):
        raise ValueError("'variables' must be a mapping")
    variables = _MIGRATIONS[blob["format"]](variables)
    return Model(config=config, variables=_checked_variables(config, variables), meta=meta)


@functools.lru_cache(maxsize=16)
def _expected_shapes(config_json: str) -> dict:
    """Path -> ShapeDtypeStruct of every variable the architecture has (abstract: no compute)."""
    net = nets.build(json.loads(config_json))
    expected = jax.eval_shape(lambda: nets.init(net, jax.random.key(0), scale=1))
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(expected)}


def _checked_variables(config: dict, variables: dict) -> dict:
    """`variables` as float32 arrays, after checking names, shapes, dtypes and finiteness."""
    want = _expected_shapes(json.dumps(config, sort_keys=True))
    got = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(variables)}
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    if missing or extra:
        raise ValueError(f"variables do not match the architecture (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    for key, spec in want.items():
        a = got[key]
        if not isinstance(a, np.ndarray) or a.dtype not in [np.dtype(d) for d in _STORE_DTYPES.values()]:
            raise ValueError(f"{key} must be a float array, got {type(a).__name__} "
                             f"{getattr(a, 'dtype', '')}")
        if a.shape != spec.shape:
            raise ValueError(f"{key} has shape {a.shape}, the architecture needs {spec.shape}")
        if not np.all(np.isfinite(a.astype(np.float32))):
            raise ValueError(f"{key} holds non-finite values")
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), variables)
