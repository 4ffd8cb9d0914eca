"""Trains the shipped model set within a wall-clock budget, on whatever devices JAX sees, and
evaluates it: the job to run first on a GPU.

  bin/recipe --parallel --budget-minutes=8 --out=runs/recipe   # on a GPU: one process per unit
  bin/recipe --dry-run --budget-minutes=3 --out=runs/dry    # the whole job at toy sizes (CPU)

The set: one network per style (the_scream, starry_night, candy, mosaic, composition_vii, wave;
--styles), SR x4 and x8 with the feature and the pixel loss (resize-convolution), and SR x4 on the
bicubic-only degradation. Every unit first runs a few steps to measure its step time; the job then plans how
many steps each unit gets (the same fraction of the paper's recipe for all), prints the plan and
writes plan.md, and trains. A unit cut off by the budget is still exported, its card says how far it
got. Then Fig. 5 (network vs L-BFGS on 10 held-out photos) per style, Table 2 (Set5/Set14/BSD100 or
--sr-sets, with and without histogram matching) per SR model, gallery.jpg and report.md with the
targets checked. Data from ../shared/data unless --photos, --styles, --sr-root say otherwise.
Rerunning with the same --out resumes each unit from its checkpoints, so several short runs add
up (give the budget of the new run; the plan counts the steps already made). On a machine that is
gone after the run, OUT/carry holds every unit's state in at most 6 files of 16 MiB (parameters,
Adam's moments in bf16): the next run's --carry-in=DIR goes on from there; --units
trains only some units (--units=styles: all style networks). --parallel runs every unit in its own
process at once on the same devices (fastnst/recipe_parallel.py): on one large GPU that trained
faster than taking turns.

What one slot buys, measured on an H200 (results/recipe_h200/): each unit's start-up (compilation,
autotuning, photo cache) about 72 s; a bf16 step 0.016 s for a style network, 0.018 s for SR on the
bicubic degradation (0.05-0.075 s with the paper's blur, where the host's loader was the limit;
it has since been made 2.9x faster). The whole recipe
(4 x 40k style + 5 x 200k SR steps) therefore needs at least 5.7 GPU-hours, and a 15-minute slot
reaches a few percent of it per unit.
"""

import sys
from pathlib import Path

from fastnst import cli


