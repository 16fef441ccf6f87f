"""Bad input raises the documented error, names the offending value, and writes nothing.

One property per file: every check of the public functions runs before any write,
so after an error x, out, grad and the mask words hold exactly the bytes they held
before. Every case runs on every backend of the registry, the NumPy reference
included, so a new backend cannot skip a check.
"""
import math

import numpy as np
import pytest

import fastdrop

BACKENDS = fastdrop.available_backends()
SHAPE = (5, 13)  # 65 elements: two mask words, the second one partly used
N = math.prod(SHAPE)


class Arrays:
    """Fresh arrays for one case; `keep` registers any extra array the case passes in."""

    def __init__(self):
        rng = np.random.default_rng(0)
        self.x = rng.uniform(1.0, 2.0, SHAPE).astype(np.float32)
        self.grad = rng.uniform(1.0, 2.0, SHAPE).astype(np.float32)
        # -7 is a value no call here would write (inputs are >= 1, results 0 or x * s > 0).
        self.out = np.full(SHAPE, -7.0, dtype=np.float32)
        _, self.mask = fastdrop.reference.dropout(np.ones(SHAPE, np.float32), 0.5, seed=11)
        self.words = self.mask.words
        self._kept = []
        for array in (self.x, self.grad, self.out, self.words):
            self.keep(array)

    def keep(self, array):
        """Remember the array and its bytes as they are before the call."""
        self._kept.append((array, array.dtype, array.shape, array.tobytes()))
        return array

    def read_only(self, array):
        array = self.keep(array.copy())
        array.setflags(write=False)
        return array

    def mask_for(self, shape, p=0.5):
        _, mask = fastdrop.reference.dropout(np.ones(shape, np.float32), p, seed=11)
        self.keep(mask.words)
        return mask

    def changed(self):
        """The kept arrays whose dtype, shape or bytes differ from when they were kept."""
        return [array for array, dtype, shape, data in self._kept
                if (array.dtype, array.shape, array.tobytes()) != (dtype, shape, data)]


def dropout(a, backend, *args, **kwargs):
    kwargs.setdefault("seed", 1)
    return fastdrop.dropout(*args, backend=backend, **kwargs)


def backward(a, backend, *args, **kwargs):
    return fastdrop.dropout_backward(*args, backend=backend, **kwargs)


def recompute(a, backend, *args, **kwargs):
    kwargs.setdefault("seed", 1)
    kwargs.setdefault("stream", 0)
    return fastdrop.dropout_backward_recompute(*args, backend=backend, **kwargs)


def bernoulli(a, backend, *args, **kwargs):
    kwargs.setdefault("seed", 1)
    return fastdrop.bernoulli_mask(*args, backend=backend, **kwargs)


def case(case_id, error, fragment, call):
    """A bad call: ``call(arrays, backend)`` must raise ``error`` with ``fragment`` in its message."""
    return pytest.param(error, fragment, call, id=case_id)


BAD_P_VALUES = [-0.1, 1.5, math.inf, -math.inf, math.nan]
WRONG_TYPE_P = ["half", None, True, np.bool_(False), [0.5]]

P_CASES = (
    [case(f"dropout-p={p!r}", ValueError, f"p={p!r}",
          lambda a, b, p=p: dropout(a, b, a.x, p, inplace=True)) for p in BAD_P_VALUES]
    + [case(f"dropout-p={p!r}", TypeError, repr(p),
            lambda a, b, p=p: dropout(a, b, a.x, p, inplace=True)) for p in WRONG_TYPE_P]
    + [case(f"recompute-p={p!r}", ValueError, f"p={p!r}",
            lambda a, b, p=p: recompute(a, b, a.grad, p, out=a.out)) for p in BAD_P_VALUES]
    + [case(f"recompute-p={p!r}", TypeError, repr(p),
            lambda a, b, p=p: recompute(a, b, a.grad, p, inplace=True)) for p in WRONG_TYPE_P]
    + [case(f"bernoulli-p={p!r}", ValueError, f"p={p!r}",
            lambda a, b, p=p: bernoulli(a, b, N, p)) for p in BAD_P_VALUES]
    + [case(f"bernoulli-p={p!r}", TypeError, repr(p),
            lambda a, b, p=p: bernoulli(a, b, N, p)) for p in WRONG_TYPE_P]
    # dropout_backward: p given next to raw words, or next to a DropoutMask
    + [case(f"backward-words-p={p!r}", ValueError, f"p={p!r}",
            lambda a, b, p=p: backward(a, b, a.grad, a.words, p=p, inplace=True))
       for p in BAD_P_VALUES]
    + [case(f"backward-mask-p={p!r}", ValueError, f"p={p!r}",
            lambda a, b, p=p: backward(a, b, a.grad, a.mask, p=p, out=a.out))
       for p in BAD_P_VALUES]
    + [case(f"backward-words-p={p!r}", TypeError, repr(p),
            lambda a, b, p=p: backward(a, b, a.grad, a.words, p=p, inplace=True))
       for p in WRONG_TYPE_P if p is not None]  # p=None with raw words is a MASK_CASE
)

