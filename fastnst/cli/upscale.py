"""Super-resolves images with a trained (or shipped) SR model; any input size.

  bin/upscale --model=MODEL INPUT... --out=DIR_OR_FILE [--histogram-match] [--memory-budget=MB]

--histogram-match matches each output's per-channel histogram to its input (the paper's
post-processing). Inputs larger than the memory budget run in overlapping tiles with the same
result. Outputs are named <stem>_x<scale>.png (subfolders mirrored) and planned before any work.
Exit status 1 if any input failed; the others are still written.
"""

import sys

from fastnst import cli

cli.keep_freed_memory()  # before JAX starts any thread: windows and frames reuse memory (docs/tiling.md)


@cli.one_line_errors
def main(argv=None) -> int:
    ap = cli.Parser(description=__doc__)
    ap.add_argument("--model", required=True, help="SR model file or shipped model name")
    cli.add_image_args(ap)
    ap.add_argument("--histogram-match", action="store_true", help="match output histograms to input")
    a = ap.parse_args(argv)
    from fastnst import metrics, stylize
    from fastnst.errors import FastnstError

    model = stylize.load_model(a.model)
    if model.config["task"] != "sr":
        raise FastnstError(f"{a.model} is a {model.config['task']} model, not super-resolution; "
                           "use bin/stylize")
    post = metrics.match_histograms if a.histogram_match else None
    budget = a.memory_budget and a.memory_budget * 2**20
    return cli.report(stylize.iter_files(model, a.inputs, a.out, batch_size=a.batch_size,
                                        suffix=f"_x{model.scale}", post=post, budget=budget,
                                        allow_missing_frames=a.allow_missing_frames))


if __name__ == "__main__":
    sys.exit(main())
