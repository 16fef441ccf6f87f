"""Every SIMD path of the C kernels: taken where its level says, and giving the reference's bits.

The C kernels choose AVX2, AVX-512F, AVX-512BW or AVX-512 BF16 code at run time, so a
machine without AVX-512 never runs those paths. Here the headers are built into a small
ctypes library (tests/simd/) three ways: ``emulated``, every intrinsic from SIMDe and
tests/simd/avx512_emulation.h with the CPU's features set by the test, so every level
runs on any x86-64; ``native``, the real instructions at the levels this CPU has; and
``portable``, no SIMD path compiled (as on other CPUs). Each call records the paths it
went through. The emulated and portable builds must run in CI:
FASTDROP_REQUIRE_SIMD_EMULATION=1 makes a missing compiler or SIMDe (Debian:
libsimde-dev) a failure instead of a skip.
"""
import functools
import os

import numpy as np
import pytest

import fastdrop
from fastdrop import _layout, _sysinfo, reference
from tests.simd.library import EVERY_FEATURE, BuildUnavailable, KernelLibrary
from tests.util import assert_bits_equal, sample

REQUIRED = os.environ.get("FASTDROP_REQUIRE_SIMD_EMULATION", "").strip() not in ("", "0")
SEED, STREAM = 11, 2
DTYPES = ["float64", "float32", "float16", "bfloat16"]  # bfloat16: uint16 bit patterns


@functools.cache
def build(mode):
    """The library of ``mode``, or the reason it cannot be built here."""
    try:
        return KernelLibrary(mode)
    except BuildUnavailable as reason:
        return reason


def library_or_skip(mode):
    library = build(mode)
    if isinstance(library, BuildUnavailable):
        if REQUIRED and mode != "native":
            pytest.fail(f"FASTDROP_REQUIRE_SIMD_EMULATION is set, but {library}")
        pytest.skip(str(library))
    return library


@pytest.fixture(params=["emulated", "native", "portable"])
def kernels(request):
    library = library_or_skip(request.param)
    yield library
    library.emulate_cpu(EVERY_FEATURE)  # the best level again


def values(n, dtype, salt=0):
    """`sample`'s values with the extremes of ``dtype`` added; bfloat16 as uint16 bits.

    Normals, zeros of both signs, inf and NaN, and the largest finite value (whose product
    overflows) and the smallest subnormal of the type.
    """
    float_type = np.float32 if dtype == "bfloat16" else np.dtype(dtype)
    x = sample(n, float_type, salt)
    info = np.finfo(float_type)
    x[5::89], x[6::83], x[7::79] = info.max, -info.smallest_subnormal, info.smallest_normal
    return reference.float32_to_bfloat16(x) if dtype == "bfloat16" else x


def expected_dropout(x, dtype, p, offset):
    """The reference's (y, packed words) of x."""
    y, mask = reference.dropout(x, p, seed=SEED, stream=STREAM, offset=offset,
                                dtype="bfloat16" if dtype == "bfloat16" else None)
    return y, mask


def prefix_words(words, n):
    """The packed words of the first n elements of a mask's words."""
    return reference.pack_mask(fastdrop.unpack_mask(words, words.size * 64)[:n])


# ---------------------------------------------------------------- which path runs

FULL = EVERY_FEATURE
SKYLAKE = "avx2 avx512f avx512bw avx512dq"  # AVX-512 without BF16
# The paths of, in order: float32 and bfloat16 dropout at p = 0.1 (several Philox blocks a
# word: the pipelined loop, whose later groups' words come from a draw), float32 at p = 0.5
# (one block: the plain loop), and Gaussian noise.
PORTABLE = ({"f32_portable", "words scalar"}, {"bf16_portable", "words scalar"},
            {"f32_portable", "words scalar"}, "normals portable")
AVX2 = ({"f32_avx2", "words avx2 x8", "draw avx2"}, {"bf16_avx2", "words avx2 x8", "draw avx2"},
        {"f32_avx2", "words avx2 x16"}, "normals avx2")


def avx512(bfloat16_words):
    """The paths at level 2 or 3, where bfloat16 scales by ``bfloat16_words``."""
    return ({"f32_avx2", "words avx512", "draw avx512"},
            bfloat16_words | {"words avx512", "draw avx512"}, {"f32_avx2", "words avx512"},
            "normals avx2")


# A CPU with `features`, capped at `cap`: the level, and the paths taken there.
SELECTION = [
    ("", 3, 0, PORTABLE),
    ("avx2", 3, 1, AVX2),
    ("avx2", 0, 0, PORTABLE),
    ("avx2 avx512f", 3, 2, avx512({"bf16_avx2"})),  # no BW: bfloat16 keeps its AVX2 words
    (SKYLAKE, 3, 2, avx512({"bf16_avx512"})),
    (SKYLAKE, 1, 1, AVX2),
    (FULL, 3, 3, avx512({"bf16_avx512ne", "bf16 cvtne"})),  # normal products: the instruction
    (FULL, 2, 2, avx512({"bf16_avx512"})),
    (FULL, 1, 1, AVX2),
    (FULL, 0, 0, PORTABLE),
]


