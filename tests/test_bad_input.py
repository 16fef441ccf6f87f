"""Bad input raises the documented error, names the offending value, writes nothing.

It also takes no stream.

One property per file: every check of the public functions runs before anything is
written or drawn. After an error x, out, grad and the mask words hold exactly the bytes
they held before, and neither the Generator passed as ``seed`` nor the default Generator
(``seed=None``) has handed out a stream. Every case runs on every backend, the NumPy
reference included, so a new backend cannot skip a check.

Two kinds of cases: a grid over the registry of tests/util.py (wrong backends, dtypes,
targets, p, seeds, streams, offsets and counts for every function that takes them, so a
new function gets them all), and explicit cases for what only some functions have (mask
words and records, noise shapes, broadcast_dims, channel axes, scales, weights).
"""
import math

import numpy as np
import pytest

import fastdrop
from tests.util import REGISTRY, Unchanged, reference_words, unchanged

SMALL = (5, 13)  # 65 elements: two mask words, the second one partly used
N = math.prod(SMALL)
BATCH = (2, 3, 4, 5)  # 120 elements: two mask words, the second one partly used
NOISE = (2, 3, 1, 1)  # BATCH's channel mask: 6 mask elements
M = math.prod(NOISE)
NESTED_LIST = [[[1.0, 2.0]], [[3.0, 4.0]]]  # (2, 1, 2): a channel axis with an axis to share


class Arrays(Unchanged):
    """Fresh arrays and seeds for one case; `keep` registers any extra array the case passes in.

    ``seed`` is what the case passes as seed: an int, a Generator (whose state must not
    move), or None (the default Generator, whose state must not move either). ``mask`` is
    a mask of BATCH's channels for BATCH and one bit per element for SMALL; ``words`` has
    one bit per element.
    """

    def __init__(self, shape, seed_kind="int"):
        super().__init__()
        rng = np.random.default_rng(0)
        self.x = self.keep(rng.uniform(1.0, 2.0, shape).astype(np.float32))
        self.grad = self.keep(rng.uniform(1.0, 2.0, shape).astype(np.float32))
        # -7 is a value no call here would write (inputs are in [1, 2], results 0 or near x)
        self.out = self.keep(np.full(shape, -7.0, dtype=np.float32))
        self.generator = self.keep(fastdrop.Generator(2024))
        self.keep(fastdrop.default_generator())
        self.seed = {"int": 1, "generator": self.generator, "default": None}[seed_kind]
        self.mask = self.mask_for(NOISE if shape == BATCH else shape)
        self.words = self.mask_for(shape).words
        self.noise = fastdrop.GaussianNoise(shape=shape, p=0.5, seed=11, stream=0, offset=0)

    def read_only(self, array):
        array = self.keep(array.copy())
        array.setflags(write=False)
        return array

    def mask_for(self, shape, p=0.5):
        words = self.keep(reference_words(math.prod(shape), p, 11, 0, 0))
        return fastdrop.DropoutMask(words, shape=shape, p=p, seed=11, stream=0, offset=0)


def case(case_id, error, fragment, call, seeded=False, shape=BATCH):
    """A bad call: ``call(arrays, backend)`` must raise ``error`` with ``fragment`` in its message.

    ``seeded`` cases pass ``a.seed`` and run with an int, a Generator and the default
    Generator; ``shape`` is the shape of the case's arrays.
    """
    return (case_id, error, fragment, call, seeded, shape)


# ---------------------------------------------------------------- the registry grid

BAD_BACKENDS = ("cuda", "NUMBA", "", None)
NOT_FLOAT = [np.int32, np.int64, np.uint8, np.bool_, np.complex64, np.complex128, object]
BAD_P_VALUES = [-0.1, 1.5, math.inf, -math.inf, math.nan]
NOT_BELOW_ONE = [1.0, 1, np.float32(1.0)]  # for p in [0, 1)
WRONG_TYPE_P = ["half", None, True, np.bool_(False), [0.5]]
BAD_SEEDS = [(-1, ValueError), (2**64, ValueError), (2**70, ValueError), (1.0, TypeError),
             (1.5, TypeError), (np.float64(2.0), TypeError), ("3", TypeError), (True, TypeError)]
# The first function of each way of checking takes every value of the lists above; the
# others take one or two of each kind, enough to show that they make the check.
FULL_LISTS = {"dropout", "dropout_backward", "dropout_backward_recompute", "bernoulli_mask",
              "gaussian_dropout", "gaussian_noise"}
SOME_NOT_FLOAT = [np.int64, np.bool_, object]
SOME_BAD_P = [-0.1, 1.5, math.nan]
SOME_WRONG_TYPE_P = ["half", True]
SOME_BAD_SEEDS = [(-1, ValueError), (2**64, ValueError), (1.5, TypeError), (True, TypeError)]


def targets(entry):
    """Where a grid case sends the result: in place (else a new array), and out=.

    out= only where the function takes it.
    """
    return ["inplace" if entry.inplace else None] + (["out"] if entry.out else [])


THE_CASES_BACKEND = object()


