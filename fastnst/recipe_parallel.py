"""`bin/recipe --parallel`: every unit of the recipe job in its own `bin/recipe --units=UNIT`
process, all at once on the same devices, then their models and reports gathered.

Why: one of these small networks at batch 4 leaves most of a large GPU idle. On an H200 in bf16,
four style networks trained as four processes sharing the GPU made about 350 images/s together,
at least 1.4x one process alone, while vmapping them into one step was 16x slower per step
(results/recipe_h200/). Each process gets an equal share of the device memory
(`XLA_PYTHON_CLIENT_MEM_FRACTION`, with preallocation off), the whole budget (they run side by
side, not in turn) and its own folder `OUT/units/UNIT` (runs, models, evaluation, report) and log
`OUT/units/UNIT.log`. Afterwards the models and their cards are copied into `OUT/models` and
`OUT/report.md` lists every unit with its exit status, models and targets, and every unit's state
is packed into `OUT/carry` (`carry`) for the next run. Rerunning with the same `--out` resumes each
unit, as the sequential job does.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from fastnst import carry, images

COMMAND = ("-m", "fastnst", "recipe")  # what each unit's process runs, after the interpreter


def run(out: str | Path, *, names: Sequence[str], budget_minutes: float, argv: Sequence[str],
        log: Callable[[str], None] = print, grace_s: float = 600.0, carry_out: bool = True,
        recipe_steps: dict[str, int] | None = None) -> Path:
    """Runs `fastnst recipe ARGV --units=NAME` for every name at once; returns OUT/report.md. `argv`
    holds the job's other options (styles, photos, sizes), passed to every process. A process still
    running `grace_s` after the budget (each one ends its training within it; its evaluation follows)
    is stopped like Ctrl-C stops it, so that one hung process cannot keep the job waiting forever."""
    out = Path(out)
    (out / "units").mkdir(parents=True, exist_ok=True)
    here = str(Path(__file__).resolve().parents[1])  # (this fastnst, installed or from a clone)
    env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{0.9 / len(names):.3f}",
           "PYTHONPATH": os.pathsep.join(filter(None, (here, os.environ.get("PYTHONPATH"))))}
    procs = []
    try:
        for name in names:
            with open(out / "units" / f"{name}.log", "ab") as logf:  # the child keeps its own descriptor
                cmd = [sys.executable, *COMMAND, *argv, f"--units={name}",
                       f"--out={out / 'units' / name}", f"--budget-minutes={budget_minutes}"]
                procs.append((name, subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, env=env)))
        log(f"{len(procs)} units running at once (logs: {out / 'units'}/UNIT.log)")
        deadline = time.monotonic() + budget_minutes * 60 + grace_s
        codes = {}
        for name, p in procs:
            try:
                codes[name] = p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{name}: still running {grace_s:.0f} s after the budget: stopped")
                codes[name] = _stop(p)
    except BaseException:  # Ctrl-C or an error here: the units stop too (each saves its checkpoint)
        for _, p in procs:
            _stop(p)
        raise
    for name, code in codes.items():
        log(f"{name}: {'done' if code == 0 else f'exit {code}, see its log'}")
    if carry_out:  # (each process's unit trained in OUT/units/UNIT/runs/UNIT)
        carry.carry_out({n: out / "units" / n / "runs" / n for n in names}, out / "carry", log, recipe_steps)
    return gather(out, names, codes)


def _stop(p: subprocess.Popen, wait_s: float = 60.0) -> int:
    """SIGTERM (the unit saves its checkpoint and exits 130), then SIGKILL if it does not end
    within `wait_s`; returns its exit status."""
    if p.poll() is None:
        p.terminate()
        try:
            return p.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            p.kill()
    return p.wait()


def gather(out: Path, names: Sequence[str], codes: dict[str, int]) -> Path:
    """Copies every unit's models and cards into OUT/models; writes OUT/report.md."""
    lines = ["# Recipe job, one process per unit", "",
             "| unit | exit | models | report |", "|---|---|---|---|"]
    targets = []
    for name in names:
        unit = out / "units" / name
        models = sorted((unit / "models").glob("*.msgpack"))
        for m in models:
            for f in (m, m.with_suffix(".md")):
                if f.is_file():
                    images.atomic_write_bytes(out / "models" / f.name, f.read_bytes())
        report = unit / "report.md"
        lines.append(f"| {name} | {codes[name]} | {', '.join(m.stem for m in models) or '-'} | "
                     f"{f'units/{name}/report.md' if report.is_file() else f'none: units/{name}.log'} |")
        if report.is_file():
            section = report.read_text().partition("## Targets")[2].partition("\n## ")[0]
            targets += [t for t in section.splitlines() if t.startswith("- ")]
    md = "\n".join([*lines, "", "## Targets", "", *(targets or ["(none evaluated)"])]) + "\n"
    return images.atomic_write_bytes(out / "report.md", md.encode())