NOT_FLOAT = [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, object]

ARRAY_CASES = (
    [case(f"dropout-x={np.dtype(t)}", TypeError, str(np.dtype(t)),
          lambda a, b, t=t: dropout(a, b, a.keep(np.ones(SHAPE, t)), 0.5, inplace=True))
     for t in NOT_FLOAT]
    + [case(f"dropout-x={np.dtype(t)}-out", TypeError, str(np.dtype(t)),
            lambda a, b, t=t: dropout(a, b, a.keep(np.ones(SHAPE, t)), 0.5, out=a.out))
       for t in NOT_FLOAT]
    + [case(f"backward-grad={np.dtype(t)}", TypeError, str(np.dtype(t)),
            lambda a, b, t=t: backward(a, b, a.keep(np.ones(SHAPE, t)), a.mask, inplace=True))
       for t in NOT_FLOAT]
    + [case(f"recompute-grad={np.dtype(t)}", TypeError, str(np.dtype(t)),
            lambda a, b, t=t: recompute(a, b, a.keep(np.ones(SHAPE, t)), 0.5, out=a.out))
       for t in NOT_FLOAT]
    + [
        case("dropout-x=list-of-int", TypeError, "int",
             lambda a, b: dropout(a, b, [1, 2, 3], 0.5)),
        case("dropout-x=complex-scalar", TypeError, "complex",
             lambda a, b: dropout(a, b, 1 + 2j, 0.5)),
    ]
)

TARGET_CASES = [
    case("dropout-inplace-read-only", ValueError, "x is read-only",
         lambda a, b: dropout(a, b, a.read_only(a.x), 0.5, inplace=True)),
    case("dropout-inplace-read-only-view", ValueError, "x is read-only",
         lambda a, b: dropout(a, b, a.read_only(a.x).T, 0.5, inplace=True)),
    case("backward-inplace-read-only", ValueError, "grad is read-only",
         lambda a, b: backward(a, b, a.read_only(a.grad), a.mask, inplace=True)),
    case("recompute-inplace-read-only", ValueError, "grad is read-only",
         lambda a, b: recompute(a, b, a.read_only(a.grad), 0.5, inplace=True)),
    case("dropout-inplace-list", TypeError, "list",
         lambda a, b: dropout(a, b, [1.0, 2.0], 0.5, inplace=True)),
    case("backward-inplace-list", TypeError, "list",
         lambda a, b: backward(a, b, [1.0, 2.0], a.mask_for((2,)), inplace=True)),
    case("recompute-inplace-list", TypeError, "list",
         lambda a, b: recompute(a, b, [1.0, 2.0], 0.5, inplace=True)),
    case("dropout-inplace-and-out", ValueError, "out=",
         lambda a, b: dropout(a, b, a.x, 0.5, inplace=True, out=a.out)),
    case("backward-inplace-and-out", ValueError, "out=",
         lambda a, b: backward(a, b, a.grad, a.mask, inplace=True, out=a.out)),
    case("recompute-inplace-and-out", ValueError, "out=",
         lambda a, b: recompute(a, b, a.grad, 0.5, inplace=True, out=a.out)),
    # out of x's size but another shape is still the wrong shape
    case("dropout-out-flat", ValueError, f"({N},)",
         lambda a, b: dropout(a, b, a.x, 0.5, out=a.keep(np.zeros(N, np.float32)))),
    case("dropout-out-transposed-shape", ValueError, "(13, 5)",
         lambda a, b: dropout(a, b, a.x, 0.5, out=a.keep(np.zeros((13, 5), np.float32)))),
    case("backward-out-shape", ValueError, "(5, 12)",
         lambda a, b: backward(a, b, a.grad, a.mask, out=a.keep(np.zeros((5, 12), np.float32)))),
    case("recompute-out-shape", ValueError, "(5, 14)",
         lambda a, b: recompute(a, b, a.grad, 0.5, out=a.keep(np.zeros((5, 14), np.float32)))),
    case("dropout-out-float64", TypeError, "float64",
         lambda a, b: dropout(a, b, a.x, 0.5, out=a.keep(np.zeros(SHAPE, np.float64)))),
    case("dropout-out-float16", TypeError, "float16",
         lambda a, b: dropout(a, b, a.x, 0.5, out=a.keep(np.zeros(SHAPE, np.float16)))),
    case("backward-out-float64", TypeError, "float64",
         lambda a, b: backward(a, b, a.grad, a.mask, out=a.keep(np.zeros(SHAPE, np.float64)))),
    case("recompute-out-int32", TypeError, "int32",
         lambda a, b: recompute(a, b, a.grad, 0.5, out=a.keep(np.zeros(SHAPE, np.int32)))),
    case("dropout-out-read-only", ValueError, "read-only",
         lambda a, b: dropout(a, b, a.x, 0.5, out=a.read_only(a.out))),
    case("backward-out-read-only", ValueError, "read-only",
         lambda a, b: backward(a, b, a.grad, a.mask, out=a.read_only(a.out))),
    case("recompute-out-read-only", ValueError, "read-only",
         lambda a, b: recompute(a, b, a.grad, 0.5, out=a.read_only(a.out))),
    case("dropout-out-list", TypeError, "list",
         lambda a, b: dropout(a, b, a.x, 0.5, out=[0.0] * N)),
]