def grid_call(entry, target, x=None, backend=THE_CASES_BACKEND, **changes):
    """``call(arrays, backend)`` of entry with the standard arguments, changed by ``changes``.

    ``changes`` holds p, seed, stream, offset or options; x is ``a.x`` unless ``x(a)`` gives
    another; the record a function reads is made from the standard arguments and kept.
    """
    def call(a, b):
        key = dict(seed=a.seed, stream=None) if entry.draws_stream else {}
        key.update(changes)
        options = {name: key.pop(name) for name in list(key)
                   if name not in ("p", "seed", "stream", "offset")}
        first = a.x if x is None else x(a)
        positional, keywords = entry.bind(first, **key) if entry.takes_key else entry.bind(first)
        a.keep_all(positional[1:])
        a.keep_all(keywords.values())
        if target == "inplace":
            options["inplace"] = True
        elif target == "out":
            options["out"] = a.out
        chosen = b if backend is THE_CASES_BACKEND else backend
        return entry.run(chosen, positional, {**keywords, **options})
    return call


def grid_cases(entry):
    """The cases every function of its kind must pass."""
    cases = []
    name = entry.name
    seeded = entry.draws_stream
    primary = targets(entry)[0]
    for bad in BAD_BACKENDS:
        cases.append(case(f"{name}-backend={bad!r}", ValueError, repr(bad),
                          grid_call(entry, primary, backend=bad)))
    if entry.takes_array:
        for target in targets(entry):
            suffix = "" if target == primary else f"-{target}"
            for t in NOT_FLOAT if name in FULL_LISTS else SOME_NOT_FLOAT:
                cases.append(case(
                    f"{name}-{entry.input}={np.dtype(t)}{suffix}", TypeError, str(np.dtype(t)),
                    grid_call(entry, target, x=lambda a, t=t: a.keep(np.ones(a.x.shape, t))),
                    seeded))
    if entry.inplace:
        cases += [
            case(f"{name}-inplace-read-only", ValueError, f"{entry.input} is read-only",
                 grid_call(entry, "inplace", x=lambda a: a.read_only(a.x)), seeded),
            case(f"{name}-inplace-read-only-view", ValueError, f"{entry.input} is read-only",
                 grid_call(entry, "inplace", x=lambda a: a.read_only(a.x).T), seeded),
            # inplace=True on a list would write into a temporary copy and return it
            case(f"{name}-inplace-list", TypeError, "list",
                 grid_call(entry, "inplace", x=lambda a: NESTED_LIST), seeded),
            case(f"{name}-inplace-and-out", ValueError, "out=",
                 grid_call(entry, "out", inplace=True), seeded),
        ]
    if entry.out:
        # out of x's size but another shape is still the wrong shape
        for what, shape in [("transposed-shape", BATCH[::-1]), ("flat", (math.prod(BATCH),))]:
            cases.append(case(
                f"{name}-out-{what}", ValueError, str(shape),
                _with_out(entry, lambda a, s=shape: a.keep(np.zeros(s, np.float32))), seeded))
        for dtype in (np.float64, np.float16, np.int32):
            cases.append(case(
                f"{name}-out-{np.dtype(dtype)}", TypeError, np.dtype(dtype).name,
                _with_out(entry, lambda a, d=dtype: a.keep(np.zeros(a.x.shape, d))), seeded))
        cases += [
            case(f"{name}-out-read-only", ValueError, "read-only",
                 _with_out(entry, lambda a: a.read_only(a.out)), seeded),
            case(f"{name}-out-list", TypeError, "list",
                 _with_out(entry, lambda a: [0.0] * a.x.size), seeded),
        ]
    if entry.takes_key:
        cases += key_cases(entry)
    if not entry.takes_array:
        cases += [
            case(f"{name}-n=-1", ValueError, "n=-1", grid_call(entry, None, x=lambda a: -1)),
            case(f"{name}-n=2.0", TypeError, "2.0", grid_call(entry, None, x=lambda a: 2.0)),
        ]
    return cases


def _with_out(entry, make_out):
    """entry's call with ``out=make_out(a)``."""
    def call(a, b):
        return grid_call(entry, None, out=make_out(a))(a, b)
    return call


