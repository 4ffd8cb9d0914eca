"""The shipped model set as one budgeted job (`bin/recipe`), made for a GPU held for minutes.

The set, as units trained one after the other (each one `train.train_and_evaluate` run):
  * one network per style image (`STYLES` by default; `--units=styles` names them all), instance
    norm and resize-convolution like the shipped models, each its own unit; with `side_by_side`, one
    unit `styles` in one vmapped step (slower per network on both devices tried); with `multistyle`,
    one multi-style network (models/multistyle.msgpack; each style also baked into its own file);
  * `sr_x4_feature`, `sr_x4_pixel`, `sr_x8_feature`, `sr_x8_pixel`: the paper's SR networks with
    resize-convolution upsampling (transposed convolutions leave a cross-hatch), and
    `sr_x4_bicubic` (pixel loss, on the bicubic-only degradation the SR evaluation uses).

Planning: every unit first runs `warmup` steps (they count), which measures its start-up and step
time; the style networks after the first share its measurement (the same program). The rest of the
budget, less the evaluation's share, is split so that every unit reaches the same fraction of its
recipe (40k steps for style, 200k for SR), at most all of it; the plan is printed and written
(plan.md) before training goes on. Each unit then resumes towards its planned steps with a time
limit, so a slow unit is cut off and exported rather than eating the others' time (its card says).

Outputs in `out`: runs/<unit>/ (workdirs), models/<name>.msgpack and <name>.md (model cards),
eval/<name>/ (Fig. 5 per style, Table 2 with and without histogram matching per SR model),
gallery.jpg, plan.md and report.md (everything, with the targets checked; `recipe_report`), and
carry/ (every unit's state for the next run, `carry`).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from fastnst import (
    carry,
    checkpoints,
    data,
    evaluate,
    images,
    modelfile,
    recipe_report,
    runlog,
    schema,
    train,
)
from fastnst.errors import ConfigError
from fastnst.variants import norm as norm_kind

# The four shipped so far, then two public-domain paintings (../shared/data/MANIFEST.md).
STYLES = ("the_scream", "starry_night", "candy", "mosaic", "composition_vii", "wave")
SR_UNITS = {  # name: (scale, loss, sr_sigma)
    "sr_x4_feature": (4, "feature", 1.0), "sr_x4_pixel": (4, "pixel", 1.0),
    "sr_x8_feature": (8, "feature", 1.0), "sr_x8_pixel": (8, "pixel", 1.0),
    "sr_x4_bicubic": (4, "pixel", 0.0)}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What differs between the full recipe and a dry run."""
    width: float = 1.0
    batch: int = 4
    style_crop: int = 256
    sr_crop: int = 288
    style_steps: int = 40_000  # the paper's recipe
    sr_steps: int = 200_000
    warmup: int = 20
    holdout: int = 10  # held-out training photos: Fig. 5's photos
    fig5_size: int = 256
    fig5_iters: int = 300
    fig5_checkpoints: tuple[int, ...] = (50, 100, 300)  # the first is the target's
    style_size: int = 512
    sr_sets: tuple[str, ...] = ("Set5", "Set14", "BSD100")
    lpips: bool = True
    eval_share: float = 0.15  # of the budget, kept for evaluation
    steps_per_dispatch: int = 10  # train steps per jitted call (the photos live on the device)
    photos: int = 0  # train on the first N photos only (0: all), the held-out ones kept as they are


FULL = Sizes()
TOY = Sizes(width=0.125, batch=2, style_crop=32, sr_crop=64, style_steps=12, sr_steps=12, warmup=3, holdout=2,
            photos=24, fig5_size=48, fig5_iters=6, fig5_checkpoints=(2, 4), style_size=64, sr_sets=("Set5",),
            lpips=False, eval_share=0.3, steps_per_dispatch=3)


@dataclasses.dataclass(frozen=True)
class Unit:
    """One training run of the job: its config and the paper's step count for it."""
    name: str
    config: object  # ml_collections.ConfigDict, as bin/train takes
    recipe_steps: int

    @property
    def is_style(self) -> bool:
        return self.config.model.task == "style"

    @property
    def is_multistyle(self) -> bool:
        return norm_kind(self.config.model.norm).multistyle

    def model_files(self, workdir: Path) -> dict[str, Path]:
        """{model name: file} of what the run exported. A multi-style network is also written as
        one instance-norm model per style (`styles.select`), so every style is evaluated, carded
        and shipped like a single-style model."""
        from fastnst import styles

        names = [Path(p).stem for p in self.config.get("style_images", ())]
        if self.is_multistyle:
            multi = modelfile.load_model(workdir / f"model{modelfile.SUFFIX}")
            return {n: modelfile.save_model(workdir / f"model_{n}{modelfile.SUFFIX}", m.config, m.variables,
                                            meta={**m.meta, "style_image": p})
                    for n, p in zip(names, self.config.style_images, strict=True)
                    for m in [styles.select(multi, n)]}
        if names:
            return {n: workdir / f"model_{n}{modelfile.SUFFIX}" for n in names}
        return {self.name: workdir / f"model{modelfile.SUFFIX}"}


