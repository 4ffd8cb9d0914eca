"""Many styles in one network (Dumoulin et al. 2017, "A Learned Representation for Artistic Style").

  bin/train --config=configs/multistyle.py --workdir=runs/multi
  bin/train --config=configs/multistyle.py:runlocal,styles=candy+udnie+mosaic+la_muse --workdir=runs/m4
  bin/stylize --model=runs/multi/model.msgpack --style=candy:0.7,udnie:0.3 photo.jpg --out=out/

The network is the style network with conditional instance norm (`model.norm=
conditional_instance_floor`, the floored instance norm of configs/style.py's runlocal with a gamma and
beta per style): every norm layer holds a gamma and beta per style ([S, C]); the convolutions and the
variance floors are shared. (`conditional_instance`, without floors, is the norm of earlier
multi-style models; it paints bright discs: results/discs/README.md.) About 3.2k
of its 1.7M parameters belong to each style (at width 1.0).

Which style each image trains towards: sample k of the run goes to style k mod S (`data.Batches`),
so every batch mixes styles and every style sees the same number of images. Per image rather than
per batch: instance norm treats images independently, so a mixed batch costs nothing, and each
step's gradient then pulls the shared convolutions towards all styles at once instead of towards
one style per step (which makes the shared weights oscillate between styles).

Losses, data and schedule as configs/style.py (its floored instance-norm, resize-convolution variant,
which the multi-style network needs). `runlocal` as there: half width, 128 px crops, 300 steps.
"""

import ml_collections

from fastnst.configs import style
from fastnst.configs.common import parse_arg

DEFAULT_STYLES = "candy+udnie+mosaic+la_muse"


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    a = parse_arg(arg, runlocal=False, styles=DEFAULT_STYLES)
    c = style.get_config("runlocal" if a["runlocal"] else None)
    names = [n for n in a["styles"].split("+") if n]
    c.style_image = ""
    c.style_images = tuple(f"{style.STYLES}/{n}.jpg" for n in names)
    c.model.update(norm="conditional_instance_floor", upsample="resize_conv", num_styles=len(names))
    return c