def key_cases(entry):
    """Bad p, seed, stream and offset of a function taking them itself."""
    name = entry.name
    cases = []
    full = name in FULL_LISTS
    bad_p = (BAD_P_VALUES if full else SOME_BAD_P) + (NOT_BELOW_ONE if entry.max_p < 1.0 else [])
    wrong_type_p = WRONG_TYPE_P if full else SOME_WRONG_TYPE_P
    m = math.prod(entry.mask_shape(BATCH))  # the elements of the stream it reads
    seeded = entry.draws_stream  # then with a Generator and the default Generator too
    for target in targets(entry):
        suffix = "" if target == targets(entry)[0] else f"-{target}"
        cases += [case(f"{name}-p={p!r}{suffix}", ValueError, f"p={float(p)!r}",
                       grid_call(entry, target, p=p), seeded) for p in bad_p]
        cases += [case(f"{name}-p={p!r}{suffix}", TypeError, repr(p),
                       grid_call(entry, target, p=p), seeded) for p in wrong_type_p]
        cases += [
            case(f"{name}-offset=-1{suffix}", ValueError, "offset=-1",
                 grid_call(entry, target, offset=-1), seeded),
            # offset + m may not pass 2**63, m the elements of the mask or noise
            case(f"{name}-offset-past-end{suffix}", ValueError, f"offset={2**63 - m + 1}",
                 grid_call(entry, target, offset=2**63 - m + 1), seeded),
            case(f"{name}-offset=2**63{suffix}", ValueError, f"offset={2**63}",
                 grid_call(entry, target, offset=2**63), seeded),
            case(f"{name}-offset=2**64{suffix}", ValueError, f"offset={2**64}",
                 grid_call(entry, target, offset=2**64), seeded),
            case(f"{name}-offset=1.0{suffix}", TypeError, "1.0",
                 grid_call(entry, target, offset=1.0), seeded),
        ]
        for value, error in BAD_SEEDS if full and not suffix else SOME_BAD_SEEDS:
            fragment = f"seed={value}" if error is ValueError else repr(value)
            cases.append(case(f"{name}-seed={value!r}{suffix}", error, fragment,
                              grid_call(entry, target, seed=value)))
            fragment = f"stream={value}" if error is ValueError else repr(value)
            cases.append(case(f"{name}-stream={value!r}{suffix}", error, fragment,
                              grid_call(entry, target, seed=1, stream=value)))
        if entry.draws_stream:
            cases += [
                case(f"{name}-stream-without-seed{suffix}", ValueError, "stream=3",
                     grid_call(entry, target, seed=None, stream=3)),
                case(f"{name}-stream-with-a-Generator{suffix}", ValueError, "stream=3",
                     lambda a, b, t=target: grid_call(entry, t, seed=a.generator, stream=3)(a, b)),
            ]
        else:  # seed and stream are required integers
            cases += [
                case(f"{name}-seed=None{suffix}", TypeError, "None",
                     grid_call(entry, target, seed=None)),
                case(f"{name}-stream=None{suffix}", TypeError, "None",
                     grid_call(entry, target, stream=None)),
            ]
    return cases


GRID_CASES = [c for entry in REGISTRY for c in grid_cases(entry)]


# ---------------------------------------------------------------- explicit cases: helpers


def dropout(a, b, x, p=0.5, **kwargs):
    kwargs.setdefault("seed", a.seed)
    return fastdrop.dropout(x, p, backend=b, **kwargs)


def alpha(a, b, x, p=0.5, **kwargs):
    kwargs.setdefault("seed", a.seed)
    return fastdrop.alpha_dropout(x, p, backend=b, **kwargs)


def channel(a, b, x, p=0.5, **kwargs):
    kwargs.setdefault("seed", a.seed)
    return fastdrop.channel_dropout(x, p, backend=b, **kwargs)


def feature_alpha(a, b, x, p=0.5, **kwargs):
    kwargs.setdefault("seed", a.seed)
    return fastdrop.feature_alpha_dropout(x, p, backend=b, **kwargs)


def dropconnect(a, b, weight, p=0.5, **kwargs):
    kwargs.setdefault("seed", a.seed)
    return fastdrop.dropconnect(weight, p, backend=b, **kwargs)


def backward(a, b, grad, mask, **kwargs):
    return fastdrop.dropout_backward(grad, mask, backend=b, **kwargs)


def recompute(a, b, grad, p=0.5, **kwargs):
    kwargs.setdefault("seed", 1)
    kwargs.setdefault("stream", 0)
    return fastdrop.dropout_backward_recompute(grad, p, backend=b, **kwargs)


def apply(a, b, x, mask, **kwargs):
    return fastdrop.apply_mask(x, mask, backend=b, **kwargs)


# ---------------------------------------------------------------- explicit cases: arrays, masks

ARRAY_CASES = [
    case("dropout-x=list-of-int", TypeError, "int", lambda a, b: dropout(a, b, [1, 2, 3], 0.5),
         shape=SMALL),
    case("dropout-x=complex-scalar", TypeError, "complex",
         lambda a, b: dropout(a, b, 1 + 2j, 0.5), shape=SMALL),
    case("backward-out-shape", ValueError, "(5, 12)",
         lambda a, b: backward(a, b, a.grad, a.mask, out=a.keep(np.zeros((5, 12), np.float32))),
         shape=SMALL),
    case("recompute-out-shape", ValueError, "(5, 14)",
         lambda a, b: recompute(a, b, a.grad, 0.5, out=a.keep(np.zeros((5, 14), np.float32))),
         shape=SMALL),
]

# dropout_backward: p given next to raw words, or next to a DropoutMask
P_WITH_MASK_CASES = (
    [case(f"backward-words-p={p!r}", ValueError, f"p={p!r}",
          lambda a, b, p=p: backward(a, b, a.grad, a.words, p=p, inplace=True), shape=SMALL)
     for p in BAD_P_VALUES]
    + [case(f"backward-mask-p={p!r}", ValueError, f"p={p!r}",
            lambda a, b, p=p: backward(a, b, a.grad, a.mask, p=p, out=a.out), shape=SMALL)
       for p in BAD_P_VALUES]
    + [case(f"backward-words-p={p!r}", TypeError, repr(p),
            lambda a, b, p=p: backward(a, b, a.grad, a.words, p=p, inplace=True), shape=SMALL)
       for p in WRONG_TYPE_P if p is not None]  # p=None with raw words is a MASK_CASE
)

