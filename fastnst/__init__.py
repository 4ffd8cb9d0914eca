"""fastnst: Johnson et al. (2016) perceptual-loss style transfer and super-resolution in JAX/Flax.

The few things a researcher reaches for, importable from here (loaded on first use, so
`import fastnst` stays light and does not start JAX):

    model = fastnst.load_model("the_scream")                 # a shipped name or a model file
    out = fastnst.stylize_image(model, photo)                # HxWx3 (or NxHxWx3), 0..255, any size
    result = fastnst.train_model(fastnst.config("style:runlocal"), "runs/local")
    feats = fastnst.vgg.features(fastnst.vgg.load_params(), images, ["relu2_2"])
    fastnst.losses.gram(feats["relu2_2"]), fastnst.losses.feature_loss(a, b)

Everything else lives in its module (`fastnst.stylize`, `fastnst.train`, `fastnst.gatys`, ...);
the command line is `fastnst PROGRAM` (`fastnst --help`).
"""

from __future__ import annotations

import importlib

from fastnst.errors import FastnstError, ImageError, WeightsError

__version__ = "0.1.0"

# name -> (module, attribute; None for the module itself). No name may be a submodule's other than
# for that module itself: `from fastnst import stylize` must keep giving the module.
_LAZY = {
    "load_model": ("fastnst.modelfile", "load_model"),
    "stylize_image": ("fastnst.stylize", "apply"),
    "train_model": ("fastnst.train", "train_and_evaluate"),
    "config": ("fastnst.configs", "load"),
    "vgg": ("fastnst.vgg", None),
    "losses": ("fastnst.losses", None),
}
__all__ = ["FastnstError", "ImageError", "WeightsError", *_LAZY]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'fastnst' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    return value if attr is None else getattr(value, attr)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
