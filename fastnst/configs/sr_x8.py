"""Single-image super-resolution x8: configs/sr_x4.py with scale 8 (same options).

  bin/train --config=configs/sr_x8.py:loss=feature --workdir=runs/sr_x8_feat
"""

import ml_collections

from fastnst.configs import sr_x4


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return sr_x4.get_config(arg, scale=8)
