"""The package's layers: imports run one way, with no cycle, and ``import fastdrop`` stays light.

The import graph is read from the source (every ``import`` in every module of
fastdrop/, at module level and inside functions, .py and .pyx), so a lazy import that
would hide a cycle counts as much as a module-level one. Layers, lowest first:

0. ``rng`` (Philox) and ``_config`` (settings) -- import nothing of fastdrop's above them;
1. ``maskstream`` -- the spec;
2. ``kernels`` -- one folder per backend; knows nothing of the public API;
3. the public API (``_validate``, ``streams``, ``_calls``, ``_layout``, ``_api``,
   ``reference``, ``generator``, ...) and the embedding faces (``fastdrop.numba``);
4. what is built on the API: ``nn``, ``bench`` (what ``fastdrop bench`` runs; the targets and
   the other benchmarks live in the repository's benchmarks/), ``cli``, ``examples`` and the
   integrations.
"""
import ast
import os
import subprocess
import sys
from pathlib import Path

import fastdrop

PACKAGE = Path(fastdrop.__file__).resolve().parent
LAYERS = [  # (layer, module prefixes); the longest matching prefix decides
    (0, ("fastdrop.rng", "fastdrop._config")),
    (1, ("fastdrop.maskstream",)),
    (2, ("fastdrop.kernels",)),
    (3, ("fastdrop",)),
    (4, ("fastdrop.nn", "fastdrop.bench", "fastdrop.cli", "fastdrop.examples", "fastdrop.torch",
         "fastdrop.dask", "fastdrop.__main__")),
]
HEAVY = ("numba", "llvmlite", "torch", "dask", "distributed", "ml_dtypes", "scipy", "matplotlib",
         "sklearn", "zarr")


def module_name(path):
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules():
    """fastdrop's modules: name -> source path (.py, and .pyx for the compiled ones)."""
    found = {}
    for pattern in ("*.py", "*.pyx"):
        for path in PACKAGE.rglob(pattern):
            if "__pycache__" not in path.parts:
                found[module_name(path)] = path
    return found


def python_imports(path):
    """The import statements of a module (for .pyx, its Python ``import``/``from`` lines)."""
    source = path.read_text()
    if path.suffix == ".pyx":
        source = "\n".join(line for line in source.splitlines()
                           if line.startswith(("import ", "from ")) and " cimport " not in line)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node


def import_graph():
    """name -> the fastdrop modules it imports (a ``from . import x`` of a submodule is x)."""
    known = modules()
    graph = {}
    for name, path in known.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in python_imports(path):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
            targets.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
                           for alias in node.names)
        graph[name] = {target for target in targets if target in known and target != name}
    return graph


def layer(name):
    matches = [(len(prefix), number) for number, prefixes in LAYERS for prefix in prefixes
               if name == prefix or name.startswith(prefix + ".")]
    return max(matches)[1]


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_imports_only_run_down_the_layers():
    upward = [(name, target) for name, targets in import_graph().items() for target in targets
              if layer(target) > layer(name)]
    assert upward == []


def test_upper_layers_reach_private_modules_through_internal_only():
    """nn, cli, bench and the integrations use public names, or fastdrop._internal."""
    graph = import_graph()
    private = [(name, target) for name, targets in graph.items() if layer(name) == 4
               for target in targets if layer(target) < 4 and target != "fastdrop._internal"
               and any(part.startswith("_") for part in target.split("."))]
    assert private == [] and "fastdrop._internal" in graph["fastdrop.dask"]


def test_the_graph_sees_the_known_edges():
    """The reader finds relative, absolute, lazy and .pyx imports.

    So an empty result means something.
    """
    graph = import_graph()
    assert "fastdrop.streams" in graph["fastdrop._calls"]  # from . import _layout, streams
    assert "fastdrop.kernels.numba.words" in graph["fastdrop.kernels.numba.dropout"]
    assert "fastdrop.maskstream.spec" in graph["fastdrop._fastpath"]  # a .pyx
    assert "fastdrop.kernels.cython.kernels" in graph["fastdrop._sysinfo"]  # inside a function
    assert "fastdrop._api" in graph["fastdrop.generator"]


def test_spec_and_kernels_know_nothing_of_the_api():
    graph = import_graph()
    api = {name for name in graph if layer(name) >= 3}
    for name, targets in graph.items():
        if layer(name) <= 2:
            assert not targets & api, (name, targets & api)
    spec = [name for name in graph if name.startswith("fastdrop.maskstream")]
    assert spec and all(not any(target.startswith("fastdrop.kernels") for target in graph[name])
                        for name in spec)


def test_import_fastdrop_imports_numpy_only():
    code = ("import sys, fastdrop; "
            f"print([m for m in {HEAVY!r} if m in sys.modules]); "
            "print(sorted(m for m in sys.modules if m.startswith('fastdrop.kernels.numba')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True,
                            env=dict(os.environ, PYTHONPATH=str(PACKAGE.parent)))
    assert result.stdout.split("\n")[:2] == ["[]", "[]"], result.stdout


def test_the_package_imports_nothing_of_the_repositorys_benchmarks():
    """benchmarks/ (the targets, the PyTorch and Dask benchmarks) stays out of the wheel."""
    benchmarks = {path.stem for path in (PACKAGE.parent / "benchmarks").glob("*.py")}
    assert "targets" in benchmarks  # the folder is where this test looks for it
    assert not any(name.rpartition(".")[2] == "targets" for name in modules())
    for name, path in modules().items():
        for node in python_imports(path):
            imported = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""] if not node.level else [])
            assert not {module.partition(".")[0] for module in imported} & (
                benchmarks | {"benchmarks"}), (name, imported)