MASK_CASES = [
    # 64 elements fit one word, 65 need two: the word count gives it away
    case("mask-for-fewer-elements", ValueError, "64",
         lambda a, b: backward(a, b, a.grad, a.mask_for((64,)), inplace=True), shape=SMALL),
    # 66 elements also need two words: only the recorded shape gives it away
    case("mask-for-more-elements-same-words", ValueError, "(6, 11)",
         lambda a, b: backward(a, b, a.grad, a.mask_for((6, 11)), out=a.out), shape=SMALL),
    case("mask-for-empty", ValueError, "0",
         lambda a, b: backward(a, b, a.grad, a.mask_for((0,)), inplace=True), shape=SMALL),
    case("words-too-many", ValueError, "3",
         lambda a, b: backward(a, b, a.grad, a.keep(np.zeros(3, np.uint64)), p=0.5,
                               inplace=True), shape=SMALL),
    case("words-too-few", ValueError, "1",
         lambda a, b: backward(a, b, a.grad, a.words[:1], p=0.5, out=a.out), shape=SMALL),
    case("p-disagrees-with-mask", ValueError, "p=0.25",
         lambda a, b: backward(a, b, a.grad, a.mask, p=0.25, inplace=True), shape=SMALL),
    case("p-disagrees-with-mask-slightly", ValueError, repr(np.nextafter(0.5, 1.0)),
         lambda a, b: backward(a, b, a.grad, a.mask, p=np.nextafter(0.5, 1.0), inplace=True),
         shape=SMALL),
    case("words-without-p", ValueError, "p is required",
         lambda a, b: backward(a, b, a.grad, a.words, inplace=True), shape=SMALL),
    case("words-int64", TypeError, "int64",
         lambda a, b: backward(a, b, a.grad, a.words.view(np.int64), p=0.5, inplace=True),
         shape=SMALL),
    case("words-uint32", TypeError, "uint32",
         lambda a, b: backward(a, b, a.grad, a.words.view(np.uint32), p=0.5, out=a.out),
         shape=SMALL),
    case("words-float64", TypeError, "float64",
         lambda a, b: backward(a, b, a.grad, a.keep(np.zeros(2)), p=0.5, inplace=True),
         shape=SMALL),
    case("words-list-of-int", TypeError, "int64",
         lambda a, b: backward(a, b, a.grad, [0, 1], p=0.5, inplace=True), shape=SMALL),
    case("words-2d", TypeError, "(2, 1)",
         lambda a, b: backward(a, b, a.grad, a.words.reshape(2, 1), p=0.5, inplace=True),
         shape=SMALL),
    case("mask-object-words-int64", TypeError, "int64",
         lambda a, b: backward(a, b, a.grad, fastdrop.DropoutMask(
             a.words.view(np.int64), shape=SMALL, p=0.5, seed=11, stream=0, offset=0),
             inplace=True), shape=SMALL),
    case("mask-object-words-count", ValueError, "1",
         lambda a, b: backward(a, b, a.grad, fastdrop.DropoutMask(
             a.words[:1], shape=SMALL, p=0.5, seed=11, stream=0, offset=0), inplace=True),
         shape=SMALL),
]

# ---------------------------------------------------------------- explicit cases: noise_shape

BAD_NOISE_SHAPES = [
    ("not-broadcastable", (2, 4, 1, 1), ValueError, "(2, 4, 1, 1)"),
    ("not-broadcastable-right-aligned", (4,), ValueError, "(4,)"),
    ("longer-than-x", (1, 2, 3, 1, 1), ValueError, "(1, 2, 3, 1, 1)"),
    ("negative-entry", (2, -3, 1, 1), ValueError, "-3"),
    ("zero-entry", (2, 0, 1, 1), ValueError, "(2, 0, 1, 1)"),
    ("float-entry", (2, 3.0, 1, 1), TypeError, "3.0"),
    ("not-a-sequence", 6, TypeError, "got 6"),
    ("string", "2311", TypeError, "'2311'"),
]
BAD_BROADCAST_DIMS = [
    ("out-of-range", 4, ValueError, "broadcast_dims=4"),
    ("negative-out-of-range", (2, -5), ValueError, "broadcast_dims=-5"),
    ("repeated", (2, 3, 2), ValueError, "(2, 3, 2)"),
    ("repeated-as-negative", (2, -2), ValueError, "(2, -2)"),
    ("float", 1.5, TypeError, "1.5"),
    ("bool", (True,), TypeError, "True"),
]
NOISE_CASES = []
for _name, _call in (("dropout", dropout), ("alpha", alpha)):
    for _id, _shape, _error, _fragment in BAD_NOISE_SHAPES:
        NOISE_CASES += [
            case(f"{_name}-noise_shape-{_id}", _error, _fragment,
                 lambda a, b, c=_call, s=_shape: c(a, b, a.x, noise_shape=s, inplace=True),
                 seeded=True),
            case(f"{_name}-noise_shape-{_id}-out", _error, _fragment,
                 lambda a, b, c=_call, s=_shape: c(a, b, a.x, noise_shape=s, out=a.out),
                 seeded=True),
        ]
    for _id, _dims, _error, _fragment in BAD_BROADCAST_DIMS:
        NOISE_CASES.append(
            case(f"{_name}-broadcast_dims-{_id}", _error, _fragment,
                 lambda a, b, c=_call, d=_dims: c(a, b, a.x, broadcast_dims=d, inplace=True),
                 seeded=True))
    NOISE_CASES.append(
        case(f"{_name}-noise_shape-and-broadcast_dims", ValueError, "broadcast_dims",
             lambda a, b, c=_call: c(a, b, a.x, noise_shape=NOISE, broadcast_dims=(2, 3),
                                     inplace=True), seeded=True))
