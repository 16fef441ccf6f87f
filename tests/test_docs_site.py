"""The documentation site: every page and figure it names exists, and it builds with --strict.

The strict build needs the docs extra (``pip install -e ".[docs]"``) and is skipped
without it (CI installs it and runs ``mkdocs build --strict`` itself); the file checks
need nothing and always run.
"""
import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastdrop
import fastdrop.nn

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
EXAMPLES = REPO / "examples"
NAV_ENTRY = re.compile(r"^\s*- (?:[^:]+: )?(\S+\.md)\s*$")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)")
SNIPPET = re.compile(r'--8<-- "([^"]+)"')


def nav_pages():
    """The .md files listed under ``nav:`` in mkdocs.yml (read as text: no YAML needed)."""
    pages, in_nav = [], False
    for line in (REPO / "mkdocs.yml").read_text().splitlines():
        if re.match(r"^\S", line):  # a top-level key starts or ends the nav
            in_nav = line.startswith("nav:")
            continue
        match = NAV_ENTRY.match(line)
        if in_nav and match:
            pages.append(match.group(1))
    return pages


def markdown_pages():
    return sorted(DOCS.rglob("*.md"))


def test_nav_lists_existing_pages_and_every_page():
    pages = nav_pages()
    assert len(pages) >= 14
    assert len(pages) == len(set(pages))
    missing = [page for page in pages if not (DOCS / page).is_file()]
    assert missing == []
    outside_nav = [str(path.relative_to(DOCS)) for path in markdown_pages()
                   if str(path.relative_to(DOCS)) not in pages]
    assert outside_nav == []
    for page in ("index.md", "api.md", "mask-stream.md", "embedding.md", "benchmarks.md",
                 "nn.md", "building.md", "changelog.md"):
        assert page in pages


def test_every_image_referenced_from_the_docs_exists():
    referenced = 0
    for path in markdown_pages():
        for target in IMAGE.findall(path.read_text()):
            assert not target.startswith(("http:", "https:")), f"{path.name}: remote image {target}"
            where = path.relative_to(DOCS)
            assert (path.parent / target).is_file(), f"{where}: {target} is missing"
            referenced += 1
    assert referenced >= 9


def test_every_example_has_a_concept_page_with_its_script_and_figure():
    included, figures = set(), set()
    for path in markdown_pages():
        text = path.read_text()
        included.update(SNIPPET.findall(text))
        figures.update(os.path.normpath(path.parent / target) for target in IMAGE.findall(text))
    for snippet in included:
        assert (REPO / snippet).is_file(), f"snippet {snippet} is missing"
    for script in sorted(EXAMPLES.glob("*.py")):
        if script.stem in ("make_plots", "example_command"):  # tools, not concepts
            continue
        assert f"examples/{script.name}" in included, f"no page quotes examples/{script.name}"
        figure = os.path.normpath(DOCS / "img" / f"{script.stem}.png")
        assert figure in figures, f"no page shows docs/img/{script.stem}.png"


def module_all(path):
    """A module's ``__all__``, read from its source (fastdrop.dask imports dask, maybe absent)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(target, "id", None) == "__all__"
                                                for target in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{path} has no __all__")


def test_api_page_documents_every_public_name():
    text = (DOCS / "api.md").read_text()
    documented = set(re.findall(r"^::: (\S+)\s*$", text, flags=re.MULTILINE))
    expected = {f"fastdrop.{name}" for name in fastdrop.__all__}
    expected |= {f"fastdrop.nn.{name}" for name in fastdrop.nn.__all__}
    dask_names = module_all(REPO / "fastdrop" / "dask.py")
    assert "dropout" in dask_names
    expected |= {f"fastdrop.dask.{name}" for name in dask_names}
    assert sorted(expected - documented) == []
    assert sorted(documented - expected) == []


def test_torch_page_documents_every_public_name_of_fastdrop_torch():
    text = (DOCS / "torch.md").read_text()
    documented = {name.rsplit(".", 1)[1]
                  for name in re.findall(r"^::: (fastdrop\.torch\.\S+)\s*$", text, flags=re.M)}
    assert sorted(set(module_all(REPO / "fastdrop" / "torch" / "__init__.py")) - documented) == []


# what the user pages may not carry: clock times of runs and commit hashes (the
# development notes say why, in the present tense; history lives in commit messages)
RUN_HISTORY = re.compile(r"[0-2][0-9]:[0-5][0-9] UTC|git [0-9a-f]{7}")


def test_user_pages_carry_no_clock_times_or_commit_hashes():
    development = DOCS / "development"
    pages = [REPO / "README.md"] + [path for path in markdown_pages()
                                    if development not in path.parents]
    found = [f"{path.relative_to(REPO)}:{number}: {line.strip()}" for path in pages
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if RUN_HISTORY.search(line)]
    assert found == []


# "pip install fastdrop" or "fastdrop[extra]" would install an unrelated PyPI project:
# the distribution is fastdrop-cpu
PYPI_NAME = re.compile(r"pip install\s+['\"]?fastdrop(?![-\w])|['\"]fastdrop\[")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".yml", ".yaml", ".cfg", ".pyx", ".pxd", ".h",
                 ".in", ".sh", ""}
SKIPPED_FOLDERS = {".git", "build", "dist", "site", ".venv", "__pycache__", ".pytest_cache",
                   ".benchmarks", ".hypothesis"}


def test_no_file_tells_a_user_to_install_the_pypi_project_named_fastdrop():
    found = []
    for path in REPO.rglob("*"):
        parts = set(path.relative_to(REPO).parts)
        if (path.is_file() and path.suffix in TEXT_SUFFIXES and not parts & SKIPPED_FOLDERS
                and not any(part.endswith(".egg-info") for part in parts)
                and path != Path(__file__)):  # this file names the pattern it looks for
            text = path.read_text(errors="replace")
            found += [f"{path.relative_to(REPO)}: {match.group(0)}"
                      for match in PYPI_NAME.finditer(text)]
    assert found == []
    assert PYPI_NAME.search('pip install "fastdrop[torch]"')  # the pattern can fail
    assert not PYPI_NAME.search('pip install "fastdrop-cpu[torch]"')


DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing_docs_packages():
    missing = []
    for name in DOCS_PACKAGES:
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(name)
    return missing


@pytest.mark.skipif(bool(_missing_docs_packages()),
                    reason=f"docs extra not installed (pip install -e \".[docs]\"): missing "
                           f"{', '.join(_missing_docs_packages())}")
def test_mkdocs_build_strict(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO, check=False, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, NO_MKDOCS_2_WARNING="1"))
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert (tmp_path / "site" / "api" / "index.html").is_file()
    built_api = (tmp_path / "site" / "api" / "index.html").read_text()
    assert 'id="fastdrop.dropout"' in built_api  # mkdocstrings rendered the docstrings
    rendered = re.findall(r'id="(fastdrop\.[\w.]+)"', built_api)
    assert [name for name in rendered if re.search(r"\._[^_]|\.__all__$", name)] == []
    # the whole signature, not one clipped line: every parameter of dropout is in it
    signature = built_api.split('id="fastdrop.dropout"', 1)[1].split("</code>", 1)[0]
    for parameter in ("noise_shape", "global_shape", "backend"):
        assert parameter in signature
    # the pages quote the scripts themselves (pymdownx.snippets), not copies
    for page, function in (("adaptive-l2", "sgd_with_input_dropout"),
                           ("ensemble-view", "predicted_logit_error")):
        built = (tmp_path / "site" / "concepts" / page / "index.html").read_text()
        assert f'<span class="nf">{function}</span>' in built
