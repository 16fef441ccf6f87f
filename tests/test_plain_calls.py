"""The usual dropout call (and its backward) runs in one step; it must change nothing.

`fastdrop._fastpath.usual_call` says which calls are usual -- an ndarray that is
C-contiguous, aligned and native-endian, a float p, an int offset, and an int seed
(with an int or no stream), a Generator or None -- and the API then takes a stream
from the source, if any, and makes one kernel call, the backend's ``dropout_plain``,
with checked machine values.
Usual calls give the bits of `fastdrop.reference` through every seed form; every
other call is declined by the check without touching anything, so that the general
path checks it and raises its own messages.
"""
import numpy as np
import pytest

import fastdrop
from fastdrop import _backends, reference
from fastdrop._backends import backend_available
from fastdrop.kernels.records import MaskParams
from fastdrop.maskstream.spec import dropout_constants
from tests.util import FLOAT_DTYPES, bits, sample

usual_call = pytest.importorskip("fastdrop._fastpath").usual_call
usual_backward = pytest.importorskip("fastdrop._fastpath").usual_backward

PLAIN_BACKENDS = [pytest.param("cython", marks=pytest.mark.skipif(
                      not backend_available("cython"), reason="the Cython extension is not built")),
                  pytest.param("numba", marks=pytest.mark.skipif(
                      not backend_available("numba"), reason="numba is not installed"))]


PLAIN_CASES = [
    # shape, p, seed, stream, offset
    ((1024,), 0.5, 1, None, 0),
    ((3, 5, 7), 0.1, 2**64 - 1, 2**64 - 1, 5),
    ((), 0.3, 9, 4, 63),
    ((0, 4), 0.5, 1, 2, 0),
    ((1000,), 0.0, 3, None, 2**63 - 1000),
    ((130,), 1.0, 3, 8, 64 * 7 + 1),
    ((65,), 1 - 2**-53, 0, 0, 2**40 + 3),
    ((513, 520), 0.1, 2**63 + 5, 2**63, 7),  # 266760 elements: threaded at 2 threads
]


# bfloat16 takes the one step as uint16 bits with dtype="bfloat16" (the PyTorch adapter's
# form; "bfloat16 bits" here); ml_dtypes' arrays take the general path: see not_usual
ONE_STEP_DTYPES = [dtype for dtype in FLOAT_DTYPES if dtype in (np.float16, np.float32, np.float64)]
BITS16 = "bfloat16 bits"
ONE_STEP_FORMS = ONE_STEP_DTYPES + [BITS16]


def one_step_sample(shape, form, salt=0):
    """(array, dtype= of the call): a sample of ``form``, bfloat16 bits as uint16."""
    if form == BITS16:
        top_halves = sample(shape, np.float32, salt).view(np.uint32) >> 16  # 0-d: a scalar
        return np.array(top_halves, dtype=np.uint16), "bfloat16"
    return sample(shape, form, salt), None


@pytest.mark.parametrize("backend", PLAIN_BACKENDS)
@pytest.mark.parametrize("dtype", ONE_STEP_FORMS)
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("shape, p, seed, stream, offset", PLAIN_CASES)
def test_plain_calls_take_the_one_step_and_match_the_reference(shape, p, seed, stream, offset,
                                                               inplace, dtype, backend):
    x, request = one_step_sample(shape, dtype)
    expected, expected_mask = reference.dropout(x, p, seed=seed, stream=stream, offset=offset,
                                                dtype=request)
    usual = usual_call(x, p, seed, stream, offset, inplace, request is not None)
    assert usual == dropout_constants(p) + (0 if stream is None else stream,)
    threshold, drop_all, scale, _ = usual
    params = MaskParams(seed, 0 if stream is None else stream, threshold, drop_all, offset, x.size)
    y, words = _backends.kernels(backend).dropout_plain(x.copy() if inplace else x, inplace, scale,
                                                        params, 2)
    assert y.shape == x.shape and y.dtype == x.dtype and y.flags.c_contiguous
    assert np.array_equal(bits(y), bits(expected))
    assert np.array_equal(words, expected_mask.words)
    # and through the public function, in place or not, with its DropoutMask
    z = x.copy()
    result, mask = fastdrop.dropout(z, p, seed=seed, stream=stream, offset=offset,
                                    inplace=inplace, dtype=request, backend=backend)
    assert (result is z) == inplace
    assert np.array_equal(bits(result), bits(expected))
    assert np.array_equal(mask.words, expected_mask.words)
    assert (mask.shape, mask.n, mask.p, mask.seed, mask.stream, mask.offset) == (
        expected_mask.shape, expected_mask.n, expected_mask.p, expected_mask.seed,
        expected_mask.stream, expected_mask.offset)


class Spy:
    """Counts a backend's dropout_plain calls (the one step) while passing them through."""

    def __init__(self, monkeypatch, backend):
        kernels = _backends.kernels(backend)
        self.calls, real = 0, kernels.dropout_plain

        def spy(*args):
            self.calls += 1
            return real(*args)
        monkeypatch.setattr(kernels, "dropout_plain", spy)