def units(sizes: Sizes, *, styles: list[Path], photos: str, precision: str,
          multistyle: bool = False, side_by_side: bool = False) -> list[Unit]:
    """The shipped set at `sizes`: one unit per style network (`side_by_side`: all in one unit and
    one vmapped step; `multistyle`: one network holding every style, conditional instance norm),
    then the SR models."""
    from fastnst.configs import sr_x4
    from fastnst.configs import style as style_config

    def common(c, crop):
        c.model.width = sizes.width
        # The job's photos (the carried subset) fit on the device: decoded once, cut in the step.
        c.data.update(folder=str(photos), holdout=sizes.holdout, cache=True, on_device=True)
        c.train.update(batch_size=sizes.batch, image_size=crop, precision=precision, sample_every=0,
                       steps_per_dispatch=sizes.steps_per_dispatch,
                       log_every=max(1, min(50, sizes.warmup)), ckpt_every=1000, keep=2)
        return c

    out = []
    if styles:
        c = common(style_config.get_config(), sizes.style_crop)
        c.model.update(norm="instance_floor", upsample="resize_conv")  # no bright discs
        if multistyle:
            c.model.update(norm="conditional_instance_floor", num_styles=len(styles))
            c.style_image = ""
        c.style_images = tuple(str(p) for p in styles)
        c.style_size = sizes.style_size
        together = Unit("styles", c, sizes.style_steps)
        out += [together] if multistyle or side_by_side else one_at_a_time(together)
    for name, (scale, loss, sigma) in SR_UNITS.items():
        c = common(sr_x4.get_config(f"loss={loss}", scale=scale), sizes.sr_crop)
        c.model.upsample = "resize_conv"
        c.data.sr_sigma = sigma
        out.append(Unit(name, c, sizes.sr_steps))
    return out


def select_units(job: list[Unit], names: str | None) -> list[Unit]:
    """The units named in `names` (comma-separated; None or "": all), in the job's order."""
    if not names:
        return job
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if "styles" in wanted:  # every style network, whichever form they are trained in
        wanted += [u.name for u in job if u.is_style]
    known = list(dict.fromkeys([u.name for u in job] + ["styles"]))
    unknown = [n for n in wanted if n not in known]
    if unknown or not wanted:
        raise ConfigError(f"--units: unknown {', '.join(unknown) if unknown else repr(names)}; "
                          f"the units are {', '.join(known)}")
    return [u for u in job if u.name in wanted]


def measure(unit: Unit, workdir: Path, steps: int) -> dict:
    """Runs the unit's first `steps` steps; returns its start-up (set-up and compilation) and step
    time in seconds. Kept in the workdir (measured.json), so a rerun of the job plans alike."""
    saved = workdir / "measured.json"
    if saved.is_file():
        return json.loads(saved.read_text())
    c = unit.config.copy_and_resolve_references()
    c.train.update(steps=steps, log_every=1)
    t0 = time.perf_counter()
    if train.train_and_evaluate(c, workdir, progress=False).interrupted:
        raise KeyboardInterrupt  # nothing measured is kept: the rerun warms up again
    wall = time.perf_counter() - t0
    rates = [r["images_per_s"] for r in runlog.read_metrics(workdir / "metrics.jsonl")][1:]  # [0]: compile
    step_s = unit.config.train.batch_size / float(np.median(rates)) if rates else wall / steps
    out = {"step_s": step_s, "startup_s": max(0.0, wall - steps * step_s), "warmup_steps": steps}
    images.atomic_write_bytes(saved, json.dumps(out).encode())
    return out


def plan(units_: list[Unit], measured: dict, seconds: float, done: dict | None = None) -> dict[str, int]:
    """Steps per unit (totals, counting the `done` ones of earlier slots) so that all reach the same
    fraction of their recipe, as far as `seconds` more of training allow."""
    done = done or {}

    def cost(f):  # seconds to bring every unit to the fraction f of its recipe
        return sum(max(0.0, f * u.recipe_steps - done.get(u.name, 0)) * measured[u.name]["step_s"]
                   for u in units_)

    lo, hi = 0.0, 1.0
    if cost(1.0) <= seconds:
        lo = 1.0
    for _ in range(60 if lo < 1.0 else 0):  # cost is increasing in f: bisect
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(mid) <= seconds else (lo, mid)
    return {u.name: max(measured[u.name]["warmup_steps"], done.get(u.name, 0),
                        int(lo * u.recipe_steps + 1e-9)) for u in units_}


