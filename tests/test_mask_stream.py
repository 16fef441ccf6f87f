"""The mask-stream definition itself (docs/mask-stream.md), checked from first principles."""
import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from fastdrop.maskstream import block_counter, keep_threshold

SEED = 0xFEDCBA9876543210
STREAM = 0x1122334455667788


def test_first_word_follows_the_documented_counter_layout():
    """Lane 0..63 of word w: U from r_b(w), r_b from Philox blocks (w, stream, j) under the seed."""
    word = 5
    counters = np.array([block_counter(word, STREAM, j) for j in range(32)], np.uint32)
    key = np.array([SEED & 0xFFFFFFFF, SEED >> 32], np.uint32)
    blocks = fastdrop.philox4x32_10(counters, key).astype(np.uint64)
    r = []
    for x0, x1, x2, x3 in blocks:
        r += [int(x0) | int(x1) << 32, int(x2) | int(x3) << 32]
    uniforms = [sum(((r[b] >> lane) & 1) << (63 - b) for b in range(64)) for lane in range(64)]
    for p in [0.1, 0.5, 0.7312]:
        threshold = int(np.ldexp(p, 64))
        expected = sum(1 << lane for lane in range(64) if uniforms[lane] >= threshold)
        words = fastdrop.bernoulli_mask(64, p, seed=SEED, stream=STREAM, offset=64 * word,
                                        backend="numpy")
        assert int(words[0]) == expected


def test_counter_layout_fields():
    assert block_counter(0, 0, 0) == (0, 0, 0, 0)
    assert block_counter(2**40 + 3, 2**33 + 9, 31) == (3, 2**8 | 31 << 26, 9, 2)


def test_threshold_is_exact():
    assert keep_threshold(0.5) == 2**63
    assert keep_threshold(0.25) == 2**62
    assert keep_threshold(0.1) == int(np.ldexp(0.1, 64))  # floor of the float64 p times 2**64
    assert keep_threshold(0.0) == 0
    assert keep_threshold(np.nextafter(1.0, 0.0)) == 2**64 - 2**11
    with pytest.raises(ValueError):
        keep_threshold(1.0)


@pytest.mark.parametrize("p", [1e-9, 0.1, 0.25, 0.5, 0.6180339887, 1 - 1e-9])
def test_kernel_early_stopping_equals_full_comparison(compiled_backend, p):
    """Kernels stop drawing bits once lanes are decided; the result is U >= T on all 64 bits."""
    words = np.arange(1000, 1100, dtype=np.uint64)
    uniforms = reference.lane_uniforms(SEED, STREAM, words)
    expected = (uniforms >= np.uint64(keep_threshold(p))).reshape(-1)
    got = fastdrop.unpack_mask(
        fastdrop.bernoulli_mask(6400, p, seed=SEED, stream=STREAM, offset=64000,
                                backend=compiled_backend), 6400)
    assert np.array_equal(got, expected)


def test_lanes_equal_to_threshold_are_kept():
    """U == T is not U < T: with p = 0.5 a lane whose top bit is 1 is kept whatever follows."""
    words = np.arange(3, dtype=np.uint64)
    uniforms = reference.lane_uniforms(1, 2, words).reshape(-1)
    keep = reference.keep_bits(192, 0.5, 1, 2, 0)
    assert np.array_equal(keep, uniforms >= np.uint64(2**63))


@pytest.mark.parametrize("change", ["seed", "stream", "word"])
def test_changing_any_coordinate_changes_the_mask(any_backend, change):
    base = dict(seed=SEED, stream=STREAM, offset=0)
    other = dict(base)
    if change == "seed":
        other["seed"] = SEED ^ 1
    elif change == "stream":
        other["stream"] = STREAM + 1
    else:
        other["offset"] = 64  # the same lanes of the next word
    a = fastdrop.bernoulli_mask(64 * 64, 0.5, backend=any_backend, **base)
    b = fastdrop.bernoulli_mask(64 * 64, 0.5, backend=any_backend, **other)
    assert np.mean(a != b) > 0.9  # words differ, not just a few bits
    x = np.ones(64 * 64, np.float32)
    ya, _ = fastdrop.dropout(x, 0.5, backend=any_backend, **base)
    yb, _ = fastdrop.dropout(x, 0.5, backend=any_backend, **other)
    assert not np.array_equal(ya, yb)


def test_high_bits_of_seed_stream_and_word_matter(any_backend):
    """All 64 bits of seed and stream and the high bits of the word index reach Philox."""
    reference_words = fastdrop.bernoulli_mask(640, 0.5, seed=1, stream=1, offset=0,
                                              backend=any_backend)
    variants = [dict(seed=1 + 2**63, stream=1, offset=0), dict(seed=1, stream=1 + 2**63, offset=0),
                dict(seed=1, stream=1 + 2**40, offset=0), dict(seed=1, stream=1, offset=64 * 2**32)]
    for variant in variants:
        words = fastdrop.bernoulli_mask(640, 0.5, backend=any_backend, **variant)
        assert not np.array_equal(words, reference_words), variant


def test_extreme_coordinates(any_backend):
    top = 2**64 - 1
    words = fastdrop.bernoulli_mask(100, 0.5, seed=top, stream=top, offset=2**63 - 100,
                                    backend=any_backend)
    assert np.array_equal(words, reference.bernoulli_mask(100, 0.5, seed=top, stream=top,
                                                          offset=2**63 - 100))


def test_p_zero_keeps_everything_and_p_one_drops_everything(any_backend):
    n = 1000
    assert np.all(fastdrop.unpack_mask(
        fastdrop.bernoulli_mask(n, 0.0, seed=1, backend=any_backend), n))
    assert not np.any(fastdrop.unpack_mask(
        fastdrop.bernoulli_mask(n, 1.0, seed=1, backend=any_backend), n))
    x = np.full(n, np.nan, np.float32)
    y, _ = fastdrop.dropout(x, 1.0, seed=1, backend=any_backend)
    assert np.array_equal(y.view(np.uint32), np.zeros(n, np.uint32))  # +0.0, not NaN or -0.0


def test_padding_bits_are_zero(any_backend):
    words = fastdrop.bernoulli_mask(65, 0.0, seed=1, backend=any_backend)
    assert words.tolist() == [2**64 - 1, 1]
