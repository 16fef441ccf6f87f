"""Every ```python block of README.md and docs/ runs as pasted.

Each block runs alone in a fresh interpreter, in an empty folder: it may use only what
it imports and defines itself. A block that leaves files behind runs a second time in
the same folder, so that pasting it twice works too. A block that needs an optional
package (an extra) is skipped, with the extra's name, where that package is missing.
Blocks that quote a whole example script (``--8<--``) are the scripts themselves:
tests/test_examples.py runs those; and a block marked ``<!-- example: path -->`` is a
verbatim copy of a file of fastdrop/examples, which tests/test_embedding.py checks and runs.
"""
import ast
import os
import re
import subprocess
import sys
import textwrap
from importlib.util import find_spec
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# a fenced block opened by ```python at any indentation (admonitions indent theirs)
PYTHON_BLOCK = re.compile(r"^([ \t]*)```python[^\n]*\n(.*?)^\1```[ \t]*$", re.S | re.M)
EXAMPLE_COPY = "<!-- example: "  # the line before a verbatim copy of an example file
# top-level module -> the extra that installs it (pyproject.toml's optional dependencies)
EXTRAS = {"torch": "torch", "dask": "dask", "distributed": "dask", "zarr": "dask",
          "ml_dtypes": "bf16", "sklearn": "train", "matplotlib": "bench", "tqdm": "train",
          "setuptools": "test", "Cython": "test"}
SECONDS_PER_RUN = 300


def documentation_pages():
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def python_blocks(page):
    """(line number, code) of each ```python block of a page, dedented."""
    text = page.read_text()
    for match in PYTHON_BLOCK.finditer(text):
        code = textwrap.dedent(match.group(2))
        line_before = text[:match.start()].rstrip("\n").rpartition("\n")[2]
        if "--8<--" in code or line_before.lstrip().startswith(EXAMPLE_COPY):
            continue
        yield text.count("\n", 0, match.start()) + 1, code


def imported_modules(code):
    """The top-level modules a block imports, ``fastdrop.torch`` as ``torch`` and so on."""
    modules = set()
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            modules.add(parts[1] if parts[0] == "fastdrop" and len(parts) > 1 else parts[0])
    return modules


def missing_extras(code):
    """The extras a block needs whose packages are not installed, with those packages."""
    missing = {}
    for module in sorted(imported_modules(code)):
        if module in EXTRAS and find_spec(module) is None:
            missing.setdefault(EXTRAS[module], []).append(module)
    return missing


def run_block(code, folder):
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [environment.get("PYTHONPATH")])])
    environment["MPLBACKEND"] = "Agg"
    return subprocess.run([sys.executable, "-c", code], cwd=folder, env=environment,
                          capture_output=True, text=True, timeout=SECONDS_PER_RUN, check=False)


def test_the_block_finder_sees_indented_blocks_and_skips_quoted_scripts(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nprint(1)\n```\n\n??? example\n\n    ```python\n"
                    "    print(2)\n    ```\n\n```python\n--8<-- \"examples/a.py\"\n```\n"
                    "```pycon\n>>> 3\n```\n"
                    "<!-- example: fastdrop/examples/a.py -->\n```python\nprint(4)\n```\n")
    assert list(python_blocks(page)) == [(3, "print(1)\n"), (9, "print(2)\n")]
    assert imported_modules("import fastdrop.torch\nfrom dask import array\nimport numpy") \
        == {"torch", "dask", "numpy"}


def test_every_python_block_runs_as_pasted_in_an_empty_folder(subtests, tmp_path):
    blocks = [(page, line, code) for page in documentation_pages()
              for line, code in python_blocks(page)]
    assert len(blocks) >= 20
    for index, (page, line, code) in enumerate(blocks):
        where = f"{page.relative_to(REPO)}:{line}"
        with subtests.test(msg=where):
            missing = missing_extras(code)
            if missing:
                pytest.skip("; ".join(f'needs the {extra} extra (pip install ".[{extra}]"): '
                                      f"{', '.join(modules)} not installed"
                                      for extra, modules in missing.items()))
            folder = tmp_path / f"block{index}"
            folder.mkdir()
            completed = run_block(code, folder)
            assert completed.returncode == 0, f"{where}\n{code}\n{completed.stderr}"
            if any(folder.iterdir()):  # it wrote files: pasting it again must work too
                again = run_block(code, folder)
                assert again.returncode == 0, f"{where}, second run\n{code}\n{again.stderr}"


def test_the_variants_page_blocks_say_what_they_claim():
    import numpy as np

    blocks = [code for _, code in python_blocks(REPO / "docs" / "variants.md")]
    assert len(blocks) >= 3  # noise shapes, DropConnect, variational
    shared, dropconnect = {}, {}
    exec(compile(blocks[0], "docs/variants.md", "exec"), shared)  # noqa: S102
    exec(compile(blocks[1], "docs/variants.md", "exec"), dropconnect)  # noqa: S102
    assert shared["mask"].shape == (32, 64, 1, 1) and shared["mask"].nbytes == 256
    weights = np.random.default_rng(1).standard_normal((256, 784)).astype(np.float32)
    assert np.array_equal(dropconnect["W"], weights)  # dropconnect left W as the page made it
    dropped = dropconnect["W_dropped"]
    assert np.array_equal(dropped, np.where(dropped != 0, weights * np.float32(2), 0))
    assert 0.45 < np.count_nonzero(dropped) / dropped.size < 0.55  # p = 0.5 on 200k weights
