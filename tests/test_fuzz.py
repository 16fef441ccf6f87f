"""The C headers under clang, and a short run of the libFuzzer harness over them (fuzz/)."""
import shutil
import subprocess
from pathlib import Path

import pytest

import fastdrop

ROOT = Path(__file__).resolve().parent.parent
CLANG = shutil.which("clang")
needs_clang = pytest.mark.skipif(CLANG is None, reason="clang is not installed")


@needs_clang
def test_the_headers_compile_with_clang(tmp_path):
    # clang honours one target attribute of a function, GCC merges several: a SIMD
    # function with two failed to compile under clang
    source = tmp_path / "headers.c"  # the kernels called, so clang compiles them
    source.write_text("#include <fastdrop/dropout.h>\n#include <fastdrop/variants.h>\n" + "".join(
        f"void call_{suffix}(const {t} *x, {t} *y, uint64_t *w, const fd_mask_params *p)"
        f" {{ fd_dropout_range_{suffix}(x, y, w, 2, p, 0, 1); }}\n"
        for suffix, t in [("f64", "double"), ("f32", "float"), ("f16", "uint16_t"),
                          ("bf16", "fd_bfloat16")]))
    compiled = subprocess.run([CLANG, "-O2", "-ffp-contract=off", "-c", "-I",
                               fastdrop.get_include(), str(source), "-o",
                               str(tmp_path / "headers.o")], capture_output=True, text=True)
    assert compiled.returncode == 0, compiled.stderr


@pytest.mark.slow
@needs_clang
def test_the_fuzz_harness_runs_clean(tmp_path):
    binary = tmp_path / "fuzz_kernels"
    built = subprocess.run(["bash", str(ROOT / "fuzz" / "build.sh"), str(binary)],
                           capture_output=True, text=True)
    if built.returncode != 0 and "fuzzer" in built.stderr:
        pytest.skip(f"this clang has no libFuzzer: {built.stderr.strip()[-200:]}")
    assert built.returncode == 0, built.stderr
    run = subprocess.run([str(binary), "-runs=3000", "-seed=1", "-max_len=4096",
                          "-len_control=0"], capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Done 3000 runs" in run.stderr
