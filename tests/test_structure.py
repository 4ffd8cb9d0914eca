"""The package's shape, as the architecture issue set it: the import graph of `fastnst` has no
cycle (each data hop goes one way), and no module or function grows past its limit without a
reason written beside it."""

import ast
import os
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "fastnst"
MODULE_LINES = 350
FUNCTION_LINES = 60


def _imports(path: Path) -> set[str]:
    """The fastnst modules `path` imports, at module level or inside functions."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fastnst"):
            if node.module == "fastnst":
                out.update(a.name for a in node.names)
            else:
                out.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[1] for a in node.names if a.name.startswith("fastnst."))
    return out


def test_the_import_graph_has_no_cycle():
    modules = {p.stem for p in PKG.glob("*.py")} - {"__init__"}
    graph = {m: _imports(PKG / f"{m}.py") & modules - {m} for m in modules}
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


def test_modules_and_functions_stay_small_or_say_why():
    for path in sorted(PKG.glob("*.py")):
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
