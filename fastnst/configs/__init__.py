"""The training configs, shipped in the package: `style`, `multistyle`, `sr_x4`, `sr_x8`.

`fastnst train --config=NAME[:ARGS]` picks one by name (`--config=style:runlocal`); a path
(`--config=configs/style.py:runlocal`, or a config file of your own) works too. From a clone,
`configs/` is this folder.
"""

from __future__ import annotations

from pathlib import Path

NAMES = ("style", "multistyle", "sr_x4", "sr_x8")
HERE = Path(__file__).resolve().parent


def resolve(spec: str) -> str:
    """`NAME[:ARGS]` as the path of the packaged config file (with `:ARGS`); anything else (a path,
    which ml_collections loads) is returned as it is. An unknown bare name raises ValueError."""
    name, sep, args = spec.partition(":")
    if "/" in name or "\\" in name or name.endswith(".py"):
        return spec
    if name not in NAMES:
        raise ValueError(f"--config={spec}: no config {name!r}; a path to a config file or one of "
                         f"{', '.join(NAMES)}")
    return f"{HERE / name}.py{sep}{args}"


def load(spec: str):
    """The config `NAME[:ARGS]` or `PATH[:ARGS]` (as `fastnst train --config=` takes it) as an
    ml_collections.ConfigDict, e.g. `load("style:runlocal")`."""
    import importlib.util

    path, _, args = resolve(spec).partition(":")
    module_spec = importlib.util.spec_from_file_location(f"_fastnst_config_{Path(path).stem}", path)
    if module_spec is None or not Path(path).is_file():
        raise ValueError(f"{path}: no such config file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(args or None)
