"""The perceptual objective a network is trained and scored with, above the losses: the loss spec
read from a config with its VGG layers checked, the targets the losses compare against (content
features and style Grams, one way for training, L-BFGS and the evaluations), and the record of it
that a model file keeps, so that an evaluation scores a model with the objective it was trained
with.

`losses` holds the terms and their rules and knows nothing of VGG-16 or image files; this module is
where the two meet.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import jax.numpy as jnp
import numpy as np

from fastnst import images, losses, vgg

RECORD_KEY = "objective"  # model-file meta: {"loss": config.loss as given, "style_size": int}


def spec(loss: Mapping, *, key_name: Callable[[str], str] = "loss.{}".format) -> losses.LossSpec:
    """`losses.LossSpec.from_config`, and every content and style layer given (also those of a term
    that is off) a layer of VGG-16.

    Raises:
      ConfigError: the first invalid value, in one line naming its key as `key_name` spells it.
    """
    result = losses.LossSpec.from_config(loss, key_name=key_name)
    for key in losses.LAYER_KEYS:
        vgg.check_layers(tuple(loss.get(key, ())), key_name(key))
    return result


def style_grams(vgg_params: Mapping, style_image: np.ndarray, layers, size: int | None = None) -> dict:
    """Gram matrices [1, C, C] of the style image at `layers`, its longer side resized to `size`
    (Lanczos, at least 32 px a side; None: as given). Computed once per run."""
    if not layers:
        return {}
    image = np.asarray(style_image, np.float32)
    if size is not None:
        h, w = image.shape[:2]
        s = size / max(h, w)
        shape = max(32, round(h * s)), max(32, round(w * s))
        image = np.clip(images.resize(image, shape, method="lanczos"), 0, 255)
    feats = vgg.features(vgg_params, jnp.asarray(image[None]), layers)
    return {k: losses.gram(f) for k, f in feats.items()}


def targets(spec_: losses.LossSpec, vgg_params: Mapping, content: np.ndarray | None,
            style: np.ndarray | None, style_size: int | None = None) -> tuple[dict | None, dict | None]:
    """One content image's features at the content layers and the style image's Grams (resized as
    `style_grams` resizes), each None when its term is off; content and style may differ in size."""
    cf = sg = None
    if spec_.content_layers:
        cf = vgg.features(vgg_params, jnp.asarray(content, jnp.float32)[None], spec_.content_layers)
    if spec_.style_layers:
        sg = style_grams(vgg_params, style, spec_.style_layers, style_size)
    return cf, sg


def record(loss_settings: Mapping, style_size: int) -> dict:
    """What a model file keeps under `meta[RECORD_KEY]`: the config's loss block as given and the
    size the style image's Grams were computed at."""
    return {"loss": {k: list(v) if isinstance(v, tuple) else v for k, v in dict(loss_settings).items()},
            "style_size": int(style_size)}


def of_model(meta: Mapping) -> tuple[losses.LossSpec, int]:
    """The image objective (`LossSpec.of_image`) and style size a model was trained with, from its
    file's meta: what its outputs are scored by. Terms that regularised the network (stability,
    spike) are left out, so a video model and its plain twin score alike. Files written before
    the record existed were trained with the packaged style config's objective (every shipped
    model, whose cards say so), which is what they get."""
    rec = meta.get(RECORD_KEY)
    if rec is None:
        from fastnst.configs import style as style_config  # (the package's; only for old files)

        cfg = style_config.get_config()
        rec = {"loss": cfg.loss.to_dict(), "style_size": cfg.style_size}
    return spec(rec["loss"]).of_image(), int(rec["style_size"])
