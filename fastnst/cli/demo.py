"""The main job on an embedded default.

  bin/demo [--input=PHOTO] [--workdir=runs/demo]
  bin/demo --train [--style=starry_night] [--steps=N] [--workdir=runs/demo_train]

Default: stylizes a photo (scikit-image's bundled `chelsea.png` unless --input is given) with
every shipped style model, offline, in seconds; writes WORKDIR/<model>.png and
WORKDIR/side_by_side.png (photo | one result per model).

--train: trains `configs/style.py:runlocal` on ../shared/data/train (or, without it, on the
photos scikit-image ships) with a style from ../shared/data/styles (or scikit-image's
`coffee.png`), then stylizes ../shared/data/content/chicago.jpg (or scikit-image's astronaut);
writes WORKDIR/stylized.png and WORKDIR/side_by_side.png (content | style | result). About 8
minutes on 2 CPU cores; rerunning resumes or reuses the finished run.
"""

import sys
from pathlib import Path

from fastnst import cli


@cli.one_line_errors
def main(argv=None) -> int:
    ap = cli.Parser(description=__doc__)
    ap.add_argument("--train", action="store_true", help="train a small model first (minutes)")
    ap.add_argument("--input", default=None, help="photo to stylize with the shipped models")
    ap.add_argument("--workdir", default=None, help="default runs/demo (runs/demo_train with --train)")
    ap.add_argument("--style", default="starry_night", help="name of a style in ../shared/data/styles")
    ap.add_argument("--steps", type=int, default=None, help="override the runlocal step count")
    a = ap.parse_args(argv)

    from absl import logging

    logging.set_verbosity(logging.WARNING)
    from fastnst import data, demo

    if not a.train:
        photo = a.input or data.sample_photo("chelsea.png")
        figure = demo.shipped_gallery(photo, a.workdir or Path("runs") / "demo")
    else:
        workdir = a.workdir or Path("runs") / "demo_train"
        cfg = demo.small_style_config(a.style, Path(workdir) / "photos", a.steps)
        figure = demo.train_and_stylize(cfg, workdir)
        if figure is None:
            print("interrupted; rerun to resume", file=sys.stderr)
            return 130
    print(f"figure: {figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