@pytest.mark.parametrize("backend", PLAIN_BACKENDS)
def test_every_seed_form_takes_the_one_step(monkeypatch, backend):
    spy = Spy(monkeypatch, backend)
    x = sample((1000,), np.float32)
    gen = fastdrop.Generator(12)
    default = fastdrop.default_generator()
    start = default.state["stream"]
    y, mask = fastdrop.dropout(x, 0.3, backend=backend)
    assert (mask.seed, mask.stream) == (default.seed, start)
    assert np.array_equal(bits(y), bits(reference.dropout(x, 0.3, seed=mask.seed,
                                                          stream=mask.stream)[0]))
    for call in (lambda: fastdrop.dropout(x, 0.3, seed=gen, backend=backend),
                 lambda: gen.dropout(x, 0.3, backend=backend)):
        y, mask = call()
        assert np.array_equal(bits(y), bits(reference.dropout(x, 0.3, seed=12,
                                                              stream=mask.stream)[0]))
    assert gen.state["stream"] == 2
    fastdrop.dropout(x, 0.3, seed=5, backend=backend)
    fastdrop.dropout(x, 0.3, seed=5, stream=9, backend=backend)
    assert spy.calls == 5


BAD_SEEDS = [  # (seed, stream, error): the general path's messages, no stream taken
    (True, None, TypeError), (-1, None, ValueError), (2**64, None, ValueError),
    (1.0, None, TypeError), (1, -1, ValueError), (1, 2**64, ValueError), (1, 1.0, TypeError),
    (None, 3, ValueError), ("generator", 3, ValueError),
]


@pytest.mark.parametrize("backend", PLAIN_BACKENDS)
@pytest.mark.parametrize("seed, stream, error", BAD_SEEDS)
def test_bad_seeds_on_usual_arrays_raise_and_take_no_stream(monkeypatch, backend, seed, stream,
                                                            error):
    spy = Spy(monkeypatch, backend)
    x = sample((100,), np.float32)
    before = x.copy()
    gen = fastdrop.Generator(4)
    seed = gen if seed == "generator" else seed
    default_before = fastdrop.default_generator().state
    with pytest.raises(error):
        fastdrop.dropout(x, 0.5, seed=seed, stream=stream, inplace=True, backend=backend)
    assert spy.calls == 0 and np.array_equal(bits(x), bits(before))
    assert gen.state["stream"] == 0 and fastdrop.default_generator().state == default_before


def not_usual():
    """Calls the check must decline: (description, x, p, seed, stream, offset, inplace)."""
    x = sample((40, 30), np.float32)
    readonly = x.copy()
    readonly.flags.writeable = False
    swapped = x.astype(x.dtype.newbyteorder())

    class Subclass(np.ndarray):
        pass

    return [
        ("list", x.tolist(), 0.5, 1, None, 0, False),
        ("Fortran order", np.asfortranarray(x), 0.5, 1, None, 0, False),
        ("strided view", x[:, ::2], 0.5, 1, None, 0, True),
        ("byte-swapped", swapped, 0.5, 1, None, 0, False),
        ("subclass", x.copy().view(Subclass), 0.5, 1, None, 0, False),
        ("integer array", np.arange(10), 0.5, 1, None, 0, False),
        ("complex array", x.astype(np.complex64), 0.5, 1, None, 0, False),
        ("read-only in place", readonly, 0.5, 1, None, 0, True),
        ("p a NumPy float", x, np.float64(0.5), 1, None, 0, False),
        ("p an int", x, 1, 1, None, 0, False),
        ("p NaN", x, float("nan"), 1, None, 0, False),
        ("p above 1", x, 1.5, 1, None, 0, False),
        ("p below 0", x, -1e-300, 1, None, 0, False),
        ("offset negative", x, 0.5, 1, None, -1, False),
        ("offset past 2**63", x, 0.5, 1, None, 2**63 - x.size + 1, False),
        ("offset a NumPy int", x, 0.5, 1, None, np.int64(3), False),
        ("offset bool", x, 0.5, 1, None, False, False),
        ("seed a NumPy int", x, 0.5, np.uint64(1), None, 0, False),
        ("seed bool", x, 0.5, True, None, 0, False),
        ("seed negative", x, 0.5, -1, None, 0, False),
        ("seed 2**64", x, 0.5, 2**64, None, 0, False),
        ("seed a float", x, 0.5, 1.0, None, 0, False),
        ("stream 2**64", x, 0.5, 1, 2**64, 0, False),
        ("stream negative", x, 0.5, 1, -1, 0, False),
        ("stream a float", x, 0.5, 1, 1.0, 0, False),
        ("stream with seed None", x, 0.5, None, 3, 0, False),
        ("stream with a Generator", x, 0.5, fastdrop.Generator(1), 3, 0, False),
        ("bfloat16 bits", x.view(np.uint16), 0.5, 1, None, 0, False),
    ]