for _id, _shape, _error, _fragment in BAD_NOISE_SHAPES:
    NOISE_CASES.append(
        case(f"recompute-noise_shape-{_id}", _error, _fragment,
             lambda a, b, s=_shape: recompute(a, b, a.grad, noise_shape=s, inplace=True)))

# ---------------------------------------------------------------- explicit cases: channel axes

CHANNEL_CASES = []
for _name, _call in (("channel", channel), ("feature_alpha", feature_alpha)):
    CHANNEL_CASES += [case(*args, seeded=True) for args in [
        (f"{_name}-0-d", ValueError, "shape ()",
         lambda a, b, c=_call: c(a, b, a.keep(np.array(1.5, np.float32)), inplace=True)),
        (f"{_name}-1-d", ValueError, "shape (7,)",
         lambda a, b, c=_call: c(a, b, a.keep(np.ones(7, np.float32)), inplace=True)),
        (f"{_name}-1-d-unbatched", ValueError, "(7,)",
         lambda a, b, c=_call: c(a, b, a.keep(np.ones(7, np.float32)), channel_axis=0,
                                 batch_axis=None, inplace=True)),
        (f"{_name}-N-C", ValueError, "(4, 3)",
         lambda a, b, c=_call: c(a, b, a.keep(np.ones((4, 3), np.float32)), inplace=True)),
        (f"{_name}-N-C-out", ValueError, "(4, 3)",
         lambda a, b, c=_call: c(a, b, a.keep(np.ones((4, 3), np.float32)),
                                 out=a.keep(np.zeros((4, 3), np.float32)))),
        (f"{_name}-channel_axis=4", ValueError, "channel_axis=4",
         lambda a, b, c=_call: c(a, b, a.x, channel_axis=4, inplace=True)),
        (f"{_name}-channel_axis=-5", ValueError, "channel_axis=-5",
         lambda a, b, c=_call: c(a, b, a.x, channel_axis=-5, out=a.out)),
        (f"{_name}-batch_axis=4", ValueError, "batch_axis=4",
         lambda a, b, c=_call: c(a, b, a.x, batch_axis=4, inplace=True)),
        (f"{_name}-channel-is-batch", ValueError, "channel_axis=0",
         lambda a, b, c=_call: c(a, b, a.x, channel_axis=0, inplace=True)),
        (f"{_name}-channel-is-batch-negative", ValueError, "channel_axis=-4",
         lambda a, b, c=_call: c(a, b, a.x, channel_axis=-4, out=a.out)),
        (f"{_name}-channel_axis=1.0", TypeError, "1.0",
         lambda a, b, c=_call: c(a, b, a.x, channel_axis=1.0, inplace=True)),
    ]]

# ---------------------------------------------------------------- explicit cases: records

RECORD_CASES = [
    case("gaussian_backward-DropoutMask", TypeError, "DropoutMask",
         lambda a, b: fastdrop.gaussian_dropout_backward(a.grad, a.mask, inplace=True,
                                                         backend=b)),
    case("gaussian_backward-None", TypeError, "NoneType",
         lambda a, b: fastdrop.gaussian_dropout_backward(a.grad, None, out=a.out, backend=b)),
    case("gaussian_backward-array", TypeError, "ndarray",
         lambda a, b: fastdrop.gaussian_dropout_backward(a.grad, a.keep(np.ones(120)),
                                                         inplace=True, backend=b)),
    case("gaussian_backward-fewer-elements", ValueError, "119",
         lambda a, b: fastdrop.gaussian_dropout_backward(
             a.grad, fastdrop.GaussianNoise(shape=(119,), p=0.5, seed=1, stream=0, offset=0),
             inplace=True, backend=b)),
    case("gaussian_backward-more-elements", ValueError, "121",
         lambda a, b: fastdrop.gaussian_dropout_backward(
             a.grad, fastdrop.GaussianNoise(shape=(11, 11), p=0.5, seed=1, stream=0, offset=0),
             out=a.out, backend=b)),
    case("alpha_backward-raw-words", TypeError, "ndarray",
         lambda a, b: fastdrop.alpha_dropout_backward(a.grad, a.words, inplace=True, backend=b)),
    case("alpha_backward-GaussianNoise", TypeError, "GaussianNoise",
         lambda a, b: fastdrop.alpha_dropout_backward(a.grad, a.noise, out=a.out, backend=b)),
    case("alpha_backward-not-broadcastable", ValueError, "(2, 4, 1, 1)",
         lambda a, b: fastdrop.alpha_dropout_backward(a.grad, a.mask_for((2, 4, 1, 1)),
                                                      inplace=True, backend=b)),
    case("backward-not-broadcastable", ValueError, "(2, 4, 1, 1)",
         lambda a, b: backward(a, b, a.grad, a.mask_for((2, 4, 1, 1)), out=a.out)),
]

