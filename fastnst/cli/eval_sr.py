"""Evaluates super-resolution the standard way (paper Table 2): PSNR / SSIM on luma, LPIPS.

  bin/eval_sr --model=bicubic --model=runs/sr_x4/model.msgpack --scale=4 --sets=Set5,Set14,BSD100

Each --model is `bicubic`, a model file or a shipped model name (repeatable: one table row each).
--sets are names under --root (default ../shared/data/sr) or folders of HR images. Prints a
Markdown table (cells: PSNR / SSIM / LPIPS) and writes it with CSV and JSON into --out.
"""

import sys

from fastnst import cli, paths


@cli.one_line_errors
def main(argv=None) -> int:
    ap = cli.Parser(description=__doc__)
    ap.add_argument("--model", action="append", required=True, help="bicubic | model file | name")
    ap.add_argument("--scale", type=int, default=4, choices=(2, 4, 8))
    ap.add_argument("--sets", default="Set5,Set14,BSD100")
    ap.add_argument("--root", default=str(paths.shared_data() / "sr"))
    ap.add_argument("--histogram-match", action="store_true")
    ap.add_argument("--no-lpips", action="store_true", help="skip LPIPS (faster)")
    ap.add_argument("--out", default="runs/eval_sr", help="folder for table.md, results.csv/json")
    a = ap.parse_args(argv)
    from fastnst import evaluate

    results = evaluate.sr_benchmark(
        a.model, scale=a.scale, sets=a.sets.split(","), root=a.root, histogram_match=a.histogram_match,
        lpips=not a.no_lpips, on_result=lambda m, s, r: print(f"{m} {s}: {r}", file=sys.stderr))
    print(evaluate.write_sr_results(results, a.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
