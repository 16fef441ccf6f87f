"""Frozen known answers of the mask stream.

Every backend is checked against tests/data/mask_stream_vectors.json.

The other mask tests compare backends with `fastdrop.reference`, which is built from the
same spec helpers, so a changed spec constant moves the oracle and the kernels together.
These answers are frozen: they were written once by tests/data/make_mask_stream_vectors.py
and do not move. A failure here means the stream changed (mask words, Gaussian noise or
output values for some (seed, stream, offset, p)), which docs/mask-stream.md calls a
breaking change. Fix the code; rewrite the file only for a deliberate new major version.
"""
import hashlib
import json
import pathlib

import numpy as np
import pytest

import fastdrop
from tests.util import ALL_BACKENDS, FLOAT_DTYPES

VECTORS = json.loads(
    (pathlib.Path(__file__).parent / "data" / "mask_stream_vectors.json").read_text())


def words_of(hex_words):
    return np.array([int(word, 16) for word in hex_words], dtype=np.uint64)


def bits_hex(array):
    """Each element's bit pattern as fixed-width hex, as the data file stores it."""
    array = np.ascontiguousarray(array).reshape(-1)
    unsigned = array.view(f"u{array.dtype.itemsize}")
    return [f"{int(v):0{2 * array.dtype.itemsize}x}" for v in unsigned]


def floats_of(hex_bits, dtype):
    dtype = np.dtype(dtype)
    return np.array([int(h, 16) for h in hex_bits], dtype=f"u{dtype.itemsize}").view(dtype)


def sha256_le(array):
    array = np.ascontiguousarray(array)
    return hashlib.sha256(array.astype(array.dtype.newbyteorder("<")).tobytes()).hexdigest()


def coordinates(case):
    """The (seed, stream, offset) keywords of a case."""
    return dict(seed=int(case["seed"], 16), stream=int(case["stream"], 16),
                offset=case["offset"])


def case_id(case):
    size = f"-n={case['n']}" if "n" in case else ""
    return f"p={float.fromhex(case['p'])!r}{size}-offset={case['offset']:#x}"


def cases(section):
    return pytest.mark.parametrize("case", VECTORS[section], ids=case_id)


# ---------------------------------------------------------------- mask words


def each_case(subtests, cases, check, *args):
    """``check(case, *args)`` for each case of the data file, a subtest named by its case id."""
    for case in cases:
        with subtests.test(case=case_id(case)):
            check(case, *args)


def test_bernoulli_mask_words(any_backend, subtests):
    each_case(subtests, VECTORS["mask_words"], check_bernoulli_mask_words, any_backend)


def check_bernoulli_mask_words(case, backend):
    words = fastdrop.bernoulli_mask(case["n"], float.fromhex(case["p"]), backend=backend,
                                    **coordinates(case))
    assert [f"0x{int(w):016x}" for w in words] == case["words"]


def test_dropout_mask_words(any_backend, subtests):
    each_case(subtests, VECTORS["mask_words"], check_dropout_mask_words, any_backend)


def check_dropout_mask_words(case, backend):
    """The fused kernels draw the same words, and keep exactly the elements they mark."""
    n, p = case["n"], float.fromhex(case["p"])
    y, mask = fastdrop.dropout(np.ones(n, np.float32), p, backend=backend, **coordinates(case))
    assert [f"0x{int(w):016x}" for w in mask.words] == case["words"]
    assert np.array_equal(y != 0, fastdrop.unpack_mask(words_of(case["words"]), n))


THRESHOLD_CASES = [case for case in VECTORS["mask_words"] if "why" in case]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_threshold_lanes_in_every_call(dtype, any_backend, subtests):
    each_case(subtests, THRESHOLD_CASES, check_threshold_lanes, dtype, any_backend)


def check_threshold_lanes(case, dtype, any_backend):
    """A lane with U = T is kept, one just below T dropped, whichever path computes T from p."""
    n, p, at = case["n"], float.fromhex(case["p"]), coordinates(case)
    keep = fastdrop.unpack_mask(words_of(case["words"]), n)
    for inplace in [False, True]:
        y, mask = fastdrop.dropout(np.ones(n, dtype), p, inplace=inplace, backend=any_backend, **at)
        assert [f"0x{int(w):016x}" for w in mask.words] == case["words"]
        assert np.array_equal(y != 0, keep)
    grad = fastdrop.dropout_backward_recompute(np.ones(n, dtype), p, backend=any_backend, **at)
    assert np.array_equal(grad != 0, keep)
    _, mask = fastdrop.alpha_dropout(np.ones(n, dtype), p, backend=any_backend, **at)
    assert [f"0x{int(w):016x}" for w in mask.words] == case["words"]


# Arrays of n >= 2**19: the compiled backends split them among 2 threads, the reference
# into batches of 4096 words. The reference has no threads, so it runs once (about 0.1 s).
LARGE_RUNS = pytest.mark.parametrize(
    "backend, thread_count",
    [(name, count) for name in ALL_BACKENDS for count in ([1] if name == "numpy" else [1, 2])])


@cases("mask_words_large")
@LARGE_RUNS
def test_large_mask_words(case, backend, thread_count, threads):
    fastdrop.set_num_threads(thread_count)
    words = fastdrop.bernoulli_mask(case["n"], float.fromhex(case["p"]), backend=backend,
                                    **coordinates(case))
    assert sha256_le(words) == case["sha256"]