# ---------------------------------------------------------------- explicit cases: apply_mask

APPLY_CASES = [
    case("apply-not-broadcastable", ValueError, "(2, 4, 1, 1)",
         lambda a, b: apply(a, b, a.x, a.mask_for((2, 4, 1, 1)), inplace=True)),
    case("apply-not-broadcastable-shorter", ValueError, "(3,)",
         lambda a, b: apply(a, b, a.x, a.mask_for((3,)), out=a.out)),
    case("apply-longer-mask", ValueError, "(1, 2, 3, 1, 1)",
         lambda a, b: apply(a, b, a.x, a.mask_for((1, 2, 3, 1, 1)), inplace=True)),
    case("apply-words-without-p", ValueError, "p is required",
         lambda a, b: apply(a, b, a.x, a.words, inplace=True)),
    case("apply-words-of-the-noise-shape", ValueError, "120 elements",
         lambda a, b: apply(a, b, a.x, a.mask.words, p=0.5, inplace=True)),
    case("apply-words-int64", TypeError, "int64",
         lambda a, b: apply(a, b, a.x, a.words.view(np.int64), p=0.5, out=a.out)),
    case("apply-p-disagrees", ValueError, "p=0.25",
         lambda a, b: apply(a, b, a.x, a.mask, p=0.25, inplace=True)),
    case("apply-p-out-of-range", ValueError, "p=1.5",
         lambda a, b: apply(a, b, a.x, a.words, p=1.5, inplace=True)),
    case("apply-out-shape", ValueError, "(2, 3, 4, 6)",
         lambda a, b: apply(a, b, a.x, a.mask, out=a.keep(np.zeros((2, 3, 4, 6), np.float32)))),
    case("apply-mask-None", TypeError, "NoneType",
         lambda a, b: apply(a, b, a.x, None, p=0.5, inplace=True)),
]
for _scale, _error, _fragment in [(math.nan, ValueError, "scale=nan"),
                                  (math.inf, ValueError, "scale=inf"),
                                  (-math.inf, ValueError, "scale=-inf"),
                                  (np.float32("nan"), ValueError, "nan"),
                                  ("2", TypeError, "'2'"), (True, TypeError, "True"),
                                  (1j, TypeError, "1j"), ([2.0], TypeError, "[2.0]")]:
    APPLY_CASES += [
        case(f"apply-scale={_scale!r}", _error, _fragment,
             lambda a, b, s=_scale: apply(a, b, a.x, a.mask, scale=s, inplace=True)),
        case(f"apply-words-scale={_scale!r}", _error, _fragment,
             lambda a, b, s=_scale: apply(a, b, a.x, a.words, p=0.5, scale=s, out=a.out)),
    ]

# ---------------------------------------------------------------- explicit cases: DropConnect

DROPCONNECT_CASES = [case(*args, seeded=True) for args in [
    ("dropconnect-0-d", ValueError, "0-d",
     lambda a, b: dropconnect(a, b, a.keep(np.array(1.5, np.float32)))),
    ("dropconnect-0-d-out", ValueError, "0-d",
     lambda a, b: dropconnect(a, b, a.keep(np.array(1.5, np.float32)),
                              out=a.keep(np.array(-7.0, np.float32)))),
    ("dropconnect-list-of-int", TypeError, "int",
     lambda a, b: dropconnect(a, b, [[1, 2], [3, 4]])),
    ("dropconnect-out-shape", ValueError, "(3, 2, 4, 5)",
     lambda a, b: dropconnect(a, b, a.x, out=a.keep(np.zeros((3, 2, 4, 5), np.float32)))),
]]

# name -> cases: the grid of each registry entry, then the explicit cases by theme
GROUPS = {entry.name: grid_cases(entry) for entry in REGISTRY}
EXPLICIT_GROUPS = {"explicit-arrays": ARRAY_CASES, "explicit-p-with-mask": P_WITH_MASK_CASES,
                   "explicit-masks": MASK_CASES, "explicit-noise_shape": NOISE_CASES,
                   "explicit-channel-axes": CHANNEL_CASES, "explicit-records": RECORD_CASES,
                   "explicit-apply_mask": APPLY_CASES, "explicit-dropconnect": DROPCONNECT_CASES}
GROUPS.update(EXPLICIT_GROUPS)
ALL_CASES = [c for cases in GROUPS.values() for c in cases]
assert len({c[0] for c in ALL_CASES}) == len(ALL_CASES), "case ids must be unique"
SEED_KINDS = ("int", "generator", "default")


def seed_kinds(seeded):
    """A seeded case runs with an int, a Generator and the default Generator."""
    return SEED_KINDS if seeded else ("int",)


def check_refused(backend, seed_kind, shape, error, fragment, call):
    """``call`` raises exactly ``error`` naming ``fragment``, writes nothing, takes no stream."""
    arrays = Arrays(shape, seed_kind)
    with pytest.raises(error) as raised:
        call(arrays, backend)
    assert type(raised.value) is error  # not a subclass the caller would not expect
    assert fragment in str(raised.value), f"message does not name {fragment!r}: {raised.value}"
    assert not arrays.changed(), "an array was written, or a Generator handed out a stream"


