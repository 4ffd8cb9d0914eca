"""The recipe job's evaluation and report (`bin/recipe`, `fastnst.recipe`): Fig. 5 per style model,
Table 2 per SR model, the issue's targets checked, a gallery, report.md and report.json."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from fastnst import data, evaluate, images, losses


def plan_table(units_: list, measured: dict, steps: dict, reached: dict | None = None) -> str:
    lines = ["| unit | start-up s | s/step | recipe steps | planned steps | planned min |"
             + (" reached |" if reached else ""), "|---|---|---|---|---|---|" + ("---|" if reached else "")]
    for u in units_:
        m = measured[u.name]
        lines.append(f"| {u.name} | {m['startup_s']:.1f} | {m['step_s']:.4f} | {u.recipe_steps} | "
                     f"{steps[u.name]} | {steps[u.name] * m['step_s'] / 60:.1f} |"
                     + (f" {reached[u.name]} |" if reached else ""))
    return "\n".join(lines)


def evaluate_models(job: list, out: Path, sizes, cards: dict, sr_root: str, log) -> dict:
    """Fig. 5 per style model (on the held-out training photos), Table 2 per SR model (bicubic and
    every model of one scale scored in one `sr_benchmark` call, so the sets, VGG, LPIPS and the
    bicubic baseline are loaded and scored once per scale and histogram-matching setting)."""
    sr_files = {}  # scale -> the SR model files
    for c in cards.values():
        if c["model"]["task"] == "sr":
            sr_files.setdefault(c["model"]["scale"], []).append(c["file"])
    scores = {}  # (scale, "" or "_histmatch") -> {method: {set: scores}}, bicubic's included
    for scale, files in sr_files.items():
        for suffix, hm in (("", False), ("_histmatch", True)):
            scores[scale, suffix] = evaluate.sr_benchmark(
                ["bicubic", *files], scale=scale, sets=sizes.sr_sets, root=sr_root, histogram_match=hm,
                lpips=sizes.lpips)
        log(f"scored the x{scale} SR models and bicubic")
    evals = {}
    for name, card in cards.items():
        unit = next(u for u in job if u.name == card["unit"])
        folder = out / "eval" / name
        if unit.is_style:
            held = data.FolderSource(unit.config.data.folder, holdout=sizes.holdout).heldout
            md = evaluate.fig5(card["file"], card["style_image"], [str(p) for p in held],
                               spec=losses.LossSpec.from_config(unit.config.loss),
                               style_size=unit.config.style_size, size=sizes.fig5_size,
                               iters=sizes.fig5_iters, checkpoints=sizes.fig5_checkpoints, out=folder)
            rows = json.loads((folder / "results.json").read_text())["rows"]
            first = sizes.fig5_checkpoints[0]
            evals[name] = {"table": md, "network": float(np.mean([r["network"] for r in rows])),
                           f"lbfgs_{first}": float(np.mean([r["lbfgs"][first] for r in rows]))}
        else:
            scale, evals[name] = card["model"]["scale"], {}
            for suffix in ("", "_histmatch"):
                res = {k: scores[scale, suffix][k] for k in ("bicubic", card["file"])}
                md = evaluate.write_sr_results(res, out / "eval" / f"{name}{suffix}")
                evals[name][f"table{suffix}"] = md
                evals[name][f"results{suffix}"] = {"bicubic": res["bicubic"], "model": res[card["file"]]}
        log(f"evaluated {name}")
    return evals


def targets(cards: dict, evals: dict, sizes) -> list[str]:
    """The issue's targets, each met or not, from the evaluation."""
    lines, first = [], sizes.fig5_checkpoints[0]
    for name, e in evals.items():
        task = cards[name]["model"]["task"]
        if task == "style":
            ok = e["network"] <= e[f"lbfgs_{first}"]
            lines.append(f"- {name}: network objective {e['network']:.2f} vs L-BFGS@{first} "
                         f"{e[f'lbfgs_{first}']:.2f} (mean of {sizes.holdout}): {'met' if ok else 'NOT met'}")
            continue
        r = e["results"]
        if name.endswith("feature") and sizes.lpips:
            ok = all(r["model"][s]["lpips"] < r["bicubic"][s]["lpips"] for s in r["model"])
            lines.append(f"- {name}: LPIPS below bicubic on {', '.join(r['model'])}: "
                         f"{'met' if ok else 'NOT met'}")
        if name == "sr_x4_pixel" and "Set5" in r["model"]:
            p = r["model"]["Set5"]["psnr"]
            lines.append(f"- {name}: Set5 PSNR {p:.2f} dB vs the paper's 28.40: "
                         f"{'met' if p >= 28.40 else 'NOT met'}")
        if name == "sr_x4_bicubic" and "Set5" in r["model"]:
            gain = r["model"]["Set5"]["psnr"] - r["bicubic"]["Set5"]["psnr"]
            lines.append(f"- {name}: Set5 {gain:+.2f} dB over bicubic (target +1.5): "
                         f"{'met' if gain >= 1.5 else 'NOT met'}")
    return lines