def one_at_a_time(unit: Unit) -> list[Unit]:
    """A side-by-side unit as one unit per style (each its own run and step)."""
    out = []
    for p in unit.config.style_images:
        c = unit.config.copy_and_resolve_references()
        c.style_image, c.style_images = str(p), ()
        out.append(Unit(Path(p).stem, c, unit.recipe_steps))
    return out


def checked_job(sizes: Sizes, *, styles: list[Path] | None, photos: str | None, sr_root: str | None,
                multistyle: bool, side_by_side: bool, only: str | None) -> tuple[list[Unit], str]:
    """The job's units (defaults from ../shared/data) and the SR root, every config, the photo
    folder and the SR sets checked before anything runs."""
    shared = data.shared_data()
    styles = [shared / "styles" / f"{s}.jpg" for s in STYLES] if styles is None else styles
    photos = photos or str(shared / "train")
    sr_root = sr_root or str(shared / "sr")
    precision = "bfloat16" if jax.default_backend() == "gpu" else "float32"  # (bf16 is slow on CPUs)
    job = select_units(units(sizes, styles=styles, photos=photos, precision=precision, multistyle=multistyle,
                             side_by_side=side_by_side), only)
    for u in job:
        schema.load(u.config)
    data.FolderSource(photos, holdout=sizes.holdout)
    for s in sizes.sr_sets:
        evaluate.find_set(s, Path(sr_root))
    return job, sr_root


def run(out: str | Path, *, budget_minutes: float, sizes: Sizes = FULL, styles: list[Path] | None = None,
        photos: str | None = None, sr_root: str | None = None, multistyle: bool = False,
        side_by_side: bool = False, only: str | None = None, log: Callable[[str], None] = print,
        carry_in: str | None = None, carry_out: bool = True) -> Path:
    """The whole job; returns report.md. Defaults read ../shared/data (`data.shared_data`).
    `carry_in`: a folder of state an earlier run carried out (`carry`): its units go on from
    there. With `carry_out`, every unit's state is packed into OUT/carry once training is over.
    Process-wide JAX settings are the caller's (`bin/recipe` turns on the compilation cache)."""
    t0, out = time.monotonic(), Path(out)
    budget = budget_minutes * 60
    if sizes.photos:  # (the dry run: an SR unit would otherwise hold every photo at full size)
        photos = str(data.photo_subset(photos or data.shared_data() / "train", out / "photos",
                                       sizes.photos, sizes.holdout))
    job, sr_root = checked_job(sizes, styles=styles, photos=photos, sr_root=sr_root, multistyle=multistyle,
                               side_by_side=side_by_side, only=only)
    carry.carry_in(carry_in, out / "runs", [u.name for u in job], log)  # (None: nothing carried in)
    measured = {}
    for i, u in enumerate(job):
        twin = next((v for v in job[:i] if _single_style(u) and _single_style(v)), None)
        if twin is not None:  # the same network and step as the style measured first (only the Grams
            measured[u.name] = {**measured[twin.name], "warmup_steps": 0}  # differ): not warmed up again
            continue
        measured[u.name] = measure(u, out / "runs" / u.name, sizes.warmup)
        m = measured[u.name]
        log(f"{u.name}: start-up {m['startup_s']:.1f} s, {m['step_s']:.4f} s/step")
    left = budget * (1 - sizes.eval_share) - (time.monotonic() - t0)
    done = {u.name: checkpoints.last_complete_step(out / "runs" / u.name) or 0 for u in job}  # earlier slots
    steps = plan(job, measured, left - sum(m["startup_s"] for m in measured.values()), done)
    table = recipe_report.plan_table(job, measured, steps)
    head = f"# Plan ({jax.devices()[0].device_kind}, budget {budget_minutes} min)"
    images.atomic_write_bytes(out / "plan.md", (head + "\n\n" + table).encode() + b"\n")
    log(table)
    end = t0 + budget * (1 - sizes.eval_share)  # the training part of the budget, whatever came before
    reached, cards, notes = train_units(job, out, steps, measured, end, log)
    if carry_out:
        notes += carry.carry_out({u.name: out / "runs" / u.name for u in job}, out / "carry", log,
                                 recipe_steps={u.name: u.recipe_steps for u in job})
    evals = recipe_report.evaluate_models(job, out, sizes, cards, sr_root, log)
    recipe_report.gallery(job, out, cards, sizes, sr_root)
    return recipe_report.write(out, job, sizes, measured, steps, reached, cards, evals, time.monotonic() - t0,
                               budget, notes)