@pytest.mark.parametrize("group", list(GROUPS))
def test_bad_input_raises_writes_nothing_and_takes_no_stream(group, subtests):
    """Every case of a group, through the public entry (``backend="auto"``).

    The checks run before a backend is chosen, so the grid runs once: its calls take
    the compiled check of the usual call (`fastdrop._fastpath`: C-contiguous x, in
    place or a new array) and the general path (out=, views, noise shapes, records).
    test_every_backend_is_reached_and_refuses_bad_input runs a sample on each backend.
    """
    for case_id, error, fragment, call, seeded, shape in GROUPS[group]:
        for seed_kind in seed_kinds(seeded):
            with subtests.test(case=f"{case_id}-{seed_kind}"):
                check_refused("auto", seed_kind, shape, error, fragment, call)


# ---------------------------------------------------------------- every backend is reached

# The kinds of grid case each backend runs (a case id is the entry's name, "-", the kind).
ROUTING_KINDS = {"backend='cuda'", "p=1.5", "p='half'", "p=1.5-out", "inplace-read-only",
                 "out-float64", "offset=-1", "seed=-1", "stream=-1", "stream-with-a-Generator",
                 "seed=None", "n=-1", "x=int64", "grad=int64", "weight=int64"}


def routing_cases():
    """A sample of every group: the grid's ROUTING_KINDS and each explicit group's first case."""
    sample = []
    for group, cases in GROUPS.items():
        if group in EXPLICIT_GROUPS:
            sample.append(cases[0])
        else:
            sample += [c for c in cases if c[0][len(group) + 1:] in ROUTING_KINDS]
    return sample


@pytest.mark.parametrize("backend", fastdrop.available_backends())
def test_every_backend_is_reached_and_refuses_bad_input(backend, subtests):
    """Each backend still refuses bad input before writing, and is reached by a valid call.

    The refusals: a sample of the cases above with ``backend`` (the reference's whole
    functions check their arguments as the API does). The valid calls (the same calls
    with valid arguments) show that the checks can fail: they write x or out, and take
    exactly one stream from a Generator, or from the default Generator with seed=None.
    """
    for case_id, error, fragment, call, seeded, shape in routing_cases():
        for seed_kind in seed_kinds(seeded):
            with subtests.test(case=f"{case_id}-{seed_kind}"):
                check_refused(backend, seed_kind, shape, error, fragment, call)
    for entry in REGISTRY:
        with subtests.test(valid=entry.name):
            for target in [t for t in targets(entry) if t is not None]:
                arrays = Arrays(BATCH)
                grid_call(entry, target)(arrays, backend)
                assert arrays.changed(), target
            if entry.draws_stream:
                arrays = Arrays(BATCH, "generator")
                grid_call(entry, None)(arrays, backend)
                assert arrays.generator.state["stream"] == 1
                arrays = Arrays(BATCH, "default")
                before = fastdrop.default_generator().state["stream"]
                grid_call(entry, None)(arrays, backend)
                assert fastdrop.default_generator().state["stream"] == before + 1


def test_the_routing_sample_covers_every_group_and_kind():
    """Every group and every kind of ROUTING_KINDS has a case in the per-backend sample."""
    sample = {c[0] for c in routing_cases()}
    for group, cases in GROUPS.items():
        assert any(c[0] in sample for c in cases), group
    for kind in ROUTING_KINDS:
        assert any(name.endswith(f"-{kind}") for name in sample), kind


# ---------------------------------------------------------------- the whole path


@pytest.mark.parametrize("backend", fastdrop.available_backends())
def test_bad_input_through_strided_views_writes_nothing(backend):
    """Strided and transposed arrays go through private copies.

    A late error still writes nothing.
    """
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


LAST_OFFSET = 2**63 - N  # the largest offset that still fits N elements


@pytest.mark.parametrize("backend", fastdrop.available_backends())
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
    # raw words of another shape but the same number of elements line up in C order
    grad = np.ones(SMALL, np.float32)
    fastdrop.dropout_backward(grad.reshape(mask.shape), mask, p=0.5, backend=backend)
    fastdrop.dropout_backward(grad, mask.words, p=0.5, backend=backend)


