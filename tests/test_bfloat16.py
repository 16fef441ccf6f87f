"""bfloat16: every bit pattern through every backend, the rounding rule, both input forms.

docs/mask-stream.md, section 6: x widened to float32 (exact), times s rounded once to
bfloat16 (the product is exact in float32), rounded once to bfloat16 to nearest even;
NaN becomes the quiet NaN 0x7FC0 with its sign; dropped elements are +0.0. Inputs come
as ``ml_dtypes.bfloat16`` arrays or as uint16 bit patterns with ``dtype="bfloat16"``
(which needs no ml_dtypes). The property files cover bfloat16 too (it is in
tests/util.FLOAT_DTYPES); this file holds what is bfloat16's own.
"""
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from fastdrop.maskstream.spec import dropout_scale, round_to_bfloat16
from tests.util import ALL_BACKENDS, COMPILED_BACKENDS, bits, require

ml_dtypes = require("ml_dtypes", "bf16")
BF16 = np.dtype(ml_dtypes.bfloat16)
EVERY_PATTERN = np.tile(np.arange(1 << 16, dtype=np.uint16), 3)  # 3 x 65536, offsets differ
PS = [0.1, 1 / 3, 0.5, 0.9, 1 - 2**-20]
PACKAGE_ROOT = Path(fastdrop.__file__).resolve().parent.parent


def simd_levels(backend):
    """The vector paths of a backend to run: Cython's portable, AVX2 and AVX-512 variants."""
    if backend != "cython":
        return [None]
    from fastdrop.kernels.cython import kernels

    best = kernels.set_simd(True)
    return list(range(best + 1))


@pytest.fixture
def simd(request):
    from fastdrop.kernels.cython import kernels

    before = kernels.simd_enabled()
    yield kernels.set_simd
    kernels.set_simd(before)


@pytest.mark.parametrize("offset", [0, 37])
@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_every_bit_pattern_matches_the_reference(backend, p, offset, simd, threads):
    """In place, out of place, by recompute and from the mask, raw bits and ml_dtypes arrays."""
    expected, mask = reference.dropout(EVERY_PATTERN, p, seed=11, stream=2, offset=offset,
                                       dtype="bfloat16")
    fastdrop.set_num_threads(2)
    for level in simd_levels(backend):
        if level is not None:
            simd(level)
        y, words = fastdrop.dropout(EVERY_PATTERN, p, seed=11, stream=2, offset=offset,
                                    dtype="bfloat16", backend=backend)
        assert y.dtype == np.uint16 and np.array_equal(y, expected), (level, "out of place")
        assert np.array_equal(words.words, mask.words)
        inplace = EVERY_PATTERN.view(BF16).copy()
        result, _ = fastdrop.dropout(inplace, p, seed=11, stream=2, offset=offset, inplace=True,
                                     backend=backend)
        assert result is inplace and np.array_equal(inplace.view(np.uint16), expected), level
        recomputed = fastdrop.dropout_backward_recompute(EVERY_PATTERN.view(BF16), p, seed=11,
                                                         stream=2, offset=offset,
                                                         backend=backend)
        assert recomputed.dtype == BF16 and np.array_equal(recomputed.view(np.uint16), expected)
        stored = fastdrop.dropout_backward(EVERY_PATTERN, mask, dtype="bfloat16",
                                           backend=backend)
        assert np.array_equal(stored, expected), (level, "backward from the mask")


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_every_bit_pattern_through_alpha_and_gaussian_dropout(backend):
    x = EVERY_PATTERN.view(BF16)
    for function in (fastdrop.alpha_dropout, fastdrop.gaussian_dropout):
        y, _ = function(x, 0.3, seed=4, stream=1, backend=backend)
        twin = getattr(reference, function.__name__)(x, 0.3, seed=4, stream=1)[0]
        assert y.dtype == BF16 and np.array_equal(bits(y), bits(twin)), function.__name__


