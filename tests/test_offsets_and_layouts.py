"""Chunking and memory layout never change a result: offsets, strides, orders, views, out=.

One property: where the elements sit in memory, and how an array is cut into pieces
processed with offsets, does not change a bit. Every function of the registry
(tests/util.py) on every layout of the awkward-array generator gives the values of
its C-contiguous copy, in place and out of place and into any ``out``; pieces with
offsets (including noise-shaped and Gaussian ones, and masks reused per time step)
give the slices of the whole.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdrop
from fastdrop import reference
from tests.util import (
    ARRAY_FUNCTIONS,
    COMPILED_BACKENDS,
    FLOAT_DTYPES,
    LAYOUTS,
    SEED,
    STREAM,
    assert_bits_equal,
    assert_same_record,
    bits,
    registry,
    sample,
)

SLICE_SEED, SLICE_STREAM = 2024, 11


def accepted(kinds, entry):
    return [kind for kind in kinds if entry.accepts(kind.shape)]


# ---------------------------------------------------------------- memory layouts
# A test runs per backend and function (each pair calls other kernel code); the layouts
# share that code (fastdrop._layout) and loop inside it.


@pytest.mark.parametrize("entry", ARRAY_FUNCTIONS, ids=str)
def test_every_layout_gives_the_values_of_its_c_contiguous_copy(any_backend, entry, subtests):
    """Awkward layouts give the result and record of the C-contiguous copy.

    Fortran order, transposes, steps of 2, 3 and -1, 4-d views, 0-d, empty and read-only
    arrays: the result (C-ordered, writeable, x's shape) and its record are those of the
    C-contiguous copy.
    """
    for kind in accepted(LAYOUTS, entry):
        for dtype in FLOAT_DTYPES:
            with subtests.test(layout=str(kind), dtype=np.dtype(dtype).name):
                x, _ = kind.make(dtype)
                expected = entry.call(x.copy(order="C"), any_backend)
                result = entry.call(x, any_backend)
                y = entry.output(result)
                assert y.shape == x.shape and y.flags.c_contiguous and y.flags.writeable
                assert_bits_equal(y, entry.output(expected))
                assert_same_record(entry.record(result), entry.record(expected))


def test_the_unpacked_mask_lines_up_with_x_in_c_order(any_backend, subtests):
    for kind in LAYOUTS:
        with subtests.test(layout=str(kind)):
            x, _ = kind.make(np.float32)
            y, mask = fastdrop.dropout(x, 0.4, seed=SEED, stream=STREAM, backend=any_backend)
            assert mask.shape == x.shape
            keep = mask.unpack().reshape(x.shape)
            assert np.all(y[~keep] == 0)
            nonzero = np.isfinite(x) & (x != 0)
            assert np.array_equal((y != 0)[nonzero], keep[nonzero])


WRITEABLE_LAYOUTS = tuple(kind for kind in LAYOUTS if kind.writeable)


@pytest.mark.parametrize("entry", registry(where=lambda e: e.inplace), ids=str)
def test_inplace_through_any_view_gives_the_values_of_a_copy(any_backend, entry, subtests):
    """In place writes the result through the view.

    test_input_not_modified checks that nothing else is written.
    """
    for kind in accepted(WRITEABLE_LAYOUTS, entry):
        for dtype in FLOAT_DTYPES:
            with subtests.test(layout=str(kind), dtype=np.dtype(dtype).name):
                x, _ = kind.make(dtype)
                expected = entry.output(entry.call(x.copy(), any_backend))
                result = entry.call(x, any_backend, inplace=True)
                assert entry.output(result) is x
                assert_bits_equal(x.copy(order="C"), expected)


@pytest.mark.parametrize("entry", registry(where=lambda e: e.out), ids=str)
def test_out_receives_the_result(any_backend, entry, subtests):
    x = sample((37, 29, 5), np.float32)
    expected = entry.output(entry.call(x, any_backend))
    for out_layout in ("C", "F", "strided"):
        with subtests.test(out=out_layout):
            holder = np.full((74, 29, 5), 7.0, np.float32)
            out = {"C": np.empty_like(x), "F": np.asfortranarray(np.empty_like(x)),
                   "strided": holder[::2]}[out_layout]
            result = entry.call(x, any_backend, out=out)
            assert entry.output(result) is out
            assert_bits_equal(np.ascontiguousarray(out), expected)
            assert np.all(holder[1::2] == 7.0)


@pytest.mark.parametrize("entry", registry(where=lambda e: e.out), ids=str)
def test_out_overlapping_the_input_reads_the_original_values(any_backend, entry):
    base = np.arange(1, 3 * 7 * 40 + 1, dtype=np.float64).reshape(3 * 7 * 2, 20)
    x = base[:30].reshape(3, 5, 40)
    out = base[12:42].reshape(3, 5, 40)  # overlaps x shifted by 12 rows
    expected = entry.output(entry.call(x.copy(), any_backend))
    entry.call(x, any_backend, out=out)
    assert_bits_equal(out, expected)


def test_out_overlapping_a_1_d_input_reads_the_original_values(any_backend):
    base = np.arange(1, 2001, dtype=np.float64)
    x = base[:1500]
    expected, _ = fastdrop.dropout(x.copy(), 0.5, seed=3, stream=4, backend="numpy")
    out = base[500:2000]  # overlaps x shifted by 500 elements
    fastdrop.dropout(x, 0.5, seed=3, stream=4, out=out, backend=any_backend)
    assert np.array_equal(out, expected)


@pytest.mark.parametrize("entry", ARRAY_FUNCTIONS, ids=str)
def test_lists_are_accepted_out_of_place(any_backend, entry):
    x = sample((2, 3, 4), np.float64)
    expected = entry.call(x, any_backend)
    result = entry.call(x.tolist(), any_backend)
    assert_bits_equal(entry.output(result), entry.output(expected))


def test_a_list_of_floats_is_float64(any_backend):
    y, mask = fastdrop.dropout([1.0, 2.0, 3.0], 0.5, seed=1, backend=any_backend)
    assert y.dtype == np.float64 and mask.n == 3


@pytest.mark.parametrize("entry", registry(where=lambda e: e.forward), ids=str)
def test_training_false_returns_the_input_untouched(any_backend, entry):
    x = sample((2, 3, 4), np.float32)
    before = x.copy()
    result = entry.call(x, any_backend, training=False)
    assert entry.output(result) is x and entry.record(result) is None
    assert np.array_equal(bits(x), bits(before))
    out = np.zeros_like(x)
    result = entry.call(x, any_backend, training=False, out=out)
    assert entry.output(result) is out and entry.record(result) is None
    assert np.array_equal(bits(out), bits(x))


# ---------------------------------------------------------------- offsets


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), cuts=st.lists(st.integers(0, 3000), max_size=4),
       base=st.integers(0, 2**40), p=st.sampled_from([0.1, 0.5, 0.9, 0.3141592653589793]))
def test_slices_with_offset_equal_slices_of_the_whole(backend, n, cuts, base, p):
    """Processing pieces alone with offset=a gives the mask they have inside the whole array."""
    x = np.linspace(-1, 1, n, dtype=np.float32)
    whole, whole_mask = fastdrop.dropout(x, p, seed=SLICE_SEED, stream=SLICE_STREAM, offset=base,
                                         backend=backend)
    keep = whole_mask.unpack()
    edges = sorted({0, n, *[c for c in cuts if c <= n]})
    for a, b in zip(edges, edges[1:]):
        piece, piece_mask = fastdrop.dropout(x[a:b], p, seed=SLICE_SEED, stream=SLICE_STREAM,
                                             offset=base + a, backend=backend)
        assert np.array_equal(bits(piece), bits(whole[a:b]))
        assert np.array_equal(piece_mask.unpack(), keep[a:b])
        assert np.array_equal(
            fastdrop.bernoulli_mask(b - a, p, seed=SLICE_SEED, stream=SLICE_STREAM,
                                    offset=base + a, backend=backend), piece_mask.words)


def test_noise_shaped_pieces_with_offsets_equal_slices_of_the_whole(any_backend):
    """Samples a:b processed alone give the rows a:b of the whole batch.

    With offset = base + a*C (mask elements before them): offset counts mask elements.
    """
    n, c, h, w, p = 23, 7, 3, 5, 0.2
    x = sample((n, c, h, w), np.float32)
    for base in (0, 5, 253):
        whole, whole_mask = fastdrop.dropout(x, p, seed=SEED, stream=STREAM, offset=base,
                                             noise_shape=(n, c, 1, 1), backend=any_backend)
        whole_alpha, _ = fastdrop.alpha_dropout(x, p, seed=SEED, stream=STREAM, offset=base,
                                                noise_shape=(n, c, 1, 1), backend=any_backend)
        keep = whole_mask.unpack()
        for a, b in [(0, 1), (1, 10), (10, 19), (19, 23), (0, 23)]:
            piece, piece_mask = fastdrop.channel_dropout(
                x[a:b], p, seed=SEED, stream=STREAM, offset=base + a * c, backend=any_backend)
            assert_bits_equal(piece, whole[a:b], (base, a, b))
            assert np.array_equal(piece_mask.unpack(), keep[a:b])
            alpha_piece, _ = fastdrop.feature_alpha_dropout(
                x[a:b], p, seed=SEED, stream=STREAM, offset=base + a * c, backend=any_backend)
            assert_bits_equal(alpha_piece, whole_alpha[a:b], (base, a, b))


def test_variational_mask_reuse_equals_a_time_shared_noise_shape(any_backend):
    """One (batch, features) mask applied at every time step is dropout with a noise shape.

    apply_mask at every time step is dropout of the whole (batch, time, features) sequence
    with noise_shape (batch, 1, features).
    """
    batch, time, features, p = 5, 7, 67, 0.3
    x = sample((batch, time, features), np.float32)
    words = fastdrop.bernoulli_mask(batch * features, p, seed=SEED, stream=STREAM, offset=5,
                                    backend=any_backend)
    steps = [fastdrop.apply_mask(x[:, t, :], words, p=p, backend=any_backend) for t in range(time)]
    whole, mask = fastdrop.dropout(x, p, seed=SEED, stream=STREAM, offset=5,
                                   noise_shape=(batch, 1, features), backend=any_backend)
    assert_bits_equal(np.stack(steps, axis=1), whole)
    assert np.array_equal(mask.words, words)
    # the stored mask of the whole sequence applies to each step as well
    for t in range(time):
        step_mask = fastdrop.DropoutMask(mask.words, shape=(batch, features), p=p, seed=SEED,
                                         stream=STREAM, offset=5)
        assert_bits_equal(fastdrop.apply_mask(x[:, t, :], step_mask, backend=any_backend),
                          steps[t])


@pytest.mark.parametrize("base", [0, 1, 253, 2**33 - 5, 2**63 - 3001])
def test_gaussian_noise_slices_with_offsets_equal_slices_of_the_whole(any_backend, base):
    """Element i uses half i % 2 of block i // 2: pieces of a mask match the whole.

    Pieces starting at odd or even indices, and across block 2**32 (the carry into counter
    word 1), match the whole.
    """
    n, p = 3000, 0.3
    whole = fastdrop.gaussian_noise(n, p, seed=SEED, stream=STREAM, offset=base,
                                    backend=any_backend)
    assert_bits_equal(whole, reference.gaussian_noise(n, p, seed=SEED, stream=STREAM,
                                                      offset=base))
    x = sample((n,), np.float32)
    whole_y, _ = fastdrop.gaussian_dropout(x, p, seed=SEED, stream=STREAM, offset=base,
                                           backend=any_backend)
    edges = [0, 1, 2, 3, 64, 65, 127, 1000, 1001, 2999, 3000]
    for a, b in zip(edges, edges[1:]):
        piece = fastdrop.gaussian_noise(b - a, p, seed=SEED, stream=STREAM, offset=base + a,
                                        backend=any_backend)
        assert_bits_equal(piece, whole[a:b], (base, a, b))
        piece_y, _ = fastdrop.gaussian_dropout(x[a:b], p, seed=SEED, stream=STREAM,
                                               offset=base + a, backend=any_backend)
        assert_bits_equal(piece_y, whole_y[a:b], (base, a, b))
    other_stream = fastdrop.gaussian_noise(n, p, seed=SEED, stream=STREAM + 1, offset=base,
                                           backend=any_backend)
    assert not np.any(other_stream == whole), "another stream repeats the noise"


@pytest.mark.parametrize("offset", [2**62, 2**63 - 1000])
def test_large_global_indices(any_backend, offset):
    """Element indices far beyond 2**48 address valid, distinct mask words."""
    n = 1000 if offset + 1000 <= 2**63 else 2**63 - offset
    words = fastdrop.bernoulli_mask(n, 0.5, seed=1, stream=2, offset=offset, backend=any_backend)
    assert np.array_equal(words, reference.bernoulli_mask(n, 0.5, seed=1, stream=2, offset=offset))
    assert not np.array_equal(words, fastdrop.bernoulli_mask(n, 0.5, seed=1, stream=2,
                                                             backend=any_backend))