MASK_CASES = [
    # 64 elements fit one word, 65 need two: the word count gives it away
    case("mask-for-fewer-elements", ValueError, "64",
         lambda a, b: backward(a, b, a.grad, a.mask_for((64,)), inplace=True)),
    # 66 elements also need two words: only the element count gives it away
    case("mask-for-more-elements-same-words", ValueError, "66",
         lambda a, b: backward(a, b, a.grad, a.mask_for((6, 11)), out=a.out)),
    case("mask-for-empty", ValueError, "0",
         lambda a, b: backward(a, b, a.grad, a.mask_for((0,)), inplace=True)),
    case("words-too-many", ValueError, "3",
         lambda a, b: backward(a, b, a.grad, a.keep(np.zeros(3, np.uint64)), p=0.5,
                               inplace=True)),
    case("words-too-few", ValueError, "1",
         lambda a, b: backward(a, b, a.grad, a.words[:1], p=0.5, out=a.out)),
    case("p-disagrees-with-mask", ValueError, "p=0.25",
         lambda a, b: backward(a, b, a.grad, a.mask, p=0.25, inplace=True)),
    case("p-disagrees-with-mask-slightly", ValueError, repr(np.nextafter(0.5, 1.0)),
         lambda a, b: backward(a, b, a.grad, a.mask, p=np.nextafter(0.5, 1.0), inplace=True)),
    case("words-without-p", ValueError, "p is required",
         lambda a, b: backward(a, b, a.grad, a.words, inplace=True)),
    case("words-int64", TypeError, "int64",
         lambda a, b: backward(a, b, a.grad, a.words.view(np.int64), p=0.5, inplace=True)),
    case("words-uint32", TypeError, "uint32",
         lambda a, b: backward(a, b, a.grad, a.words.view(np.uint32), p=0.5, out=a.out)),
    case("words-float64", TypeError, "float64",
         lambda a, b: backward(a, b, a.grad, a.keep(np.zeros(2)), p=0.5, inplace=True)),
    case("words-list-of-int", TypeError, "int64",
         lambda a, b: backward(a, b, a.grad, [0, 1], p=0.5, inplace=True)),
    case("words-2d", TypeError, "(2, 1)",
         lambda a, b: backward(a, b, a.grad, a.words.reshape(2, 1), p=0.5, inplace=True)),
    case("mask-object-words-int64", TypeError, "int64",
         lambda a, b: backward(a, b, a.grad, fastdrop.DropoutMask(
             a.words.view(np.int64), shape=SHAPE, p=0.5, seed=11, stream=0, offset=0),
             inplace=True)),
    case("mask-object-words-count", ValueError, "1",
         lambda a, b: backward(a, b, a.grad, fastdrop.DropoutMask(
             a.words[:1], shape=SHAPE, p=0.5, seed=11, stream=0, offset=0), inplace=True)),
]