@pytest.mark.parametrize("p", PS)
def test_the_reference_rounds_as_ml_dtypes(p):
    """An oracle of its own: ml_dtypes' float32 -> bfloat16 cast of the float32 product."""
    y, mask = reference.dropout(EVERY_PATTERN, p, seed=3, dtype="bfloat16")
    keep = mask.unpack()
    scale = np.float32(round_to_bfloat16(dropout_scale(p)))
    with np.errstate(all="ignore"):
        products = EVERY_PATTERN.view(BF16).astype(np.float32) * scale
    expected = np.where(keep, products.astype(BF16).view(np.uint16), np.uint16(0))
    assert np.array_equal(y, expected)
    if np.frexp(scale)[0] != 0.5:  # s not a power of two: the products need rounding, and
        # the inputs tell the rules apart: cutting the low 16 bits (truncation) differs
        truncated = np.where(keep, (products.view(np.uint32) >> 16).astype(np.uint16), 0)
        assert (truncated != expected)[keep & np.isfinite(products)].sum() > 1000


def test_nan_stays_nan_with_its_sign_and_dropped_is_positive_zero():
    x = np.array([0x7FC1, 0xFF81, 0x7F81, 0x8000, 0x7F80, 0xFF80, 0x0001], np.uint16)
    for backend in ALL_BACKENDS:
        y, _ = fastdrop.dropout(x, 0.0, seed=0, dtype="bfloat16", backend=backend)
        assert [hex(v) for v in y] == ["0x7fc0", "0xffc0", "0x7fc0", "0x8000", "0x7f80",
                                       "0xff80", "0x1"], backend
        y, _ = fastdrop.dropout(x, 1.0, seed=0, dtype="bfloat16", backend=backend)
        assert not y.any(), backend


def exact_bfloat16(value):
    """The bfloat16 nearest the float64 ``value`` (ties to even), by exact rationals.

    The candidates are the finite bfloat16 values next to it in sorted order (the
    nearest is one of them); exact rationals decide between them.
    """
    candidates = np.arange(1 << 16, dtype=np.uint16).view(BF16).astype(np.float64)
    ordered = np.unique(candidates[np.isfinite(candidates)])
    at = int(np.searchsorted(ordered, value))
    finite = ordered[max(at - 2, 0):at + 2]
    target = Fraction(value)
    distances = [abs(Fraction(c) - target) for c in finite]
    best = min(distances)
    ties = [c for c, d in zip(finite, distances) if d == best]
    even = [c for c in ties if int(np.float64(c).astype(BF16).view(np.uint16)) % 2 == 0]
    return float((even or ties)[0])


def test_the_scale_rounds_once_from_float64():
    """s is rounded from float64 directly, to the exactly nearest bfloat16 (ties to even)."""
    rng = np.random.default_rng(5)
    values = [1 / (1 - p) for p in (0.1, 1 / 3, 0.7, 0.95, 1 - 2**-20)]
    values += list(rng.uniform(1, 300, 6)) + [1 + 2**-8, 1 + 3 * 2**-8, 2.0**-130 * 1.7, -3.3e38]
    double_rounded = 1 + 2**-8 + 2**-30  # just above a midpoint: float32 would make it a tie
    for value in values + [double_rounded]:
        assert round_to_bfloat16(value) == exact_bfloat16(value), value
    assert round_to_bfloat16(double_rounded) == 1 + 2**-7
    assert float(np.float32(double_rounded).astype(BF16)) == 1.0  # why not through float32


def test_raw_bits_and_ml_dtypes_arrays_give_the_same_result():
    x = np.random.default_rng(1).standard_normal((30, 70)).astype(BF16)
    for backend in ALL_BACKENDS:
        y, mask = fastdrop.dropout(x, 0.4, seed=9, backend=backend)
        raw, raw_mask = fastdrop.dropout(x.view(np.uint16), 0.4, seed=9, dtype="bfloat16",
                                         backend=backend)
        assert y.dtype == BF16 and raw.dtype == np.uint16
        assert np.array_equal(y.view(np.uint16), raw)
        assert np.array_equal(mask.words, raw_mask.words)
        out = np.empty_like(x.view(np.uint16))
        same = fastdrop.dropout(x.view(np.uint16), 0.4, seed=9, dtype=ml_dtypes.bfloat16,
                                out=out, backend=backend)[0]
        assert same is out and np.array_equal(out, raw)