def test_each_level_takes_its_paths(kernels):
    """The level cap and the CPU's features choose the paths.

    Emulated: every CPU of SELECTION; native: this CPU's rows; portable: the scalar paths
    whatever the cap.
    """
    rows = [row for row in SELECTION
            if kernels.mode == "emulated" or row[0] == kernels.cpu_features()]
    if not rows:
        pytest.skip(f"no row of SELECTION has this CPU's features {kernels.cpu_features()!r}")
    n = 64 * 16 * 3 + 5  # three groups of words and a part
    x32 = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    x16 = reference.float32_to_bfloat16(x32)  # normal products: the BF16 instruction's path
    for features, cap, level, (f32_paths, bf16_paths, one_block_paths, normals) in rows:
        row = (features, cap)
        assert kernels.emulate_cpu(features, cap) == level == kernels.simd_enabled(), row
        kernels.take_paths()
        kernels.dropout(x32, 0.1, SEED, STREAM, 3)
        assert kernels.take_paths() == f32_paths, row
        kernels.dropout(x16, 0.1, SEED, STREAM, 3)
        assert kernels.take_paths() == bf16_paths, row
        kernels.dropout(x32, 0.5, SEED, STREAM, 3)
        assert kernels.take_paths() == one_block_paths, row
        kernels.gaussian(x32, 0.3, SEED, STREAM, 3)
        assert kernels.take_paths() == {normals}, row


def test_the_cap_never_exceeds_the_cpu(kernels):
    best = kernels.set_simd(3)
    assert [kernels.set_simd(level) for level in (-1, 0, 1, 2, 3, 9)] == \
        [0, 0, min(1, best), min(2, best), best, best]
    if kernels.mode == "portable":
        assert best == 0


# ---------------------------------------------------------------- the bits of every path

SIZES = [1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 129, 1023, 1024, 1025, 2111,
         64 * 16 * 4 + 37]  # around the vector widths, a word (64), a group (16 words)
OFFSETS = [0, 1, 37, 63]
PS = [0.0, 0.1, 0.25, 1 / 3, 0.5, 0.9, 1.0]  # 0.25 and 0.5: one Philox block a word


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_level_size_and_offset_gives_the_reference_bits(kernels, dtype, subtests):
    """Forward (words stored, words not stored, mask only, in place), backward from words."""
    x, grad = values(max(SIZES), dtype), values(max(SIZES), dtype, salt=1)
    for p in PS:
        for offset in OFFSETS:
            expected, mask = expected_dropout(x, dtype, p, offset)
            expected_back = reference.dropout_backward(grad, mask, dtype="bfloat16"
                                                       if dtype == "bfloat16" else None)
            for level in kernels.levels():
                kernels.set_simd(level)
                with subtests.test(p=p, offset=offset, level=level):
                    for n in SIZES:
                        context = (p, offset, level, n)
                        words = prefix_words(mask.words, n)
                        y, stored = kernels.dropout(x[:n], p, SEED, STREAM, offset, ranges=3)
                        assert_bits_equal(y, expected[:n], context)
                        assert np.array_equal(stored, words), context
                        y, _ = kernels.dropout(x[:n], p, SEED, STREAM, offset,
                                               store_words=False)
                        assert_bits_equal(y, expected[:n], context)
                        _, alone = kernels.dropout(x[:n], p, SEED, STREAM, offset, target=None)
                        assert np.array_equal(alone, words), context
                        inplace = x[:n].copy()
                        kernels.dropout(inplace, p, SEED, STREAM, offset, target="inplace")
                        assert_bits_equal(inplace, expected[:n], context)
                        back = kernels.apply_mask(grad[:n], words, p, ranges=2)
                        assert_bits_equal(back, expected_back[:n], context)


def test_scaling_alone_gives_the_reference_bits(kernels):
    """fd_scale_range, the benchmarks' floor: the kernels' scaling with every element kept."""
    for dtype in DTYPES:
        x = values(max(SIZES), dtype)
        expected = reference.scale_kept(x, np.ones(x.size, bool), 0.0, scale=1.7)
        for level in kernels.levels():
            kernels.set_simd(level)
            scaled = x.copy()
            kernels.scale(scaled, 1.7)
            assert_bits_equal(scaled, expected, (dtype, level))


EVERY_PATTERN = np.tile(np.arange(1 << 16, dtype=np.uint16), 3)  # 3 x 65536, offsets differ


