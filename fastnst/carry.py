"""State one run of the budgeted job hands to the next, so that runs of a few minutes each on a
machine that keeps nothing add up: each unit's newest checkpoint in a compact form, in a few files
of bounded size.

`pack(units, dst)` reads every unit's newest Orbax checkpoint (`runs/<unit>/checkpoints`) and writes
it, with the small files that describe the run (config.json, measured.json, metrics.jsonl), into
`dst/carry_00.npz`, `carry_01.npz`, ...: parameters, batch statistics and the step as they are
(float32), Adam's moments (`mu`, `nu`) rounded to bfloat16, a third less (the paper's style
network: 6.7 MB of parameters + 6.7 MB of moments instead of 20 MB). Units are packed whole,
largest first, into at most `Limits.files` (6) files of at most `Limits.file_bytes` (16 MiB) and
`Limits.total_bytes` (56 MiB) in all: what one command on a remote GPU machine can bring back
beside the job's report. Where they do not all fit (4 style and 5 SR networks are about 67 MiB
so), the parameters go
in bf16 too, and units that reached their recipe are dropped first (their model files are all a
later run needs); a unit that still does not fit is left out and named.

`unpack(src, runs)` writes each carried unit back as a workdir holding one checkpoint at its step
(the moments back in float32), unless that workdir already holds a newer one; the trainer then
resumes it as any interrupted run, so the steps of consecutive runs add up.

Between runs the files live wherever the next run can read them: they come back from the machine
in the job's output (`OUT/carry`), and the next command takes that folder along (`--carry-in`).
They are not committed: 50-60 MB of weights per run would grow the repository's history with
every run, and a finished recipe needs none of it (its models ship as model files).
"""

from __future__ import annotations

import dataclasses
import io
import json
from collections.abc import Callable, Collection, Mapping
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from fastnst import checkpoints, images
from fastnst.errors import FastnstError

SIDE_FILES = ("config.json", "measured.json", "metrics.jsonl")
MOMENTS = ("mu", "nu")


@dataclasses.dataclass(frozen=True)
class Limits:
    """What the carried files may take: a run's output comes back as at most 8 files of 16 MiB,
    64 MiB in all; 2 files and 8 MiB stay for the job's report, cards and logs."""
    files: int = 6
    file_bytes: int = 16 * 2**20
    total_bytes: int = 56 * 2**20


def _flatten(tree, prefix: str, arrays: dict, bf16: bool = False, params_bf16: bool = False):
    """The tree with each array replaced by its key in `arrays` (moments, and with `params_bf16`
    the parameters, stored as bf16 bits)."""
    if isinstance(tree, dict):
        return {k: _flatten(v, f"{prefix}/{k}", arrays,
                            bf16 or k in MOMENTS or (params_bf16 and k == "params"), params_bf16)
                for k, v in tree.items()}
    if isinstance(tree, list | tuple):
        return [_flatten(v, f"{prefix}/{i}", arrays, bf16, params_bf16) for i, v in enumerate(tree)]
    if tree is None:
        return None
    x = np.asarray(tree)
    if bf16 and x.dtype == np.float32:
        import ml_dtypes

        arrays[prefix] = x.astype(ml_dtypes.bfloat16).view(np.uint16)
        return {"@bf16": prefix}
    arrays[prefix] = x
    return {"@": prefix}