@cases("dropout_large")
@LARGE_RUNS
def test_large_dropout(case, backend, thread_count, threads):
    fastdrop.set_num_threads(thread_count)
    x = np.arange(case["n"], dtype=np.float32)
    assert sha256_le(x) == case["input_sha256"]
    p = float.fromhex(case["p"])
    y, mask = fastdrop.dropout(x, p, backend=backend, **coordinates(case))
    assert sha256_le(mask.words) == case["words_sha256"]
    assert sha256_le(y) == case["output_sha256"]
    grad = fastdrop.dropout_backward_recompute(x, p, backend=backend,
                                               **coordinates(case))
    assert sha256_le(grad) == case["output_sha256"]  # same map on the same values


# ---------------------------------------------------------------- Gaussian noise


def test_gaussian_noise(any_backend, subtests):
    each_case(subtests, VECTORS["gaussian_noise"], check_gaussian_noise, any_backend)


def check_gaussian_noise(case, any_backend):
    noise = fastdrop.gaussian_noise(case["n"], float.fromhex(case["p"]), backend=any_backend,
                                    **coordinates(case))
    assert noise.dtype == np.float64
    assert bits_hex(noise) == case["multipliers"]


@cases("gaussian_noise_large")
@LARGE_RUNS
def test_large_gaussian_noise(case, backend, thread_count, threads):
    fastdrop.set_num_threads(thread_count)
    noise = fastdrop.gaussian_noise(case["n"], float.fromhex(case["p"]), backend=backend,
                                    **coordinates(case))
    assert sha256_le(noise) == case["sha256"]


# ---------------------------------------------------------------- output values


def _dropout(x, grad, p, words, backend, at):
    return fastdrop.dropout(x, p, backend=backend, **at)[0]


def _dropout_in_place(x, grad, p, words, backend, at):
    fastdrop.dropout(x, p, inplace=True, backend=backend, **at)
    return x


def _dropout_backward(x, grad, p, words, backend, at):
    return fastdrop.dropout_backward(grad, words, p=p, backend=backend)


def _dropout_backward_recompute(x, grad, p, words, backend, at):
    return fastdrop.dropout_backward_recompute(grad, p, backend=backend, **at)


def _alpha_dropout(x, grad, p, words, backend, at):
    return fastdrop.alpha_dropout(x, p, backend=backend, **at)[0]


def _alpha_dropout_backward(x, grad, p, words, backend, at):
    mask = fastdrop.DropoutMask(words, shape=grad.shape, p=p, **at)
    return fastdrop.alpha_dropout_backward(grad, mask, backend=backend)


def _gaussian_dropout(x, grad, p, words, backend, at):
    return fastdrop.gaussian_dropout(x, p, backend=backend, **at)[0]


def _gaussian_dropout_in_place(x, grad, p, words, backend, at):
    fastdrop.gaussian_dropout(x, p, inplace=True, backend=backend, **at)
    return x


def _gaussian_dropout_backward(x, grad, p, words, backend, at):
    noise = fastdrop.GaussianNoise(shape=grad.shape, p=p, **at)
    return fastdrop.gaussian_dropout_backward(grad, noise, backend=backend)


# call -> the key of its answer in a case (in-place calls have the out-of-place answer)
VALUE_CALLS = {
    _dropout: "dropout",
    _dropout_in_place: "dropout",
    _dropout_backward: "dropout_backward",
    _dropout_backward_recompute: "dropout_backward",
    _alpha_dropout: "alpha_dropout",
    _alpha_dropout_backward: "alpha_dropout_backward",
    _gaussian_dropout: "gaussian_dropout",
    _gaussian_dropout_in_place: "gaussian_dropout",
    _gaussian_dropout_backward: "gaussian_dropout_backward",
}

@pytest.mark.parametrize("dtype", list(VECTORS["values"]))
def test_output_values(dtype, any_backend, subtests):
    entry = VECTORS["values"][dtype]
    for case in entry["cases"]:
        for call, answer in VALUE_CALLS.items():
            if answer not in case:  # Gaussian dropout has no answers for p = 1
                continue
            with subtests.test(case=case_id(case), call=call.__name__[1:]):
                x, grad = floats_of(entry["input"], dtype), floats_of(entry["grad"], dtype)
                result = call(x, grad, float.fromhex(case["p"]), words_of(case["words"]),
                              any_backend, coordinates(case))
                assert result.dtype == np.dtype(dtype)
                assert bits_hex(result) == case[answer]


@pytest.mark.parametrize("dtype", list(VECTORS["values"]))
def test_output_masks(dtype, any_backend, subtests):
    """dropout and alpha_dropout return the frozen words for the value inputs too."""
    x = floats_of(VECTORS["values"][dtype]["input"], dtype)
    for function in (fastdrop.dropout, fastdrop.alpha_dropout):
        for case in VECTORS["values"][dtype]["cases"]:
            with subtests.test(function=function.__name__, case=case_id(case)):
                _, mask = function(x, float.fromhex(case["p"]), backend=any_backend,
                                   **coordinates(case))
                assert [f"0x{int(w):016x}" for w in mask.words] == case["words"]