def _single_style(u: Unit) -> bool:
    return u.is_style and not u.is_multistyle and not u.config.get("style_images")


def train_units(job: list[Unit], out: Path, steps: dict, measured: dict, end: float,
                log: Callable[[str], None]) -> tuple[dict, dict, list[str]]:
    """Trains each unit towards its planned steps within the time left before `end` (monotonic)
    and exports it with its card. A unit planned at 0 steps (nothing left of the budget for it)
    is not started: it is named in the returned notes, with no model. Returns (steps reached,
    cards, notes)."""
    reached, cards, notes = {}, {}, []
    for u in job:
        if steps[u.name] == 0:
            reached[u.name] = 0
            notes.append(f"{u.name}: not trained: no time was left for it in the budget.")
            log(notes[-1])
            continue
        c = u.config.copy_and_resolve_references()
        m = measured[u.name]
        mine = m["startup_s"] + (steps[u.name] - m["warmup_steps"]) * m["step_s"]
        c.train.update(steps=steps[u.name], time_limit_s=max(1.0, min(1.2 * mine, end - time.monotonic())))
        t = time.monotonic()
        result = train.train_and_evaluate(c, out / "runs" / u.name, progress=False)
        if result.interrupted:  # Ctrl-C or SIGTERM: the unit's checkpoint is saved; a rerun resumes the job
            raise KeyboardInterrupt
        reached[u.name] = result.step
        if u.is_multistyle:  # the multi-style file itself ships too
            _copy(out / "runs" / u.name / f"model{modelfile.SUFFIX}",
                  out / "models" / f"multistyle{modelfile.SUFFIX}")
        for name, path in u.model_files(out / "runs" / u.name).items():
            cards[name] = _card(u, name, path, out / "models", result.step, steps[u.name],
                                time.monotonic() - t, measured[u.name])
        log(f"{u.name}: {result.step} of {steps[u.name]} steps in {time.monotonic() - t:.0f} s")
    return reached, cards, notes


def _copy(src: Path, dst: Path) -> Path:
    """Copies a model file atomically: a job stopped mid-copy leaves the old file or none."""
    return images.atomic_write_bytes(dst, src.read_bytes())


def _card(unit: Unit, name: str, src: Path, folder: Path, step: int, planned: int, wall: float,
          measured: dict) -> dict:
    """Copies the model into `folder` and writes its card (<name>.md); returns the card's facts."""
    dst = _copy(src, folder / f"{name}{modelfile.SUFFIX}")
    m = modelfile.load_model(dst)
    facts = {"name": name, "file": str(dst), "unit": unit.name, "steps": step, "planned_steps": planned,
             "recipe_steps": unit.recipe_steps, "cut_off": step < planned, "wall_s": round(wall, 1),
             "s_per_step": measured["step_s"], "device": jax.devices()[0].device_kind,
             "model": dict(m.config), "style_image": m.meta.get("style_image", ""),
             "final_metrics": m.meta.get("final_metrics", {}), "batch": unit.config.train.batch_size,
             "crop": unit.config.train.image_size, "precision": unit.config.train.precision}
    task = f"{m.config['task']}" + (f" x{m.config['scale']}" if m.config["task"] == "sr" else "")
    together = ", ".join(Path(p).stem for p in unit.config.get("style_images", ()))
    lines = [f"# {name}", "", f"- task: {task}",
             f"- steps: {step} (planned {planned}, paper recipe {unit.recipe_steps})"
             + (" - cut off by the time budget" if facts["cut_off"] else ""),
             (f"- one multi-style network (conditional instance norm) holding: {together}"
              if unit.is_multistyle else f"- trained side by side with: {together}")
             if unit.config.get("style_images") else f"- unit: {unit.name}",
             f"- batch {facts['batch']}, crop {facts['crop']}, {facts['precision']}, {facts['device']}, "
             f"{facts['s_per_step']:.4f} s/step, {facts['wall_s']} s",
             f"- architecture: {json.dumps(facts['model'])}",
             f"- final training losses: {json.dumps(facts['final_metrics'])}"]
    if facts["style_image"]:
        lines.append(f"- style image: {facts['style_image']}")
    images.atomic_write_bytes(folder / f"{name}.md", ("\n".join(lines) + "\n").encode())
    return facts
