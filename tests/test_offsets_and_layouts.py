"""Chunking and memory layout never change the mask: offsets, strides, orders, views."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastdrop
from fastdrop import reference
from tests.util import COMPILED_BACKENDS, FLOAT_DTYPES, bits

SEED, STREAM = 2024, 11


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 3000), cuts=st.lists(st.integers(0, 3000), max_size=4),
       base=st.integers(0, 2**40), p=st.sampled_from([0.1, 0.5, 0.9, 0.3141592653589793]))
def test_slices_with_offset_equal_slices_of_the_whole(backend, n, cuts, base, p):
    """Processing pieces alone with offset=a gives the mask they have inside the whole array."""
    x = np.linspace(-1, 1, n, dtype=np.float32)
    whole, whole_mask = fastdrop.dropout(x, p, seed=SEED, stream=STREAM, offset=base,
                                         backend=backend)
    keep = whole_mask.unpack()
    edges = sorted({0, n, *[c for c in cuts if c <= n]})
    for a, b in zip(edges, edges[1:]):
        piece, piece_mask = fastdrop.dropout(x[a:b], p, seed=SEED, stream=STREAM, offset=base + a,
                                             backend=backend)
        assert np.array_equal(bits(piece), bits(whole[a:b]))
        assert np.array_equal(piece_mask.unpack(), keep[a:b])
        assert np.array_equal(
            fastdrop.bernoulli_mask(b - a, p, seed=SEED, stream=STREAM, offset=base + a,
                                    backend=backend), piece_mask.words)


def layouts(dtype):
    rng = np.random.default_rng(3)
    base = rng.standard_normal((37, 29, 5)).astype(dtype)
    return {
        "C": base,
        "F": np.asfortranarray(base),
        "transposed": base.transpose(2, 0, 1),
        "strided": base[::2, 1::3, ::-1],
        "column": base[:, 3, 2],
        "0-d": np.array(1.5, dtype=dtype),
        "empty": np.empty((0, 7), dtype=dtype),
    }


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", list(layouts(np.float32)))
def test_every_layout_gives_the_values_of_its_c_contiguous_copy(any_backend, dtype, layout):
    x = layouts(dtype)[layout]
    before = x.copy()
    expected, expected_mask = fastdrop.dropout(np.ascontiguousarray(x), 0.4, seed=SEED,
                                               stream=STREAM, backend="numpy")
    y, mask = fastdrop.dropout(x, 0.4, seed=SEED, stream=STREAM, backend=any_backend)
    assert y.shape == x.shape and y.flags.c_contiguous
    assert np.array_equal(bits(y), bits(expected))
    assert np.array_equal(mask.words, expected_mask.words)
    assert mask.shape == x.shape
    assert np.array_equal(bits(x), bits(before)), "out-of-place dropout changed its input"
    # unpack_mask lines up with x in C order
    assert np.array_equal(np.where(mask.unpack(), x, 0) != 0, y != 0)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("layout", ["C", "F", "transposed", "strided", "column", "0-d"])
def test_inplace_writes_through_views(any_backend, dtype, layout):
    owner = layouts(dtype)["C"].copy()
    select = {
        "C": lambda a: a, "F": lambda a: a.T, "transposed": lambda a: a.transpose(2, 0, 1),
        "strided": lambda a: a[::2, 1::3, ::-1], "column": lambda a: a[:, 3, 2],
        "0-d": lambda a: a[4, 4, 4, ...],
    }[layout]
    view = select(owner)
    expected, _ = fastdrop.dropout(view.copy(), 0.5, seed=SEED, stream=STREAM, backend="numpy")
    inside = np.zeros(owner.shape, bool)
    select(inside)[...] = True
    outside = owner[~inside].copy()
    result, _ = fastdrop.dropout(view, 0.5, seed=SEED, stream=STREAM, inplace=True,
                                 backend=any_backend)
    assert result is view
    assert np.array_equal(bits(view), bits(expected))
    assert np.array_equal(bits(owner[~inside]), bits(outside)), "wrote outside the view"


@pytest.mark.parametrize("out_layout", ["C", "F", "strided"])
def test_out_receives_the_result(any_backend, out_layout):
    x = layouts(np.float32)["C"]
    holder = np.full((74, 29, 5), 7.0, np.float32)
    out = {"C": np.empty_like(x), "F": np.asfortranarray(np.empty_like(x)),
           "strided": holder[::2]}[out_layout]
    expected, _ = fastdrop.dropout(x, 0.25, seed=1, stream=2, backend="numpy")
    result, _ = fastdrop.dropout(x, 0.25, seed=1, stream=2, out=out, backend=any_backend)
    assert result is out
    assert np.array_equal(bits(np.ascontiguousarray(out)), bits(expected))
    if out_layout == "strided":
        assert np.all(holder[1::2] == 7.0)


def test_out_overlapping_the_input_reads_the_original_values(any_backend):
    base = np.arange(1, 2001, dtype=np.float64)
    x = base[:1500]
    expected, _ = fastdrop.dropout(x.copy(), 0.5, seed=3, stream=4, backend="numpy")
    out = base[500:2000]  # overlaps x shifted by 500 elements
    fastdrop.dropout(x, 0.5, seed=3, stream=4, out=out, backend=any_backend)
    assert np.array_equal(out, expected)


def test_readonly_input_is_fine_out_of_place(any_backend):
    x = np.ones(300, np.float32)
    x.flags.writeable = False
    y, _ = fastdrop.dropout(x, 0.5, seed=1, stream=0, backend=any_backend)
    assert y.flags.writeable and np.all((y == 0) | (y == 2))


def test_lists_are_accepted_out_of_place(any_backend):
    y, mask = fastdrop.dropout([1.0, 2.0, 3.0], 0.5, seed=1, backend=any_backend)
    assert y.dtype == np.float64 and mask.n == 3


def test_training_false_returns_input_untouched(any_backend):
    x = np.arange(10, dtype=np.float32)
    y, mask = fastdrop.dropout(x, 0.9, seed=1, training=False, backend=any_backend)
    assert y is x and mask is None
    out = np.zeros_like(x)
    y, mask = fastdrop.dropout(x, 0.9, seed=1, training=False, out=out, backend=any_backend)
    assert y is out and np.array_equal(out, x) and mask is None


@pytest.mark.parametrize("offset", [2**62, 2**63 - 1000])
def test_large_global_indices(any_backend, offset):
    """Element indices far beyond 2**48 address valid, distinct mask words."""
    n = 1000 if offset + 1000 <= 2**63 else 2**63 - offset
    words = fastdrop.bernoulli_mask(n, 0.5, seed=1, stream=2, offset=offset, backend=any_backend)
    assert np.array_equal(words, reference.bernoulli_mask(n, 0.5, seed=1, stream=2, offset=offset))
    assert not np.array_equal(words, fastdrop.bernoulli_mask(n, 0.5, seed=1, stream=2,
                                                             backend=any_backend))
