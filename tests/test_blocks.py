"""Blocks of a larger array: every block gets its bits in the whole.

Specified in docs/mask-stream.md, section 10.

A call with ``origin=`` and ``global_shape=`` on a block of an array must give exactly
the block of the same call on the whole array: outputs, mask words, noise; on every
backend, dtype, layout of cuts (any axes, any alignment to 64-bit words, single
elements), thread count and offset.
"""
import math

import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from tests.util import ALL_BACKENDS, FLOAT_DTYPES, bits, for_each, sample

GLOBAL_SHAPES = [(1000,), (13, 97), (4, 5, 67), (3, 4, 5, 7)]
OFFSETS = [0, 2**40 + 3]


def blocks_of(shape, count=6, seed=0):
    """Blocks (as slices) of an array of ``shape``: the whole, one element, and random cuts."""
    rng = np.random.default_rng([seed, len(shape)])
    found = [tuple(slice(0, extent) for extent in shape),
             tuple(slice(extent - 1, extent) for extent in shape)]
    while len(found) < count:
        cut = []
        for extent in shape:
            start = int(rng.integers(0, extent))
            cut.append(slice(start, int(rng.integers(start + 1, extent + 1))))
        found.append(tuple(cut))
    return found


def origin_of(block):
    return tuple(piece.start for piece in block)


def block_mask_words(mask, block):
    """The packed words of a whole-array mask's elements in ``block`` (C order)."""
    keep = mask.unpack()
    stretched = np.broadcast_to(keep, keep.shape)
    mask_block = tuple(slice(0, 1) if extent == 1 else piece
                       for piece, extent in zip(block, mask.shape))
    return reference.pack_mask(stretched[mask_block])


CALLS = {  # name -> (function, keyword arguments); the whole call and the block call share them
    "dropout": (fastdrop.dropout, {}),
    "alpha_dropout": (fastdrop.alpha_dropout, {}),
    "gaussian_dropout": (fastdrop.gaussian_dropout, {}),
    "dropout noise_shape": (fastdrop.dropout, {"noise_shape": "first and last"}),
}


def noise_shape_of(shape):
    """A global noise shape that shares the mask along the middle axes."""
    return tuple(extent if axis in (0, len(shape) - 1) else 1 for axis, extent in enumerate(shape))


@pytest.mark.parametrize("name", list(CALLS))
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_every_block_gets_its_part_of_the_whole(backend, name, subtests):
    for_each(subtests, check_blocks, backend, name, global_shape=GLOBAL_SHAPES, offset=OFFSETS)


def check_blocks(backend, name, global_shape, offset):
    function, options = CALLS[name]
    options = dict(options)
    if "noise_shape" in options:
        options["noise_shape"] = noise_shape_of(global_shape)
    whole_input = sample(global_shape, np.float32)
    whole, record = function(whole_input, 0.3, seed=9, stream=4, offset=offset, **options,
                             backend="numpy")
    for block in blocks_of(global_shape):
        x = np.ascontiguousarray(whole_input[block])
        y, block_record = function(x, 0.3, seed=9, stream=4, offset=offset,
                                   origin=origin_of(block), global_shape=global_shape,
                                   **options, backend=backend)
        assert np.array_equal(bits(y), bits(whole[block])), (block, name)
        if isinstance(record, fastdrop.DropoutMask):
            assert np.array_equal(block_record.words, block_mask_words(record, block)), block
            assert block_record.global_shape == record.shape
        else:
            assert block_record.origin == origin_of(block)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_blocks_in_every_dtype_in_place_out_and_by_recompute(backend, dtype):
    global_shape = (11, 150)
    whole_input = sample(global_shape, dtype)
    whole, mask = fastdrop.dropout(whole_input, 0.4, seed=2, stream=8, backend="numpy")
    for block in blocks_of(global_shape, count=5, seed=1):
        where = dict(origin=origin_of(block), global_shape=global_shape)
        expected = whole[block]
        x = np.ascontiguousarray(whole_input[block])
        out = np.empty_like(x)
        assert fastdrop.dropout(x, 0.4, seed=2, stream=8, out=out, **where,
                                backend=backend)[0] is out
        assert np.array_equal(bits(out), bits(expected))
        y = x.copy()
        fastdrop.dropout(y, 0.4, seed=2, stream=8, inplace=True, **where, backend=backend)
        assert np.array_equal(bits(y), bits(expected))
        grad = fastdrop.dropout_backward_recompute(x, 0.4, seed=2, stream=8, **where,
                                                   backend=backend)
        assert np.array_equal(bits(grad), bits(expected))
        strided = np.asfortranarray(x)  # any layout of the block itself
        assert np.array_equal(bits(fastdrop.dropout(strided, 0.4, seed=2, stream=8, **where,
                                                    backend=backend)[0]), bits(expected))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_channel_dropout_blocks_may_cut_the_shared_axes(backend):
    global_shape = (4, 6, 5, 9)
    whole_input = sample(global_shape, np.float32)
    for function in (fastdrop.channel_dropout, fastdrop.feature_alpha_dropout):
        whole, mask = function(whole_input, 0.5, seed=1, stream=3, backend="numpy")
        for block in blocks_of(global_shape, count=8, seed=2):
            y, block_mask = function(np.ascontiguousarray(whole_input[block]), 0.5, seed=1,
                                     stream=3, origin=origin_of(block), global_shape=global_shape,
                                     backend=backend)
            assert np.array_equal(bits(y), bits(whole[block])), block
            assert block_mask.shape == (block[0].stop - block[0].start,
                                        block[1].stop - block[1].start, 1, 1)
            assert np.array_equal(block_mask.words, block_mask_words(mask, block))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_counts_of_a_block(backend):
    """bernoulli_mask and gaussian_noise take the block's shape as n."""
    global_shape = (9, 130)
    words = fastdrop.bernoulli_mask(math.prod(global_shape), 0.3, seed=5, stream=1)
    keep = fastdrop.unpack_mask(words, math.prod(global_shape)).reshape(global_shape)
    noise = fastdrop.gaussian_noise(math.prod(global_shape), 0.3, seed=5, stream=1)
    for block in blocks_of(global_shape, count=5, seed=3):
        shape = keep[block].shape
        where = dict(origin=origin_of(block), global_shape=global_shape)
        assert np.array_equal(fastdrop.bernoulli_mask(shape, 0.3, seed=5, stream=1, **where,
                                                      backend=backend),
                              reference.pack_mask(keep[block]))
        assert np.array_equal(fastdrop.gaussian_noise(shape, 0.3, seed=5, stream=1, **where,
                                                      backend=backend),
                              noise.reshape(global_shape)[block].ravel())


