"""Network vs optimisation (paper Fig. 5): the style-transfer objective of a style network's output
and of projected L-BFGS from white noise after N iterations, on the same photos.

  bin/eval_style --model=starry_night --style=../shared/data/styles/starry_night.jpg \
      --out=results/fig5_starry_night PHOTO_OR_FOLDER...

Photos are centre-cropped to squares of --size. The objective (weights, layers, style size) is the
one the model was trained with, as its file records it (files written before that record:
configs/style.py's, which the shipped models were trained with); the style Grams are computed as
in training (longer side of the style image at that style size).
Writes table.md (per photo and mean, at --checkpoints, with the share of the network's output
covered by bright discs: fastnst/discs.py), results.json (every iteration),
curves.png and side-by-side figures (photo | network | L-BFGS) of the first three photos.
"""

import sys

from fastnst import cli


@cli.one_line_errors
def main(argv=None) -> int:
    ap = cli.Parser(description=__doc__)
    ap.add_argument("photos", nargs="+", help="image files or folders (held out from training)")
    ap.add_argument("--model", required=True, help="shipped model name or model file")
    ap.add_argument("--style", required=True, help="the style image the model was trained on")
    ap.add_argument("--size", type=int, default=256, help="side of the square photos (centre crops)")
    ap.add_argument("--iters", type=int, default=300, help="L-BFGS iterations per photo")
    ap.add_argument("--checkpoints", default="50,100,300", help="iterations the table reports")
    ap.add_argument("--limit", type=int, default=0, help="use at most this many photos (0 = all)")
    ap.add_argument("--out", default="runs/eval_style", help="folder for table.md, results.json, figures")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar of the L-BFGS iterations")
    a = ap.parse_args(argv)

    from tqdm import tqdm

    from fastnst import evaluate

    bars = []  # made at the first iteration, so that an early error stays one line

    def progress(i, value):
        if not bars:
            bars.append(tqdm(unit=" L-BFGS iterations", disable=a.no_progress, file=sys.stderr))
        bars[0].update(10)

    def report(row):  # (through the bar, so that the two do not interleave)
        tqdm.write(f"{row['name']}: network {row['network']:.2f}, L-BFGS {row['lbfgs'][-1]:.2f} after "
                   f"{a.iters}, matched at {row['iters_to_match']}", file=sys.stdout)

    table = evaluate.fig5(a.model, a.style, a.photos, size=a.size, iters=a.iters,  # its own objective
                          checkpoints=[int(c) for c in a.checkpoints.split(",")], limit=a.limit,
                          out=a.out, on_photo=report, progress=progress)
    for bar in bars:
        bar.close()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
