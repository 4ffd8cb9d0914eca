"""Stylizes images with a trained (or shipped) style model; any image size.

  bin/stylize --model=MODEL INPUT... --out=DIR_OR_FILE [--style=NAME_OR_INDEX] [--max-size=N]
              [--preserve-color] [--strength=S] [--memory-budget=MB]

MODEL is an exported model file or the name of a shipped model. A multi-style model needs --style:
a style's name or index, or a mix such as --style=candy:0.7,udnie:0.3 (weights >= 0, normalised
to sum 1; the styles' gamma and beta are mixed). INPUT may be files or folders
(subfolders are mirrored under --out). Images larger than the memory budget run in overlapping
tiles with the same result. --preserve-color keeps the photo's colours (luminance-only transfer);
--strength blends the result with the photo (1 = fully stylized; a pixel blend, not a retrained
weight). All outputs are planned and checked before any work; each is written atomically. Bad
inputs get a one-line error and the others are still processed; the exit status is 1 if any
input failed (also a video with unreadable frames: the readable ones are written; accept it with
--allow-missing-frames).
"""

import sys

from fastnst import cli

cli.keep_freed_memory()  # before JAX starts any thread: windows and frames reuse memory (docs/tiling.md)


@cli.one_line_errors
def main(argv=None) -> int:
    ap = cli.Parser(description=__doc__)
    ap.add_argument("--model", required=True, help="model file or shipped model name")
    cli.add_image_args(ap)
    ap.add_argument("--max-size", type=cli.positive_int, default=None,
                    help="downscale so the longer side is at most N")
    ap.add_argument("--style", default=None, metavar="NAME_OR_INDEX[:W],...",
                    help="multi-style models: the style, or a mix of styles with weights")
    ap.add_argument("--preserve-color", action="store_true", help="keep the photo's colours")
    ap.add_argument("--strength", type=cli.unit_interval, default=1.0,
                    help="blend with the photo: 0 = photo, 1 = fully stylized (default)")
    a = ap.parse_args(argv)
    from fastnst import styles, stylize
    from fastnst.errors import FastnstError

    model = stylize.load_model(a.model)
    if model.config["task"] != "style":
        raise FastnstError(f"{a.model} is a super-resolution model; use bin/upscale")
    model = styles.select(model, a.style)
    post = stylize.finisher(preserve_colors=a.preserve_color, strength=a.strength)
    budget = a.memory_budget and a.memory_budget * 2**20
    return cli.report(stylize.iter_files(model, a.inputs, a.out, max_size=a.max_size,
                                        batch_size=a.batch_size, post=post, budget=budget,
                                        allow_missing_frames=a.allow_missing_frames))


if __name__ == "__main__":
    sys.exit(main())
