"""The package's shape, as the architecture issue set it: the import graph of `fastnst` has no
cycle (each data hop goes one way), and no module or function grows past its limit without a
reason written beside it."""

import ast
import os
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "fastnst"
MODULE_LINES = 350
FUNCTION_LINES = 60


def _name(path: Path) -> str:
    """A module's dotted name inside the package (`cli.train`; a package is its folder's name)."""
    parts = path.relative_to(PKG).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_name(p): p for p in PKG.rglob("*.py") if p != PKG / "__init__.py"}


def _imports(path: Path) -> set[str]:
    """The fastnst modules `path` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fastnst"):
            base = node.module.removeprefix("fastnst").removeprefix(".")
            out.update(f"{base}.{a.name}".lstrip(".") for a in node.names)  # a module or a name in one
            out.add(base)
        elif isinstance(node, ast.Import):
            out.update(a.name.removeprefix("fastnst.") for a in node.names if a.name.startswith("fastnst."))
    return {m for m in out if m in MODULES}


def test_the_import_graph_has_no_cycle():
    modules = set(MODULES)
    graph = {m: _imports(MODULES[m]) - {m} for m in modules}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(m, path):
        state[m] = 1
        for n in sorted(graph[m]):
            assert state.get(n) != 1, f"import cycle: {' -> '.join(path + [m, n])}"
            if n not in state:
                visit(n, path + [m])
        state[m] = 2

    for m in sorted(modules):
        if m not in state:
            visit(m, [])
    assert "train" not in graph["parallel"] and "step" not in graph["parallel"]  # meshes only


def _reach(graph: dict, m: str) -> set[str]:
    seen, todo = set(), [m]
    while todo:
        for n in graph[todo.pop()] - seen:
            seen.add(n)
            todo.append(n)
    return seen


def test_layers_go_one_way_and_the_package_imports_no_top_level_configs():
    """The losses know nothing of VGG-16 or image files (`perceptual` is where they meet), so a
    parameter's walk through a train step goes step -> losses and step -> vgg, never back; no module
    of the package imports the repository's top-level `configs` (only its own `fastnst.configs`)."""
    graph = {m: _imports(MODULES[m]) - {m} for m in MODULES}
    assert not _reach(graph, "losses") & {"vgg", "images", "perceptual"}, _reach(graph, "losses")
    assert not _reach(graph, "vgg") & {"losses", "perceptual"}
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text())):
            top = ([a.name for a in node.names] if isinstance(node, ast.Import)
                   else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            assert not any(t == "configs" or t.startswith("configs.") for t in top), name


def test_modules_and_functions_stay_small_or_say_why():
    scripts = [p for p in sorted((PKG.parent / "bin").iterdir()) if p.is_file()]  # (no .py suffix)
    for path in sorted(PKG.rglob("*.py")) + scripts:
        lines = path.read_text().splitlines()
        assert len(lines) <= MODULE_LINES, f"{path.name}: {len(lines)} lines"
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = node.end_lineno - node.lineno + 1
                first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
                reason = lines[first - 2].lstrip().startswith("# (Long:") or any(
                    ln.lstrip().startswith("# (Long:") for ln in lines[max(0, first - 4): first - 1])
                assert n <= FUNCTION_LINES or reason, f"{path.name}:{node.name} is {n} lines with no reason"


def test_the_shared_compilation_cache_is_locked(tmp_path):
    """A cache that several processes share (`bin/recipe --parallel`, FASTNST_TEST_CACHE) is used
    through `compcache`: JAX locks it only with a size limit set, and then leaves its lock file
    beside the entries. A subprocess turns it on as the recipe does and compiles one program."""
    import subprocess
    import sys

    code = ("import sys, jax, jax.numpy as jnp; from fastnst import compcache; "
            "compcache.use(sys.argv[1], min_compile_s=0.0); "
            "jax.jit(lambda x: jnp.sin(x) * 3)(jnp.ones(3)).block_until_ready()")
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=120,
                   env={**os.environ, "JAX_PLATFORMS": "cpu"})
    names = {p.name for p in tmp_path.iterdir()}
    assert ".lockfile" in names and any(n.endswith("-cache") for n in names), names


def test_only_programs_turn_on_the_compilation_cache():
    """Turning the cache on is process-wide and cannot be undone for programs already compiled.
    When `recipe.run` did it, an in-process test left it on in its pytest worker, and later tests
    there compiled with the cache that the suite keeps off (docs/testing.md): a worker crashed in
    CI twice, in test_train and test_tiling. So only the programs in fastnst/cli/ call it."""
    callers = sorted(name for name, path in MODULES.items()
                     if not name.startswith("cli.") and name != "compcache"
                     and "compcache.use(" in path.read_text())
    assert callers == [], callers


def test_bin_scripts_are_wrappers_and_configs_stand_apart():
    """Each program lives in fastnst/cli/ (installed as `fastnst PROGRAM`); bin/ only forwards to
    it from a clone. The configs, shipped in the package, import no library module but `paths`."""
    from fastnst.__main__ import PROGRAMS

    bins = sorted(p.name for p in (PKG.parent / "bin").iterdir())
    programs = sorted(p.stem for p in (PKG / "cli").glob("*.py") if p.stem != "__init__")
    assert bins == sorted(PROGRAMS) == programs
    for name in bins:
        code = [ln for ln in (PKG.parent / "bin" / name).read_text().splitlines() if ln.strip()]
        assert len(code) <= 8 and f'main(["{name}"' in code[-1], name
    for name, path in MODULES.items():
        if name.startswith("configs"):
            assert {m for m in _imports(path) if not m.startswith("configs")} <= {"paths"}, name


def test_import_fastnst_is_light_and_names_its_public_surface():
    """`import fastnst` starts no JAX; its names load their modules on first use, and none hides
    a submodule (`from fastnst import stylize` is still the module)."""
    import subprocess
    import sys

    code = ("import sys, fastnst; assert not [m for m in sys.modules if m.startswith(('jax', 'flax'))]; "
            "from fastnst import stylize, train; "
            "assert fastnst.stylize_image is stylize.apply; "
            "assert fastnst.train_model is train.train_and_evaluate; "
            "assert fastnst.config('sr_x8:runlocal').model.scale == 8; "
            "assert fastnst.load_model('the_scream').config['task'] == 'style'; "
            "assert fastnst.vgg.deepest(['relu1_2', 'relu4_3']) == 'relu4_3' and fastnst.losses.gram")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 0, r.stderr[-1500:]
    import fastnst

    for name, (module, attr) in fastnst._LAZY.items():
        assert attr is None or name not in MODULES, f"fastnst.{name} would hide the module {module}"