def _unflatten(skeleton, arrays):
    if isinstance(skeleton, dict) and ("@" in skeleton or "@bf16" in skeleton):
        if "@" in skeleton:
            return arrays[skeleton["@"]]
        import ml_dtypes

        return arrays[skeleton["@bf16"]].view(ml_dtypes.bfloat16).astype(np.float32)
    if isinstance(skeleton, dict):
        return {k: _unflatten(v, arrays) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [_unflatten(v, arrays) for v in skeleton]
    return skeleton


def compact(workdir: Path, name: str, params_bf16: bool = False) -> dict[str, np.ndarray] | None:
    """One unit's newest checkpoint and side files as named arrays (None: no checkpoint yet)."""
    step = checkpoints.last_complete_step(workdir)
    if step is None:
        return None
    raw = ocp.StandardCheckpointer().restore((workdir / "checkpoints" / str(step) / "default").absolute())
    arrays: dict[str, np.ndarray] = {}
    skeleton = _flatten(raw, f"{name}/state", arrays, params_bf16=params_bf16)
    side = {f: (workdir / f).read_text() for f in SIDE_FILES if (workdir / f).is_file()}
    meta = {"name": name, "step": step, "skeleton": skeleton, "side": side}
    arrays[f"{name}/meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    return arrays


def workdirs(runs: Path) -> dict[str, Path]:
    """{unit: workdir} of every folder under `runs` (the job's `OUT/runs`)."""
    return {p.name: p for p in sorted(Path(runs).iterdir()) if p.is_dir()} if Path(runs).is_dir() else {}


def pack(units_: Mapping[str, Path], dst: Path, limits: Limits = Limits(),
         finished: Collection[str] = ()) -> tuple[list[Path], list[str]]:
    """Every unit of `units_` ({name: workdir}) with a checkpoint, packed into `dst` (module
    docstring). If that leaves a unit out: again without the `finished` units (those that reached
    their recipe: their model files are all a later run needs), then with the parameters in bf16
    as well (a one-off rounding of 2^-9 of each weight, about a tenth of one Adam step at lr 1e-3).
    Returns (files written, units left out with why)."""
    rest = {n: p for n, p in units_.items() if n not in finished}
    for units, params_bf16 in ((units_, False), (rest, False), (rest, True)):
        files, left = _pack(units, Path(dst), limits, params_bf16)
        if not left:
            break
    return files, left


def _pack(units_: Mapping[str, Path], dst: Path, limits: Limits, params_bf16: bool):
    for old in dst.glob("carry_*.npz"):  # (a second try, or an earlier run's files: replaced)
        old.unlink()
    units = {n: a for n, p in units_.items() for a in [compact(Path(p), n, params_bf16)] if a is not None}
    sizes = {n: sum(x.nbytes for x in a.values()) for n, a in units.items()}
    bins: list[list[str]] = []
    used: list[int] = []
    left = []
    for n in sorted(units, key=lambda n: -sizes[n]):
        i = next((i for i, u in enumerate(used) if u + sizes[n] <= limits.file_bytes), None)
        if sizes[n] > limits.file_bytes:
            left.append(f"{n} ({sizes[n] / 2**20:.1f} MiB: more than one file may hold)")
        elif sum(used) + sizes[n] > limits.total_bytes or (i is None and len(bins) == limits.files):
            left.append(f"{n} ({sizes[n] / 2**20:.1f} MiB: over the {limits.total_bytes / 2**20:.0f} MiB "
                        f"or {limits.files} files in all)")
        elif i is None:
            bins.append([n])
            used.append(sizes[n])
        else:
            bins[i].append(n)
            used[i] += sizes[n]
    files = []
    for k, names in enumerate(bins):
        buf = io.BytesIO()
        np.savez(buf, **{key: x for n in names for key, x in units[n].items()})
        files.append(images.atomic_write_bytes(Path(dst) / f"carry_{k:02d}.npz", buf.getvalue()))
    return files, left


def unpack(src: Path, runs: Path, only: Collection[str] | None = None) -> dict[str, int]:
    """Writes each carried unit of `src` (those in `only`, if given) back as `runs/<unit>` with one
    checkpoint at its step; a workdir already at that step or later is left as it is. Returns
    {unit: carried step}."""
    out = {}
    for name, unit in read(src).items():
        if only is not None and name not in only:
            continue
        workdir, step = Path(runs) / name, unit["step"]
        out[name] = step
        if (checkpoints.last_complete_step(workdir) or -1) >= step:
            continue
        workdir.mkdir(parents=True, exist_ok=True)
        for file, text in unit["side"].items():
            images.atomic_write_bytes(workdir / file, text.encode())
        mngr = checkpoints.manager(workdir, 2)
        mngr.save(step, args=ocp.args.StandardSave(unit["state"]), force=True)
        mngr.wait_until_finished()
        mngr.close()
    return out


def read(src: Path) -> dict[str, dict]:
    """{unit: {'step', 'state' (the checkpoint's tree, moments in float32), 'side' (file texts)}}
    of every carried unit in `src`."""
    files = sorted(Path(src).glob("carry_*.npz"))
    if not files:
        raise FastnstError(f"{src}: no carried state (carry_*.npz) there")
    out = {}
    for f in files:
        try:
            z = np.load(f, allow_pickle=False)
            arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise FastnstError(f"{f}: not a carried-state file ({e})") from None
        for key in [k for k in arrays if k.endswith("/meta")]:
            meta = json.loads(arrays[key].tobytes())
            out[meta["name"]] = {"step": int(meta["step"]), "side": meta["side"],
                                 "state": _unflatten(meta["skeleton"], arrays)}
    return out


def export_models(src: Path, dst: Path) -> dict[str, Path]:
    """The model file of every carried one-network unit (`dst/<unit>.msgpack`), rebuilt from its
    parameters and recorded config: a run whose output limit leaves room for the carried state but
    not for the model files as well brings back only the former."""
    from fastnst import modelfile

    out = {}
    for name, unit in read(src).items():
        record = json.loads(unit["side"].get("config.json", "{}"))
        if not record.get("model") or record.get("style_images"):
            continue  # (several networks in one unit: their files come from a resumed run)
        state = unit["state"]
        variables = {"params": state["params"], **({"batch_stats": state["batch_stats"]}
                                                   if state.get("batch_stats") else {})}
        meta = {"steps": unit["step"], "planned_steps": record["train"]["steps"],
                "style_image": record.get("style_image", ""), "carried": True}
        out[name] = modelfile.save_model(Path(dst) / f"{name}{modelfile.SUFFIX}", record["model"], variables,
                                         meta=meta)
    return out


def carry_in(src: str | Path | None, runs: Path, names: Collection[str],
             log: Callable[[str], None]) -> dict[str, int]:
    """`unpack` for the job's units `names` (nothing when `src` is None), saying what came in."""
    if src is None:
        return {}
    got = unpack(Path(src), runs, only=names)
    log("carried in: " + (", ".join(f"{n} at step {k}" for n, k in got.items()) or "nothing for these units"))
    return got


def carry_out(units: Mapping[str, Path], dst: Path, log: Callable[[str], None],
              recipe_steps: Mapping[str, int] | None = None) -> list[str]:
    """`pack` for the job's units (those at their `recipe_steps` left out first where all do not
    fit); returns a note for each unit left out."""
    steps = recipe_steps or {}
    done = [n for n, p in units.items()
            if n in steps and (checkpoints.last_complete_step(Path(p)) or 0) >= steps[n]]
    files, left = pack(units, dst, finished=done)
    log(f"carried out: {len(files)} file(s) in {dst}, {sum(f.stat().st_size for f in files) / 2**20:.1f} MiB")
    return [f"{n}: not carried out (the next run starts it again)." for n in left]
