"""Style transfer, paper settings (Johnson et al. 2016, §4.1 and supplementary).

  bin/train --config=configs/style.py:style=starry_night --workdir=runs/starry
  bin/train --config=configs/style.py:runlocal --workdir=runs/local       # minutes on a CPU

Paper defaults: 256x256 crops, batch 4, 40,000 iterations (~2 epochs of COCO), Adam lr 1e-3,
content layer relu2_2, style layers relu1_2 relu2_2 relu3_3 relu4_3, batch norm, stride-1/2
convolutions, 40 px reflection padding.

Loss weights. Our losses follow the paper's definitions: the feature loss and TV are means over
C*H*W, Grams are divided by C*H*W and the style loss is a squared Frobenius norm, on VGG-16
activations of torchvision-normalised inputs (not the paper's Caffe model, so the paper's numbers do
not carry over). Measured here: a photo against The Starry Night has a raw style loss of about 27
(mostly relu2_2 and relu3_3), and a photo against a blurred copy of itself a content loss of about
2.7. With content = 1 and style = 2, the style term starts about 4x above the content term and the two
end roughly balanced (e.g. content 8.3, style 2.3 after 5.6k GPU steps): clearly stylised, content
recognisable. TV 2e-5 (inside the paper's 1e-6..1e-4) removes high-frequency speckle without visible
blurring; its weighted value stays around 1% of the total.

`time_limit_s` (0 = none) ends a run after that many seconds, checkpointing and exporting as at the
last step; rerunning resumes towards `steps`.

`runlocal` trains a half-width network (instance norm with a learned variance floor per channel,
`model.norm=instance_floor`, and resize-convolution) on 128 px crops for 300 steps (about 8 minutes
on 2 CPU cores): a real but short run, for demos and checks. The floor is what stops the bright discs
that plain instance norm (`instance`) networks paint into skies and walls: results/discs/README.md
has the experiment. The paper's batch norm stays the default above, as the paper trained it.
"""

import ml_collections

from fastnst.configs.common import parse_arg
from fastnst.paths import shared_data

STYLES = str(shared_data() / "styles")  # (the clone's shared data, from any working directory)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, runlocal=False, style="starry_night")
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.vgg_weights = ""  # "" = the default resolution order (fastnst/vgg.py); else a weights file
    c.init_from = ""  # model file or shipped name to start from: fine-tuning or adding styles (warmstart.py)
    c.style_image = f"{STYLES}/{a['style']}.jpg"
    # Several images here: one network per image, trained side by side in one step (style_image unused).
    c.style_images = ()
    c.style_size = 512  # longer side of the style image when its Grams are computed

    c.model = ml_collections.ConfigDict(dict(
        task="style", scale=1, norm="batch", upsample="transpose", padding="paper", width=1.0))

    c.data = ml_collections.ConfigDict(dict(
        source="folder", folder=str(shared_data() / "train"), tfds_name="coco/2014", tfds_data_dir="",
        holdout=4,
        workers=4, sr_sigma=1.0, cache=False,
        # on_device: decode every photo once into one uint8 array on the device and cut the crops
        # inside the step (for data that fits: the bundled photos, a carried subset); flip: mirror
        # each crop with probability 1/2. Both data paths give the same batches.
        on_device=False, flip=False))

    c.loss = ml_collections.ConfigDict(dict(
        content_layers=("relu2_2",), style_layers=("relu1_2", "relu2_2", "relu3_3", "relu4_3"),
        content=1.0, style=2.0, pixel=0.0, tv=2e-5,
        # Stability (Gupta et al. 2017) for video: 0 = off (the paper). The perturbation is Gaussian
        # noise of std stability_noise (0..255) and, with stability_shift=S > 0, a random shift of
        # up to S px (the output must move with the content). See docs/video.md.
        stability=0.0, stability_noise=8.0, stability_shift=0,
        # Spike penalty on the instance norms' outputs beyond spike_threshold standard deviations
        # of their channel (losses.spike_term). Off: tried against the bright discs, it did not
        # remove them (the network painted larger ones); the floored norm (model.norm=
        # instance_floor) does: results/discs/README.md.
        spike=0.0, spike_threshold=4.0))

    c.train = ml_collections.ConfigDict(dict(
        batch_size=4, image_size=256, steps=40_000, lr=1e-3,
        steps_per_dispatch=1,  # K steps per jitted call (lax.scan); logs and checkpoints act between calls
        log_every=50, ckpt_every=1000, keep=3, sample_every=2000, time_limit_s=0.0,
        precision="float32"))  # or "bfloat16": bf16 compute, float32 parameters/optimizer/losses

    if a["runlocal"]:
        c.style_size = 256
        c.model.width = 0.5
        c.model.norm = "instance_floor"
        c.model.upsample = "resize_conv"
        c.train.update(batch_size=2, image_size=128, steps=300, log_every=10, ckpt_every=100,
                       sample_every=100)
    return c