BAD = [
    ("uint16 without dtype", lambda x: fastdrop.dropout(x.view(np.uint16), 0.5, seed=1),
     TypeError, "dtype='bfloat16'"),
    ("float32 with dtype=bfloat16", lambda x: fastdrop.dropout(x.astype(np.float32), 0.5,
                                                               seed=1, dtype="bfloat16"),
     TypeError, "float32"),
    ("another dtype request", lambda x: fastdrop.dropout(x.view(np.uint16), 0.5, seed=1,
                                                         dtype="float16"),
     TypeError, "float16"),
    ("int16 bits", lambda x: fastdrop.dropout(x.view(np.int16), 0.5, seed=1, dtype="bfloat16"),
     TypeError, "int16"),
    ("out of another dtype", lambda x: fastdrop.dropout(x, 0.5, seed=1,
                                                        out=np.empty(x.shape, np.uint16)),
     TypeError, "out has dtype uint16"),
    ("in place on read-only bits", lambda x: fastdrop.dropout(_read_only(x), 0.5, seed=1,
                                                              inplace=True, dtype="bfloat16"),
     ValueError, "read-only"),
]


def _read_only(x):
    raw = x.view(np.uint16).copy()
    raw.flags.writeable = False
    return raw


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("case", BAD, ids=lambda case: case[0])
def test_bad_bfloat16_input_raises_and_writes_nothing(case, backend):
    _, call, error, fragment = case
    x = np.linspace(-3, 3, 200).astype(BF16)
    before = x.copy()
    default_before = fastdrop.default_generator().state
    with pytest.raises(error, match=fragment):
        call(x)
    assert np.array_equal(bits(x), bits(before))
    assert fastdrop.default_generator().state == default_before


def run_without_ml_dtypes(code):
    """Run ``code`` in a fresh interpreter where ``import ml_dtypes`` fails."""
    blocked = "import sys; sys.modules['ml_dtypes'] = None\n"
    return subprocess.run([sys.executable, "-c", blocked + code], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT)))


def test_raw_bits_need_no_ml_dtypes():
    code = ("import numpy as np, fastdrop\n"
            "x = np.arange(5000, dtype=np.uint16)\n"
            "out = {b: fastdrop.dropout(x, 0.3, seed=2, dtype='bfloat16', backend=b)[0].tobytes()\n"
            "       for b in fastdrop.available_backends()}\n"
            "assert len(set(out.values())) == 1, out.keys()\n"
            "print('ok', sorted(out))")
    result = run_without_ml_dtypes(code)
    assert result.returncode == 0 and result.stdout.startswith("ok"), result.stderr


def test_what_needs_ml_dtypes_says_which_extra_to_install():
    code = ("import fastdrop._validate as v\n"
            "try:\n    v.bfloat16_dtype()\nexcept ImportError as e:\n    print(e)")
    result = run_without_ml_dtypes(code)
    assert "pip install 'fastdrop-cpu[bf16]'" in result.stdout, (result.stdout, result.stderr)
    bench = run_without_ml_dtypes("from fastdrop.cli import main; "
                                  "main(['bench', '--sizes', '2^10', '--dtypes', 'bfloat16', "
                                  "'--quiet'])")
    assert bench.returncode != 0 and "fastdrop-cpu[bf16]" in bench.stderr, bench.stderr


def test_import_fastdrop_does_not_import_ml_dtypes():
    code = "import sys, fastdrop; print('ml_dtypes' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT)))
    assert result.stdout.strip() == "False", result.stderr


def test_outputs_equal_torchs_for_the_same_keep_bits():
    """torch builds bf16 dropout as x * (bernoulli / (1 - p)) in bf16: equal where kept.

    Dropped elements differ only in form: torch gives x * 0 (-0.0 for negative x, NaN
    for inf and NaN), fastdrop +0.0; NaN is 0x7FC0 in torch, 0x7FC0 with its sign here.
    """
    torch = require("torch", "torch")
    x = torch.from_numpy(EVERY_PATTERN[:1 << 16].astype(np.int16)).view(torch.bfloat16)
    finite = np.isfinite(EVERY_PATTERN[:1 << 16].view(BF16).astype(np.float32))
    for p in list(np.linspace(0.01, 0.99, 99)) + [1 / 3, 1 - 2**-10]:
        p = float(p)
        y, mask = fastdrop.dropout(EVERY_PATTERN[:1 << 16], p, seed=3, dtype="bfloat16")
        keep = mask.unpack()
        noise = torch.from_numpy(keep.astype(np.float32)).to(torch.bfloat16)
        noise.div_(1 - p)
        theirs = (x * noise).view(torch.int16).numpy().view(np.uint16)
        assert np.array_equal(theirs[keep & finite], y[keep & finite]), p