TOO_BIG = 2**64
SEED_STREAM_CASES = []
for _name in ("seed", "stream"):
    for _value in (-1, TOO_BIG, 2**70):
        SEED_STREAM_CASES += [
            case(f"dropout-{_name}={_value}", ValueError, f"{_name}={_value}",
                 lambda a, b, k=_name, v=_value: dropout(a, b, a.x, 0.5, inplace=True,
                                                         **{"seed": 1, k: v})),
            case(f"recompute-{_name}={_value}", ValueError, f"{_name}={_value}",
                 lambda a, b, k=_name, v=_value: recompute(a, b, a.grad, 0.5, out=a.out,
                                                           **{k: v})),
            case(f"bernoulli-{_name}={_value}", ValueError, f"{_name}={_value}",
                 lambda a, b, k=_name, v=_value: bernoulli(a, b, N, 0.5, **{k: v})),
        ]
    for _value in (1.0, 1.5, np.float64(2.0), "3", True):
        SEED_STREAM_CASES += [
            case(f"dropout-{_name}={_value!r}", TypeError, repr(_value),
                 lambda a, b, k=_name, v=_value: dropout(a, b, a.x, 0.5, inplace=True,
                                                         **{"seed": 1, k: v})),
            case(f"recompute-{_name}={_value!r}", TypeError, repr(_value),
                 lambda a, b, k=_name, v=_value: recompute(a, b, a.grad, 0.5, inplace=True,
                                                           **{k: v})),
            case(f"bernoulli-{_name}={_value!r}", TypeError, repr(_value),
                 lambda a, b, k=_name, v=_value: bernoulli(a, b, N, 0.5, **{k: v})),
        ]
SEED_STREAM_CASES += [
    case("dropout-stream-without-seed", ValueError, "stream=3",
         lambda a, b: fastdrop.dropout(a.x, 0.5, stream=3, inplace=True, backend=b)),
    case("recompute-seed=None", TypeError, "None",
         lambda a, b: recompute(a, b, a.grad, 0.5, seed=None, inplace=True)),
    case("recompute-stream=None", TypeError, "None",
         lambda a, b: recompute(a, b, a.grad, 0.5, stream=None, inplace=True)),
]

LAST_OFFSET = 2**63 - N  # the largest offset that still fits N elements
OFFSET_CASES = [
    case("dropout-offset=-1", ValueError, "offset=-1",
         lambda a, b: dropout(a, b, a.x, 0.5, offset=-1, inplace=True)),
    case("dropout-offset-past-end", ValueError, f"offset={LAST_OFFSET + 1}",
         lambda a, b: dropout(a, b, a.x, 0.5, offset=LAST_OFFSET + 1, inplace=True)),
    case("dropout-offset-past-end-out", ValueError, f"offset={LAST_OFFSET + 1}",
         lambda a, b: dropout(a, b, a.x, 0.5, offset=LAST_OFFSET + 1, out=a.out)),
    case("dropout-offset=2**63", ValueError, f"offset={2**63}",
         lambda a, b: dropout(a, b, a.x, 0.5, offset=2**63, inplace=True)),
    case("dropout-offset=2**64", ValueError, f"offset={2**64}",
         lambda a, b: dropout(a, b, a.x, 0.5, offset=2**64, inplace=True)),
    case("dropout-offset=1.0", TypeError, "1.0",
         lambda a, b: dropout(a, b, a.x, 0.5, offset=1.0, inplace=True)),
    # seed=None takes a stream from the default Generator; the offset check must still fire
    case("dropout-default-generator-offset=-1", ValueError, "offset=-1",
         lambda a, b: fastdrop.dropout(a.x, 0.5, offset=-1, inplace=True, backend=b)),
    case("recompute-offset=-1", ValueError, "offset=-1",
         lambda a, b: recompute(a, b, a.grad, 0.5, offset=-1, inplace=True)),
    case("recompute-offset-past-end", ValueError, f"offset={LAST_OFFSET + 1}",
         lambda a, b: recompute(a, b, a.grad, 0.5, offset=LAST_OFFSET + 1, out=a.out)),
    case("bernoulli-offset=-1", ValueError, "offset=-1",
         lambda a, b: bernoulli(a, b, N, 0.5, offset=-1)),
    case("bernoulli-offset-past-end", ValueError, f"offset={LAST_OFFSET + 1}",
         lambda a, b: bernoulli(a, b, N, 0.5, offset=LAST_OFFSET + 1)),
    case("bernoulli-n=-1", ValueError, "n=-1",
         lambda a, b: bernoulli(a, b, -1, 0.5)),
    case("bernoulli-n=2.0", TypeError, "2.0",
         lambda a, b: bernoulli(a, b, 2.0, 0.5)),
]