@pytest.mark.parametrize("backend", fastdrop.available_backends())
def test_limits_of_the_variants_are_accepted(backend):
    """The edges of the variants' documented ranges are valid: the checks are not off by one."""
    x = np.ones(BATCH, np.float32)
    # offset + m == 2**63 with m the mask's elements, fewer than x's
    _, mask = fastdrop.dropout(x, 0.5, seed=1, offset=2**63 - M, noise_shape=NOISE,
                               backend=backend)
    assert mask.offset == 2**63 - M and mask.n == M
    _, mask = fastdrop.channel_dropout(x, 0.5, seed=1, offset=2**63 - M, backend=backend)
    assert mask.offset == 2**63 - M
    # noise shapes as lists, NumPy integers, arrays; equal to x's; broadcast_dims empty or NumPy
    for noise_shape in ([2, 3, 1, 1], np.array(NOISE), (np.int64(3), 1, np.uint8(1)), BATCH,
                        (), (1,)):
        fastdrop.dropout(x, 0.5, seed=1, noise_shape=noise_shape, backend=backend)
        fastdrop.alpha_dropout(x, 0.5, seed=1, noise_shape=noise_shape, backend=backend)
    for dims in ((), [0, 1, 2, 3], np.int64(-1), (np.int8(2), -1)):
        fastdrop.dropout(x, 0.5, seed=1, broadcast_dims=dims, backend=backend)
    # the smallest inputs with a channel axis to share over
    for shape, kwargs in [((2, 3, 1), {}), ((3, 1), dict(channel_axis=0, batch_axis=None)),
                          ((0, 3, 4), {}), ((2, 3, 4), dict(channel_axis=np.int64(-1)))]:
        fastdrop.channel_dropout(np.ones(shape), 0.5, seed=1, backend=backend, **kwargs)
        fastdrop.feature_alpha_dropout(np.ones(shape), 0.5, seed=1, backend=backend, **kwargs)
    # Gaussian rates up to the largest float below 1
    for p in (0.0, 0, np.nextafter(1.0, 0.0), np.float16(0.5)):
        y, record = fastdrop.gaussian_dropout(x, p, seed=1, backend=backend)
        assert np.all(np.isfinite(y))
        fastdrop.gaussian_dropout_backward(x.reshape(-1), record, backend=backend)
    fastdrop.gaussian_noise(1, 0.5, seed=1, offset=2**63 - 1, backend=backend)
    # scales: zero, negative, NumPy and integer numbers
    for scale in (0.0, -1.5, np.float32(2.0), 3, np.int8(-2)):
        fastdrop.apply_mask(x, fastdrop.dropout(x, 0.5, seed=1, noise_shape=NOISE,
                                                backend=backend)[1], scale=scale, backend=backend)
    # DropConnect on a vector
    fastdrop.dropconnect(np.ones(3), 0.5, seed=1, backend=backend)


TRAINING_OFF_CASES = {
    "seed=-1": (lambda x, b, out: fastdrop.dropout(x, 0.5, seed=-1, training=False, out=out,
                                                   backend=b), ValueError),
    "seed=1.5": (lambda x, b, out: fastdrop.dropout(x, 0.5, seed=1.5, training=False, out=out,
                                                    backend=b), TypeError),
    "stream-without-seed": (lambda x, b, out: fastdrop.dropout(x, 0.5, stream=3, training=False,
                                                               out=out, backend=b), ValueError),
    "stream=2**64": (lambda x, b, out: fastdrop.dropout(x, 0.5, seed=1, stream=2**64,
                                                        training=False, out=out, backend=b),
                     ValueError),
    "offset=-1": (lambda x, b, out: fastdrop.dropout(x, 0.5, seed=1, offset=-1, training=False,
                                                     out=out, backend=b), ValueError),
    "dropout-noise_shape": (lambda x, b, out: fastdrop.dropout(
        x, 0.5, seed=1, noise_shape=(5,), training=False, backend=b), ValueError),
    "dropout-broadcast_dims": (lambda x, b, out: fastdrop.dropout(
        x, 0.5, seed=1, broadcast_dims=7, training=False, backend=b), ValueError),
    "alpha": (lambda x, b, out: fastdrop.alpha_dropout(
        x, 0.5, seed=1, noise_shape=(5,), training=False, backend=b), ValueError),
    "channel-N-C": (lambda x, b, out: fastdrop.channel_dropout(
        x[0], 0.5, seed=1, training=False, backend=b), ValueError),
    "feature_alpha-channel-is-batch": (lambda x, b, out: fastdrop.feature_alpha_dropout(
        x, 0.5, seed=1, channel_axis=0, training=False, backend=b), ValueError),
    "gaussian-p=1": (lambda x, b, out: fastdrop.gaussian_dropout(
        x, 1.0, seed=1, training=False, backend=b), ValueError),
    "gaussian-seed": (lambda x, b, out: fastdrop.gaussian_dropout(
        x, 0.5, seed=-1, training=False, backend=b), ValueError),
    "dropconnect-0-d": (lambda x, b, out: fastdrop.dropconnect(
        x[0, 0, 0], 0.5, seed=1, training=False, backend=b), ValueError),
}


@pytest.mark.parametrize("backend", fastdrop.available_backends())
def test_training_off_still_checks_every_argument(backend, subtests):
    """With training=False every function validates as in training and writes nothing on error.

    The reference (``backend="numpy"``) runs its own whole functions, so each backend runs.
    """
    for name, (call, error) in TRAINING_OFF_CASES.items():
        with subtests.test(case=name):
            x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
            out = np.full(x.shape, 9.0, np.float32)
            with unchanged(x, out), pytest.raises(error):
                call(x, backend, out)


def test_offset_two_to_the_63_is_refused_for_empty_arrays_too(subtests):
    """offset < 2**63 holds for n = 0 as well (offset + n <= 2**63 alone would allow it)."""
    for backend in fastdrop.available_backends():
        with subtests.test(backend=backend):
            with pytest.raises(ValueError, match=f"offset={2**63}"):
                fastdrop.dropout(np.ones((2, 0), np.float32), 0.5, seed=1, offset=2**63,
                                 backend=backend)
            with pytest.raises(ValueError, match=f"offset={2**63}"):
                fastdrop.bernoulli_mask(0, 0.3, seed=5, stream=7, offset=2**63, backend=backend)