@pytest.mark.parametrize("backend", [name for name in ALL_BACKENDS if name != "numpy"])
def test_threads_split_blocks_by_words_without_changing_a_bit(backend, threads):
    global_shape = (700, 1000)  # blocks of 2**19 elements and more: several threads
    whole_input = sample(global_shape, np.float32)
    whole, _ = fastdrop.dropout(whole_input, 0.1, seed=3, backend=backend)
    for block in [(slice(0, 700), slice(37, 1000)), (slice(5, 690), slice(1, 999)),
                  (slice(0, 700), slice(0, 1))]:
        x = np.ascontiguousarray(whole_input[block])
        results = []
        for count in (1, 2):
            fastdrop.set_num_threads(count)
            results.append(fastdrop.dropout(x, 0.1, seed=3, origin=origin_of(block),
                                            global_shape=global_shape, backend=backend))
        for y, mask in results:
            assert np.array_equal(bits(y), bits(whole[block]))
            assert np.array_equal(mask.words, results[0][1].words)


BAD_BLOCKS = {  # name -> (block arguments, error, message fragment)
    "origin without global_shape": (dict(origin=(0, 0)), ValueError, "together"),
    "global_shape without origin": (dict(global_shape=(10, 10)), ValueError, "together"),
    "too few entries": (dict(origin=(0,), global_shape=(10, 10)), ValueError, "one entry"),
    "past the end": (dict(origin=(8, 0), global_shape=(10, 10)), ValueError, "does not fit"),
    "negative origin": (dict(origin=(-1, 0), global_shape=(10, 10)), ValueError, "origin"),
    "float entries": (dict(origin=(0.5, 0), global_shape=(10, 10)), TypeError, "integers"),
    "past 2**63": (dict(origin=(0, 0), global_shape=(2**62, 4)), ValueError, r"2\*\*63"),
}


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_bad_blocks_raise_and_write_nothing(backend, subtests):
    for_each(subtests, check_bad_block, backend, case=BAD_BLOCKS)


def check_bad_block(backend, case):
    where, error, fragment = BAD_BLOCKS[case]
    x = sample((3, 4), np.float32)
    before = x.copy()
    gen = fastdrop.Generator(1)
    for call in (lambda: fastdrop.dropout(x, 0.5, seed=gen, inplace=True, **where,
                                          backend=backend),
                 lambda: fastdrop.gaussian_dropout(x, 0.5, seed=gen, inplace=True, **where,
                                                   backend=backend),
                 lambda: fastdrop.dropout_backward_recompute(x, 0.5, seed=1, stream=0,
                                                             inplace=True, **where,
                                                             backend=backend)):
        with pytest.raises(error, match=fragment):
            call()
    assert np.array_equal(bits(x), bits(before)) and gen.state["stream"] == 0


def test_a_block_takes_every_offset_its_mask_takes():
    """The offset limit is the mask's size, not the global data's, with a noise shape.

    A (4, 2**20) array whose mask is (4, 1) takes offsets up to 2**63 - 4 in memory;
    each block of it must take the same offsets (dask's blocks call this way).
    """
    global_shape, noise_shape = (4, 2**20), (4, 1)
    offset = 2**63 - 4  # valid for the 4-element mask, not for the 2**22-element array
    x = np.ones((2, 2**20), np.float32)
    whole_input = np.ones(global_shape, np.float32)
    whole, _ = fastdrop.dropout(whole_input, 0.5, seed=3, offset=offset,
                                noise_shape=noise_shape)
    y, _ = fastdrop.dropout(x, 0.5, seed=3, offset=offset, noise_shape=noise_shape,
                            origin=(2, 0), global_shape=global_shape)
    assert np.array_equal(bits(y), bits(whole[2:]))
    with pytest.raises(ValueError, match="offset"):  # one more element than the mask has
        fastdrop.dropout(x, 0.5, seed=3, offset=offset + 1, noise_shape=noise_shape,
                         origin=(2, 0), global_shape=global_shape)
    with pytest.raises(ValueError, match="offset"):  # without a mask, the data's size
        fastdrop.gaussian_dropout(x, 0.5, seed=3, offset=offset, origin=(2, 0),
                                  global_shape=global_shape)