@pytest.mark.parametrize("case", not_usual(), ids=lambda case: case[0])
def test_anything_else_is_declined_untouched(case):
    _, x, p, seed, stream, offset, inplace = case
    before = np.array(x, copy=True)
    assert usual_call(x, p, seed, stream, offset, inplace) is None
    assert np.array_equal(bits(np.asarray(x)), bits(before))


def not_bits16():
    """Arrays the one step declines with dtype="bfloat16": only uint16 arrays as usual are bits."""
    bits16, _ = one_step_sample((40, 30), BITS16)
    return [("float32", sample((40, 30), np.float32)), ("int16", bits16.view(np.int16)),
            ("Fortran order", np.asfortranarray(bits16)), ("strided view", bits16[:, ::2]),
            ("byte-swapped", bits16.astype(bits16.dtype.newbyteorder()))]


@pytest.mark.parametrize("case", not_bits16(), ids=lambda case: case[0])
def test_the_bfloat16_request_takes_only_usual_uint16_arrays(case):
    _, x = case
    assert usual_call(x, 0.5, 1, None, 0, False, True) is None
    assert usual_backward(x, reference.dropout(np.ones(x.shape, np.float32), 0.5, seed=1)[1],
                          None, False, True) is None


def test_the_limits_themselves_are_usual():
    x = np.ones(10, np.float32)
    assert usual_call(x, 0.0, 2**64 - 1, 2**64 - 1, 0, True)[3] == 2**64 - 1
    assert usual_call(x, 1.0, 0, None, 2**63 - 10, True)[3] == 0
    assert usual_call(x, 0.5, None, None, 0, True)[3] is None
    assert usual_call(x, 0.5, fastdrop.Generator(1), None, 0, True)[3] is None
    readonly = x.copy()
    readonly.flags.writeable = False
    assert usual_call(readonly, 0.5, 0, None, 0, False) is not None


# ---------------------------------------------------------------- the usual backward

@pytest.mark.parametrize("backend", PLAIN_BACKENDS)
@pytest.mark.parametrize("dtype", ONE_STEP_FORMS)
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("raw_words", [False, True])
@pytest.mark.parametrize("shape, p, seed, stream, offset", PLAIN_CASES)
def test_usual_backward_takes_one_step_and_matches_the_reference(shape, p, seed, stream, offset,
                                                                 raw_words, inplace, dtype,
                                                                 backend, monkeypatch):
    x, request = one_step_sample(shape, dtype)
    _, mask = reference.dropout(x, p, seed=seed, stream=stream, offset=offset, dtype=request)
    grad, _ = one_step_sample(shape, dtype, salt=1)
    expected = reference.dropout_backward(grad, mask, dtype=request)
    given, given_p = (mask.words, p) if raw_words else (mask, None)
    assert usual_backward(grad, given, given_p, inplace, request is not None) is not None

    def general_path(*arguments):
        raise AssertionError("the usual backward took the general path")
    monkeypatch.setattr(fastdrop._api, "_apply_stored_mask", general_path)
    argument = grad.copy()
    result = fastdrop.dropout_backward(argument, given, p=given_p, inplace=inplace,
                                       dtype=request, backend=backend)
    assert (result is argument) == inplace and result.shape == grad.shape
    assert np.array_equal(bits(result), bits(expected))


def not_usual_backward():
    """(name, grad, mask, p, inplace): calls the usual backward declines."""
    grad = sample((6, 70), np.float32)  # 7 words
    _, mask = reference.dropout(grad, 0.25, seed=3)
    readonly = grad.copy()
    readonly.flags.writeable = False
    other_shape = reference.dropout(grad.reshape(70, 6), 0.25, seed=3)[1]
    return [
        ("transposed grad", grad.T.copy().T, mask, None, False),
        ("a subclass", grad.view(np.matrix), mask, None, False),
        ("read-only in place", readonly, mask, None, True),
        ("mask of another shape", grad, other_shape, None, False),
        ("p given with a DropoutMask", grad, mask, 0.25, False),
        ("raw words without p", grad, mask.words, None, False),
        ("raw words, p an int", grad, mask.words, 0, False),
        ("raw words, p > 1", grad, mask.words, 1.5, False),
        ("raw words, too few", grad, mask.words[:-1], 0.25, False),
        ("raw words, int64", grad, mask.words.view(np.int64), 0.25, False),
        ("raw words, strided", grad, np.repeat(mask.words, 2)[::2], 0.25, False),
        ("grad float16 bits as uint16", grad.astype(np.float16).view(np.uint16), mask, None,
         False),
    ]


@pytest.mark.parametrize("case", not_usual_backward(), ids=lambda case: case[0])
def test_any_other_backward_is_declined_untouched(case):
    _, grad, mask, p, inplace = case
    before = np.array(grad, copy=True)
    assert usual_backward(grad, mask, p, inplace) is None
    assert np.array_equal(bits(np.asarray(grad)), bits(before))