# (Long: one argument definition per flag, then one call per mode.)
@cli.one_line_errors
def main(argv=None) -> int:
    ap = cli.Parser(description=__doc__)
    ap.add_argument("--budget-minutes", type=cli.positive_float, default=None,
                    help="wall-clock minutes for the whole job, evaluation included")
    ap.add_argument("--out", required=True, help="folder for runs/, models/, eval/, plan.md, report.md")
    ap.add_argument("--dry-run", action="store_true", help="toy sizes: the whole job in minutes on a CPU")
    ap.add_argument("--styles", default=None,
                    help="comma-separated style images or names in ../shared/data/styles (default: "
                         "the_scream,starry_night,candy,mosaic,composition_vii,wave); empty: no style models")
    ap.add_argument("--side-by-side", action="store_true",
                    help="train the style networks in one vmapped step (one unit 'styles') instead of one "
                         "after the other; measured slower per network on a 2-core CPU and on an H200")
    ap.add_argument("--multistyle", action="store_true",
                    help="train the styles as one multi-style network (conditional instance norm) instead "
                         "of one network per style")
    ap.add_argument("--units", default=None,
                    help="train and evaluate only these units (comma-separated: a style's name or styles "
                         "for all, sr_x4_feature, "
                         "sr_x4_pixel, sr_x8_feature, sr_x8_pixel, sr_x4_bicubic); default all")
    ap.add_argument("--parallel", action="store_true",
                    help="run every unit in its own process at once on the same devices (OUT/units/UNIT, "
                         "models gathered in OUT/models): on a large GPU sharing it trained faster than "
                         "taking turns (results/recipe_h200/)")
    ap.add_argument("--photos", default=None, help="training photos (folder; the last ones are held out)")
    ap.add_argument("--sr-root", default=None, help="folder holding Set5/Set14/BSD100")
    ap.add_argument("--sr-sets", default=None,
                    help="comma-separated SR sets for Table 2 (default Set5,Set14,BSD100; a dry run: Set5); "
                         "fewer sets leave the rest to bin/eval_sr later, e.g. where a set does not travel")
    ap.add_argument("--carry-in", default=None,
                    help="a carry/ folder an earlier run wrote: its units go on from the steps they reached")
    ap.add_argument("--no-carry-out", action="store_true",
                    help="do not pack the units' state into OUT/carry at the end (the processes of "
                         "--parallel: the job packs them all at once)")
    ap.add_argument("--models-from-carry", default=None, metavar="DIR",
                    help="only write OUT/models/UNIT.msgpack for every one-network unit carried in DIR "
                         "(a run that brought back its state but not its model files), then stop")
    a = ap.parse_args(argv)
    if a.budget_minutes is None and not a.models_from_carry:
        ap.error("the following arguments are required: --budget-minutes")

    from fastnst import carry, data, images, recipe
    from fastnst.errors import FastnstError

    images.check_writable_folder(a.out)
    if a.models_from_carry:
        for name, path in carry.export_models(Path(a.models_from_carry), Path(a.out) / "models").items():
            print(f"{name}: {path}")
        return 0
    styles = None
    if a.styles is not None:
        styles = []
        for s in filter(None, (p.strip() for p in a.styles.split(","))):
            path = Path(s) if Path(s).suffix else data.shared_data() / "styles" / f"{s}.jpg"
            if not path.is_file():
                raise FastnstError(f"--styles: no style image {path}")
            styles.append(path)
    sizes = recipe.TOY if a.dry_run else recipe.FULL
    if a.sr_sets is not None:
        sets = tuple(filter(None, (x.strip() for x in a.sr_sets.split(","))))
        bad = [x for x in sets if x not in recipe.FULL.sr_sets]
        if bad or not sets:
            raise FastnstError(f"--sr-sets: {', '.join(bad) if bad else 'empty'}; choose from "
                               f"{', '.join(recipe.FULL.sr_sets)}")
        sizes = recipe.dataclasses.replace(sizes, sr_sets=sets)
    log = lambda m: print(m, flush=True)  # noqa: E731
    if a.parallel:
        import os

        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"  # this process only waits: no GPU memory
        from fastnst import recipe_parallel

        job, _ = recipe.checked_job(sizes, styles=styles, photos=a.photos, sr_root=a.sr_root,
                                    multistyle=a.multistyle, side_by_side=a.side_by_side, only=a.units)
        argv = [f"--{k.replace('_', '-')}={v}" for k, v in vars(a).items()
                if k in ("styles", "photos", "sr_root", "sr_sets", "carry_in") and v is not None]
        argv += [f"--{k.replace('_', '-')}" for k in ("dry_run", "side_by_side", "multistyle")
                 if getattr(a, k)] + ["--no-carry-out"]
        report = recipe_parallel.run(a.out, names=[u.name for u in job], budget_minutes=a.budget_minutes,
                                     argv=argv, log=log, carry_out=not a.no_carry_out,
                                     recipe_steps={u.name: u.recipe_steps for u in job})
    else:
        from fastnst import compcache

        # A unit's run after its warm-up retraces the step: the persistent cache reads it back.
        compcache.use(Path(a.out) / "jax_cache")
        report = recipe.run(a.out, budget_minutes=a.budget_minutes, sizes=sizes, styles=styles,
                            photos=a.photos, sr_root=a.sr_root, multistyle=a.multistyle,
                            side_by_side=a.side_by_side, only=a.units, log=log, carry_in=a.carry_in,
                            carry_out=not a.no_carry_out)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