def test_every_bfloat16_pattern_on_every_level(kernels, subtests):
    """Forward, in place, recomputed and backward from words, on every level.

    At level 3 both the BF16 instruction and its integer fallback (for NaN or subnormal
    products) run.
    """
    for p in [0.1, 1 / 3, 0.5, 0.9, 1 - 2**-20]:
        for offset in [0, 37]:
            expected, mask = reference.dropout(EVERY_PATTERN, p, seed=SEED, stream=STREAM,
                                               offset=offset, dtype="bfloat16")
            for level in kernels.levels():
                kernels.set_simd(level)
                kernels.take_paths()
                with subtests.test(p=p, offset=offset, level=level):
                    y, words = kernels.dropout(EVERY_PATTERN, p, SEED, STREAM, offset, ranges=3)
                    assert_bits_equal(y, expected, "out of place")
                    assert np.array_equal(words, mask.words)
                    inplace = EVERY_PATTERN.copy()
                    kernels.dropout(inplace, p, SEED, STREAM, offset, target="inplace")
                    assert_bits_equal(inplace, expected, "in place")
                    y, _ = kernels.dropout(EVERY_PATTERN, p, SEED, STREAM, offset,
                                           store_words=False)
                    assert_bits_equal(y, expected, "recomputed")
                    back = kernels.apply_mask(EVERY_PATTERN, mask.words, p)
                    assert_bits_equal(back, expected, "backward from the words")
                    if level == 3:
                        assert {"bf16 cvtne", "bf16 cvtne integer rounding"} <= \
                            kernels.take_paths()


BLOCKS = [  # (global shape, block): long and short runs, dense and sparse in the whole
    ((1000,), np.s_[3:990,]),
    ((13, 97), np.s_[2:11, 5:90]),
    ((4, 5, 67), np.s_[1:3, :, 7:60]),
    ((300, 700), np.s_[10:290, :]),  # one run of 196,000: more than a chunk of words
    ((300, 700), np.s_[5:250, 50:150]),  # short runs far apart: each drawn alone
]


def test_runs_of_a_block_give_the_reference_bits(kernels, subtests):
    for dtype in ["float32", "bfloat16"]:  # bfloat16 has wide variants of its own
        for global_shape, block in BLOCKS:
            shape = np.empty(global_shape, np.bool_)[block].shape
            origin = tuple(piece.start or 0 for piece in block)
            x = values(int(np.prod(shape)), dtype).reshape(shape)
            for p, offset in [(0.1, 0), (0.5, 2**40 + 3)]:
                expected, mask = reference.dropout(
                    x, p, seed=SEED, stream=STREAM, offset=offset, origin=origin,
                    global_shape=global_shape, dtype="bfloat16" if dtype == "bfloat16" else None)
                runs = _layout.block_runs(shape, origin, global_shape, offset)
                for level in kernels.levels():
                    kernels.set_simd(level)
                    with subtests.test(dtype=dtype, shape=global_shape, p=p, level=level):
                        y, words = kernels.dropout_runs(x.reshape(-1), p, SEED, STREAM, runs,
                                                        ranges=3)
                        assert_bits_equal(y, expected.reshape(-1))
                        assert np.array_equal(words, mask.words)


def test_gaussian_noise_gives_the_reference_bits(kernels):
    for dtype in DTYPES:
        x = values(64 * 5 + 3, dtype)
        for offset in [0, 1]:  # an odd offset starts inside a Philox block
            expected, _ = reference.gaussian_dropout(
                x, 0.3, seed=SEED, stream=STREAM, offset=offset,
                dtype="bfloat16" if dtype == "bfloat16" else None)
            for level in kernels.levels():
                kernels.set_simd(level)
                y = kernels.gaussian(x, 0.3, SEED, STREAM, offset)
                assert_bits_equal(y, expected, (dtype, offset, level))


# ---------------------------------------------------------------- the emulation itself


def test_the_emulated_instructions_match_this_cpus():
    """The emulation's two instructions from Intel's pseudo-code, held against the CPU's.

    avx512_emulation.h's _mm512_cvtne2ps_pbh and _mm512_fpclass_ps_mask, where this CPU
    has the instructions.
    """
    emulated, native = library_or_skip("emulated"), library_or_skip("native")
    if not {"avx512dq", "avx512bf16"} <= set(native.cpu_features().split()):
        pytest.skip("this CPU has no AVX-512 BF16 and DQ instructions to compare with")
    high = np.arange(1 << 16, dtype=np.uint32) << 16  # every sign, exponent and top fraction
    low = np.array([0, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF], np.uint32)  # around the ties
    patterns = (high[:, None] | low[None, :]).reshape(-1).view(np.float32)
    converted, masks = emulated.bf16_instructions(patterns)
    expected_converted, expected_masks = native.bf16_instructions(patterns)
    assert np.array_equal(converted, expected_converted)
    assert np.array_equal(masks, expected_masks)


def test_info_lists_every_simd_feature_the_kernels_ask_for():
    """`fastdrop info`'s simd line holds each feature the C kernels find on this CPU."""
    native = library_or_skip("native")
    listed = set(_sysinfo.collect()["simd"])
    for feature in native.cpu_features().split():
        assert _sysinfo.FEATURE_NAMES.get(feature, feature) in listed, feature
