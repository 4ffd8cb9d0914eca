"""Single-image super-resolution x4 (paper §4.2 and supplementary).

  bin/train --config=configs/sr_x4.py:loss=feature --workdir=runs/sr_x4_feat
  bin/train --config=configs/sr_x4.py:loss=pixel --workdir=runs/sr_x4_pixel
  bin/train --config=configs/sr_x4.py:runlocal --workdir=runs/sr_local     # minutes on a CPU

Paper settings: 288x288 HR patches; LR input = Gaussian blur (sigma 1.0) then bicubic
downsampling by 4, made in the input pipeline; batch 4; Adam lr 1e-3; 200k iterations.
`loss=feature` (Lfeat) uses the feature reconstruction loss at relu2_2 of VGG-16;
`loss=pixel` (Lpixel) the per-pixel MSE. A small TV term (2e-5, as for style transfer; TV is
normalised by C*H*W) suppresses the feature loss's high-frequency artefacts.
"""

import ml_collections

from fastnst.configs.common import parse_arg
from fastnst.paths import shared_data


def get_config(arg: str | None = None, scale: int = 4) -> ml_collections.ConfigDict:
    a = parse_arg(arg, runlocal=False, loss="feature")
    if a["loss"] not in ("feature", "pixel"):
        raise ValueError(f"loss must be feature or pixel, got {a['loss']!r}")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.vgg_weights = ""  # "" = the default resolution order (fastnst/vgg.py); else a weights file
    c.init_from = ""  # model file or shipped name to start from: fine-tuning or adding styles (warmstart.py)
    c.model = ml_collections.ConfigDict(dict(
        task="sr", scale=scale, norm="batch", upsample="transpose", padding="paper", width=1.0))
    c.data = ml_collections.ConfigDict(dict(
        source="folder", folder=str(shared_data() / "train"), tfds_name="coco/2014", tfds_data_dir="",
        holdout=4,
        workers=4, sr_sigma=1.0, cache=False,
        # on_device: decode every photo once into one uint8 array on the device and cut the crops
        # inside the step (for data that fits: the bundled photos, a carried subset); flip: mirror
        # each crop with probability 1/2. Both data paths give the same batches.
        on_device=False, flip=False))
    feature = a["loss"] == "feature"
    c.loss = ml_collections.ConfigDict(dict(
        content_layers=("relu2_2",), style_layers=(),
        content=1.0 if feature else 0.0, style=0.0, pixel=0.0 if feature else 1.0, tv=2e-5))
    c.train = ml_collections.ConfigDict(dict(
        batch_size=4, image_size=288, steps=200_000, lr=1e-3,
        steps_per_dispatch=1,  # K steps per jitted call (lax.scan); logs and checkpoints act between calls
        log_every=100, ckpt_every=2000, keep=3, sample_every=5000, time_limit_s=0.0,
        precision="float32"))  # or "bfloat16": bf16 compute, float32 parameters/optimizer/losses
    if a["runlocal"]:
        c.model.width = 0.5
        c.model.norm = "instance"
        c.train.update(batch_size=4, image_size=96, steps=300, log_every=10, ckpt_every=100,
                       sample_every=100)
    return c