def gallery(job: list, out: Path, cards: dict, sizes, sr_root: str) -> Path:
    """One row per model: held-out photos and their stylisations; bicubic | model for SR."""
    from fastnst import stylize

    rows = []
    for card in cards.values():
        unit = next(u for u in job if u.name == card["unit"])
        model = stylize.load_model(card["file"])
        if unit.is_style:
            held = data.FolderSource(unit.config.data.folder, holdout=sizes.holdout).heldout[:3]
            shots = [evaluate.center_square(images.load_image(p), sizes.fig5_size) for p in held]
            rows.append([x for s in shots for x in (s, np.asarray(stylize.apply(model, s)))])
        else:
            first = evaluate.find_set(sizes.sr_sets[0], Path(sr_root))
            sample = evaluate.load_set(first, model.scale)[0]
            sr = np.asarray(stylize.apply(model, sample.lr))
            rows.append([evaluate.bicubic(model.scale)(sample.lr), sr, sample.hr])
    strips = [images.side_by_side(r, height=min(256, 4 * sizes.fig5_size)) for r in rows]
    width = max(s.shape[1] for s in strips)
    gap = np.full((8, width, 3), 255.0, np.float32)
    sheet = np.concatenate([x for s in strips for x in (
        np.pad(s, ((0, 0), (0, width - s.shape[1]), (0, 0)), constant_values=255), gap)][:-1])
    return images.save_image(out / "gallery.jpg", sheet, quality=90)


def write(out: Path, job, sizes, measured, steps, reached, cards, evals, wall: float,
          budget: float, notes=()) -> Path:
    sizes_note = ", ".join(f"{u.name}: batch {u.config.train.batch_size}, crop {u.config.train.image_size}"
                           for u in job)
    md = [f"# Recipe job on {jax.devices()[0].device_kind} x{jax.device_count()}", "",
          f"Budget {budget / 60:.1f} min; the whole job took {wall / 60:.1f} min. {sizes_note}.", "",
          "## Plan and steps reached", "", *[x for n in notes for x in (n, "")],
          plan_table(job, measured, steps, reached), "",
          "## Models", "", "| model | steps | planned | recipe | cut off | wall s |",
          "|---|---|---|---|---|---|"]
    md += [f"| {n} | {c['steps']} | {c['planned_steps']} | {c['recipe_steps']} | {c['cut_off']} | "
           f"{c['wall_s']} |" for n, c in cards.items()]
    md += ["", "## Targets", "", *targets(cards, evals, sizes), ""]
    for name, e in evals.items():
        md += [f"## {name}", ""]
        md += [e["table"], ""] if "network" in e else [
            "Without histogram matching:", "", e["table"], "", "With histogram matching:", "",
            e["table_histmatch"], ""]
    md += ["## Gallery", "", "One row per model, in the order of the models table: held-out photo | "
           "network, three times, for style; bicubic | network | original for SR.", "",
           "![gallery](gallery.jpg)", ""]
    facts = {"measured": measured, "planned": steps, "reached": reached, "cards": cards,
             "evals": {k: {kk: vv for kk, vv in v.items() if not kk.startswith("table")}
                       for k, v in evals.items()},
             "wall_s": wall, "budget_s": budget}
    images.atomic_write_bytes(out / "report.json", json.dumps(facts, indent=1, default=str).encode())
    return images.atomic_write_bytes(out / "report.md", "\n".join(md).encode())
