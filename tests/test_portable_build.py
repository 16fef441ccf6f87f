"""Portable builds give the reference's bits: C kernels with no SIMD path, Numba for a generic CPU.

A wheel targets plain x86-64 and picks its SIMD paths at run time; on another CPU or
compiler the C kernels are built with none (FD_HAVE_AVX2_PATH is 0), and Numba compiles
for whatever CPU it is told. Both are built here that way, with no SIMD flag, and run
against the reference. They compile (each about half a minute of CPU), so they are
marked ``build`` for a CI step of their own: ``python -m pytest -m build``.
"""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import fastdrop
from tests.package_copy import build_copy, run_in_copy
from tests.simd.library import MODES

pytestmark = pytest.mark.build

# The bits of every dtype through the public API, the dtypes' kernels compiled anew:
# forward (stored mask), in place, both backwards, and a block of a larger array.
BIT_CHECK = textwrap.dedent("""
    import numpy as np
    from fastdrop import reference

    def same(actual, expected, context):
        assert np.array_equal(actual.view(np.uint8), expected.view(np.uint8)), context

    fastdrop.set_num_threads(2)
    rng = np.random.default_rng(3)
    for dtype in ["float64", "float32", "float16", "bfloat16"]:
        wide = np.float32 if dtype == "bfloat16" else dtype
        x = (rng.standard_normal(2**16 + 5) * 3).astype(wide)
        x[2::97], x[3::101] = np.inf, np.nan
        extra = {}
        if dtype == "bfloat16":  # uint16 bit patterns, every one of them
            x = np.concatenate([reference.float32_to_bfloat16(x), np.arange(1 << 16, dtype="u2")])
            extra = {"dtype": "bfloat16"}
        for p in (0.1, 0.5):
            for offset in (0, 37):
                context = (dtype, p, offset)
                keys = dict(seed=9, stream=4, offset=offset, **extra)
                y, mask = fastdrop.dropout(x, p, backend=BACKEND, **keys)
                expected, expected_mask = reference.dropout(x, p, **keys)
                same(y, expected, context)
                assert np.array_equal(mask.words, expected_mask.words), context
                inplace = x.copy()
                fastdrop.dropout(inplace, p, inplace=True, backend=BACKEND, **keys)
                same(inplace, expected, context)
                back = fastdrop.dropout_backward(x, mask, backend=BACKEND, **extra)
                same(back, reference.dropout_backward(x, expected_mask, **extra), context)
                back = fastdrop.dropout_backward_recompute(x, p, backend=BACKEND, **keys)
                same(back, reference.dropout_backward_recompute(x, p, **keys), context)
        block = x[: 40 * 70].reshape(40, 70)[5:35, 10:60]
        keys = dict(seed=9, stream=4, origin=(5, 10), global_shape=(60, 90), **extra)
        y, _ = fastdrop.dropout(block, 0.1, backend=BACKEND, **keys)
        same(y, reference.dropout(block, 0.1, **keys)[0], (dtype, "block"))
""")


@pytest.mark.skipif("cython" not in fastdrop.available_backends(),
                    reason="the Cython extension was not built (no compiler here)")
def test_c_kernels_built_without_simd_give_the_reference_bits(tmp_path):
    """The Cython backend built with no SIMD flag and no SIMD path (as on another CPU)."""
    copy = tmp_path / "src"
    environment = build_copy(copy, CFLAGS=" ".join(MODES["portable"]))
    objdump = shutil.which("objdump")
    if objdump:  # not one AVX instruction in the kernels
        library = next((copy / "fastdrop" / "kernels" / "cython").glob("kernels*.so"))
        code = subprocess.run([objdump, "-d", str(library)], capture_output=True, text=True,
                              check=True).stdout
        assert "ymm" not in code and "zmm" not in code
    run_in_copy(copy, environment, textwrap.dedent("""
        from fastdrop.kernels.cython import kernels
        assert kernels.set_simd(3) == kernels.simd_enabled() == 0  # no SIMD path to take
        BACKEND = "cython"
    """) + BIT_CHECK + "print('ok')\n")


def test_numba_for_a_generic_cpu_gives_the_reference_bits():
    """Numba compiling for NUMBA_CPU_NAME=generic (no cache: every kernel compiled anew)."""
    pytest.importorskip("numba")
    package_root = os.path.dirname(os.path.dirname(fastdrop.__file__))  # this run's fastdrop
    environment = dict(os.environ, NUMBA_CPU_NAME="generic", FASTDROP_NUMBA_CACHE="0",
                       PYTHONPATH=os.pathsep.join([package_root, os.environ.get("PYTHONPATH", "")]))
    environment.pop("NUMBA_CPU_FEATURES", None)
    script = textwrap.dedent("""
        import numba
        import fastdrop
        assert numba.config.CPU_NAME == "generic", numba.config.CPU_NAME
        BACKEND = "numba"
    """) + BIT_CHECK + textwrap.dedent("""
        from fastdrop.kernels.numba.dropout import stream_range
        code = "".join(stream_range.inspect_asm().values())
        assert "xmm" in code and "ymm" not in code and "zmm" not in code  # SSE2 alone
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=600, env=environment)
    assert result.stdout.strip().endswith("ok"), result.stdout[-2000:] + result.stderr[-3000:]