# The backend argument itself: checked first, whatever else is wrong.
BACKEND_CASES = [
    case(f"{name}-backend={bad!r}", ValueError, repr(bad),
         lambda a, b, call=call, bad=bad: call(a, bad))
    for bad in ("cuda", "NUMBA", "", None)
    for name, call in [
        ("dropout", lambda a, bad: fastdrop.dropout(a.x, 0.5, seed=1, inplace=True, backend=bad)),
        ("backward", lambda a, bad: fastdrop.dropout_backward(a.grad, a.mask, out=a.out,
                                                              backend=bad)),
        ("recompute", lambda a, bad: fastdrop.dropout_backward_recompute(
            a.grad, 0.5, seed=1, stream=0, inplace=True, backend=bad)),
        ("bernoulli", lambda a, bad: fastdrop.bernoulli_mask(N, 0.5, seed=1, backend=bad)),
    ]
]

ALL_CASES = (P_CASES + ARRAY_CASES + TARGET_CASES + MASK_CASES + SEED_STREAM_CASES
             + OFFSET_CASES + BACKEND_CASES)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("error, fragment, call", ALL_CASES)
def test_bad_input_raises_and_writes_nothing(backend, error, fragment, call):
    arrays = Arrays()
    with pytest.raises(error) as raised:
        call(arrays, backend)
    assert type(raised.value) is error  # not a subclass the caller would not expect
    assert fragment in str(raised.value), f"message does not name {fragment!r}: {raised.value}"
    assert not arrays.changed(), "an array was written before the error"


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_input_through_strided_views_writes_nothing(backend):
    """Strided and transposed arrays go through private copies; a late error still writes nothing."""
    base = np.random.default_rng(1).uniform(1.0, 2.0, (10, 26)).astype(np.float64)
    out_base = np.full((26, 10), -7.0)
    before = (base.tobytes(), out_base.tobytes())
    x = base[::2, ::2]  # (5, 13), not contiguous
    with pytest.raises(ValueError, match="seed=-1"):
        fastdrop.dropout(x, 0.5, seed=-1, inplace=True, backend=backend)
    with pytest.raises(ValueError, match="stream=-1"):
        fastdrop.dropout_backward_recompute(base.T, 0.5, seed=1, stream=-1, inplace=True,
                                            backend=backend)
    with pytest.raises(ValueError, match="offset"):
        fastdrop.dropout(base, 0.5, seed=1, offset=2**63 - base.size + 1, out=out_base.T,
                         backend=backend)
    _, mask = fastdrop.dropout(np.ones(x.size - 1), 0.5, seed=1, backend=backend)
    with pytest.raises(ValueError, match=str(x.size - 1)):
        fastdrop.dropout_backward(x, mask, inplace=True, backend=backend)
    assert (base.tobytes(), out_base.tobytes()) == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_limits_themselves_are_accepted(backend):
    """The edges of the documented ranges are valid: the checks are not off by one."""
    x = np.ones(N, np.float32)
    for p in (0.0, 1.0, 0, 1, np.float32(0.5), np.float16(0.25)):
        fastdrop.dropout(x, p, seed=1, backend=backend)
    for seed, stream in ((0, 0), (2**64 - 1, 2**64 - 1), (np.uint64(2**64 - 1), np.int8(3))):
        y, mask = fastdrop.dropout(x, 0.5, seed=seed, stream=stream, backend=backend)
        assert (mask.seed, mask.stream) == (int(seed), int(stream))
    y, mask = fastdrop.dropout(x, 0.5, seed=1, offset=LAST_OFFSET, backend=backend)
    assert mask.offset == LAST_OFFSET
    words = fastdrop.bernoulli_mask(N, 0.5, seed=1, offset=LAST_OFFSET, backend=backend)
    np.testing.assert_array_equal(words, mask.words)
    # a mask of another shape but the same number of elements lines up in C order
    grad = np.ones(SHAPE, np.float32)
    fastdrop.dropout_backward(grad, mask, p=0.5, backend=backend)
    fastdrop.dropout_backward(grad, mask.words, p=0.5, backend=backend)


@pytest.mark.parametrize("backend", fastdrop.available_backends())
@pytest.mark.parametrize("kwargs, error", [
    (dict(seed=-1), ValueError), (dict(seed=1.5), TypeError), (dict(stream=3), ValueError),
    (dict(seed=1, stream=2**64), ValueError), (dict(seed=1, offset=-1), ValueError),
])
def test_training_off_still_checks_every_argument(backend, kwargs, error):
    """dropout(training=False) validates like training=True and writes nothing on error."""
    x = np.arange(6, dtype=np.float32)
    out = np.full(6, 9.0, np.float32)
    with pytest.raises(error):
        fastdrop.dropout(x, 0.5, training=False, out=out, backend=backend, **kwargs)
    assert np.all(out == 9.0)
