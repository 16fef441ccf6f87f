"""Embedding fastdrop in users' own compiled code: Numba, Cython and C, against the reference.

The tests that compile an extension are marked ``build`` (minutes of CPU): the default
run leaves them out, ``python -m pytest -m build`` runs them (CI does, in a step of its own).
"""
import functools
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from tests.package_copy import build_copy, run_in_copy
from tests.util import for_each

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = Path(fastdrop.__file__).parent / "examples"
# Subprocesses import the same fastdrop as this test run (the installed package in CI).
PACKAGE_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(Path(fastdrop.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
needs_cython_backend = pytest.mark.skipif(
    "cython" not in fastdrop.available_backends(), reason="the Cython extension was not built")


def test_numba_example_matches_reference():
    pytest.importorskip("numba")
    from fastdrop.examples.numba_embedding import main

    relu_input, result, words = main()
    expected, mask = reference.dropout(relu_input, 0.5, seed=1234, stream=7)
    assert np.array_equal(result, expected)
    assert np.array_equal(words, mask.words)


@functools.cache
def users_parallel_loop():
    """A user's ``@njit(parallel=True)`` function calling every fastdrop.numba range function.

    Made once per test session, so it compiles once.
    """
    numba = pytest.importorskip("numba")
    import fastdrop.numba as fdn

    @numba.njit(parallel=True)
    def run_all(x, grad, p, seed, stream, offset):
        n = x.size
        total = fdn.words_for(n)
        words = np.empty(total, np.uint64)
        mask_only = np.empty(total, np.uint64)
        y = np.empty_like(x)
        back = np.empty_like(grad)
        back_recomputed = np.empty_like(grad)
        for chunk in numba.prange(7):
            first = chunk * ((total + 6) // 7)
            stop = min(first + (total + 6) // 7, total)
            fdn.mask_words_range(mask_only, n, p, seed, stream, offset, first, stop)
            fdn.dropout_range(x, y, words, p, seed, stream, offset, first, stop)
            fdn.apply_mask_range(grad, back, words, p, first, stop)
            fdn.dropout_backward_recompute_range(grad, back_recomputed, p, seed, stream, offset,
                                                 first, stop)
        return words, mask_only, y, back, back_recomputed

    return run_all


def test_numba_module_functions_inside_a_users_parallel_loop(subtests):
    # one dtype: the module functions are generic (each dtype's kernel is tested against
    # the reference elsewhere); a user's loop costs seconds of compilation per dtype
    for_each(subtests, check_users_parallel_loop, np.float32, offset=(0, 45))


def check_users_parallel_loop(dtype, offset):
    run_all = users_parallel_loop()
    import fastdrop.numba as fdn

    rng = np.random.default_rng(1)
    x = rng.standard_normal(10_001).astype(dtype)
    grad = rng.standard_normal(10_001).astype(dtype)
    for p in [0.0, 0.3, 0.5, 1.0]:
        words, mask_only, y, back, back_recomputed = run_all(x, grad, p, 5, 6, offset)
        expected, mask = reference.dropout(x, p, seed=5, stream=6, offset=offset)
        assert np.array_equal(words, mask.words) and np.array_equal(mask_only, mask.words)
        assert np.array_equal(y.view(np.uint8), expected.view(np.uint8))
        expected_back = reference.dropout_backward(grad, mask)
        assert np.array_equal(back.view(np.uint8), expected_back.view(np.uint8))
        assert np.array_equal(back_recomputed.view(np.uint8), expected_back.view(np.uint8))
        # the single-word function gives the global words directly
        if offset == 0 and 0 < p < 1:
            threshold, _ = fdn.stream_parameters(p)
            assert int(fdn.mask_word(np.uint64(5), np.uint64(6), np.uint64(3),
                                    np.uint64(threshold))) == \
                int(mask.words[3])


def test_numba_dropout_range_refuses_a_target_of_another_size():
    """The fused kernel indexes target like source: a short target must raise, not overrun."""
    pytest.importorskip("numba")
    import fastdrop.numba as fdn

    x = np.ones(200, np.float32)
    for target in (np.empty(0, np.float32), np.empty(199, np.float32)):
        with pytest.raises(ValueError, match="size of source"):
            fdn.dropout_range(x, target, np.empty(4, np.uint64), 0.5, 1, 2, 0, 0, 4)


def _build_extension(tmp_path, pyx_path, module):
    """Compile one .pyx against the installed fastdrop, as a user's project would."""
    shutil.copy(pyx_path, tmp_path / f"{module}.pyx")
    (tmp_path / "setup.py").write_text(textwrap.dedent(f"""
        import numpy, fastdrop
        from setuptools import setup, Extension
        from Cython.Build import cythonize
        extension = Extension("{module}", ["{module}.pyx"],
                              include_dirs=[fastdrop.get_include(), numpy.get_include()],
                              extra_compile_args=["-O2", "-fopenmp"], extra_link_args=["-fopenmp"])
        setup(ext_modules=cythonize([extension], language_level=3),
              script_args=["build_ext", "--inplace"])
    """))
    result = subprocess.run([sys.executable, "setup.py"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300, env=PACKAGE_ENV)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.build
def test_cython_example_compiles_against_the_package_and_matches_reference(tmp_path):
    _build_extension(tmp_path, EXAMPLES / "cython_embedding.pyx", "cython_embedding")
    script = textwrap.dedent("""
        import numpy as np, fastdrop, cython_embedding
        x = np.random.default_rng(2).standard_normal((300, 77)).astype(np.float32)
        for p in (0.0, 0.25, 0.5, 0.9, 1.0):
            y = x.copy()
            words = np.empty(-(-y.size // 64), np.uint64)
            cython_embedding.dropout_matrix(y, p, 11, 12, words)
            expected, mask = fastdrop.reference.dropout(x, p, seed=11, stream=12)
            assert np.array_equal(y.view(np.uint32), expected.view(np.uint32)), p
            assert np.array_equal(words, mask.words), p
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120, env=PACKAGE_ENV)
    assert result.stdout.strip() == "ok", result.stderr[-3000:]


def test_c_example_compiles_with_get_include_and_matches_reference(tmp_path):
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    executable = tmp_path / "c_embedding"
    subprocess.run([compiler, "-O2", "-std=c99", "-Wall", "-Werror", "-I", fastdrop.get_include(),
                    str(EXAMPLES / "c_embedding.c"), "-o", str(executable), "-lm"], check=True)
    lines = subprocess.run([str(executable)], capture_output=True, text=True,
                           check=True).stdout.split()
    words = reference.bernoulli_mask(200, 0.3, seed=42, stream=7, offset=100)
    assert [int(word) for word in lines[:4]] == words.tolist()
    x = np.arange(200, dtype=np.float32) + np.float32(0.5)
    expected, _ = reference.dropout(x, 0.3, seed=42, stream=7, offset=100)
    assert np.array_equal(np.array(lines[4:], dtype=np.float32), expected[:8])


def test_get_include_holds_the_headers():
    folder = Path(fastdrop.get_include())
    for header in ["philox.h", "mask_stream.h", "half.h", "dropout.h", "bf16_simd.h", "runs.h",
                   "openmp_shim.h"]:
        assert (folder / "fastdrop" / header).is_file()


@needs_cython_backend
def test_cython_backend_does_not_import_numba():
    script = ("import sys, numpy as np, fastdrop; "
              "y, m = fastdrop.dropout(np.ones(1000, np.float32), 0.5, seed=1); "
              "assert fastdrop._backends.resolve_backend('auto') == 'cython'; "
              "assert 'numba' not in sys.modules, 'numba was imported'; print('ok')")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=PACKAGE_ENV)
    assert result.stdout.strip() == "ok", result.stderr


def test_required_openmp_was_built_in():
    """Where the build was told OpenMP is required (CI), the backend must have it."""
    if os.environ.get("FASTDROP_REQUIRE_OPENMP", "") in ("", "0"):
        pytest.skip("FASTDROP_REQUIRE_OPENMP not set")
    from fastdrop.kernels.cython import kernels as cython_kernels

    assert cython_kernels.openmp_enabled()


@pytest.mark.build
@needs_cython_backend
def test_serial_build_without_openmp_gives_the_same_masks(tmp_path):
    """Build the Cython backend with OpenMP disabled and compare its output with the reference."""
    copy = tmp_path / "src"
    environment = build_copy(copy, FASTDROP_DISABLE_OPENMP="1", FASTDROP_REQUIRE_OPENMP="0")
    run_in_copy(copy, environment, textwrap.dedent("""
        import numpy as np
        from fastdrop.kernels.cython import kernels as cython_kernels
        assert not cython_kernels.openmp_enabled()
        fastdrop.set_num_threads(2)
        x = np.random.default_rng(3).standard_normal(2**16 + 5).astype(np.float32)
        for p in (0.1, 0.5, 1 / 3):
            for offset in (0, 37):
                y, mask = fastdrop.dropout(x, p, seed=9, stream=4, offset=offset, backend="cython")
                expected, expected_mask = fastdrop.reference.dropout(x, p, seed=9, stream=4,
                                                                     offset=offset)
                assert (np.array_equal(y, expected)
                        and np.array_equal(mask.words, expected_mask.words))
        print("ok")
    """))


def test_docs_show_the_tested_examples_verbatim():
    """docs/embedding.md quotes each example file exactly (so the docs cannot drift)."""
    import re

    text = (REPO / "docs" / "embedding.md").read_text()
    quoted = re.findall(r"<!-- example: (\S+) -->\n```\w+\n(.*?)\n```", text, flags=re.S)
    assert {path for path, _ in quoted} == {
        "fastdrop/examples/numba_embedding.py", "fastdrop/examples/cython_embedding.pyx",
        "fastdrop/examples/c_embedding.c"}
    for path, body in quoted:
        assert body == (REPO / path).read_text().rstrip(), path
