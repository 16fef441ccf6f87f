"""Bad input to the dropout variants raises a clear error, names the offending value, writes
nothing and takes no stream.

One property per file, as in test_bad_input.py: every check of the variants (noise shapes,
broadcast_dims, channel axes, Gaussian rates, masks, noise records, scales, weights) runs
before anything is written or drawn. After an error, x, out, grad and the mask words hold
the bytes they held before, and neither the Generator passed as ``seed`` nor the default
Generator (``seed=None``) has handed out a stream. Every case runs on every backend of the
registry, the NumPy reference included.
"""
import functools
import math

import numpy as np
import pytest

import fastdrop
from fastdrop import reference

BACKENDS = fastdrop.available_backends()
SHAPE = (2, 3, 4, 5)  # 120 elements: two mask words, the second one partly used
N = math.prod(SHAPE)
NOISE = (2, 3, 1, 1)  # 6 mask elements
M = math.prod(NOISE)


@functools.lru_cache(maxsize=None)
def _mask_words(shape, p):
    words = reference.pack_mask(reference.keep_bits(math.prod(shape), p, 11, 0, 0))
    words.flags.writeable = False
    return words


class Arrays:
    """Fresh arrays and seeds for one case; `keep` registers any extra array the case passes in.

    ``seed`` is what the case passes as seed: an int, a Generator (whose state must not
    move), or None (the default Generator, whose state must not move either).
    """

    def __init__(self, seed_kind="int"):
        rng = np.random.default_rng(0)
        self.x = rng.uniform(1.0, 2.0, SHAPE).astype(np.float32)
        self.grad = rng.uniform(1.0, 2.0, SHAPE).astype(np.float32)
        # -7 is a value no call here would write (inputs are in [1, 2], results 0 or near x)
        self.out = np.full(SHAPE, -7.0, dtype=np.float32)
        self.generator = fastdrop.Generator(2024)
        self.seed = {"int": 1, "generator": self.generator, "default": None}[seed_kind]
        self._kept = []
        self.mask = self.mask_for(NOISE)  # a channel mask of SHAPE
        self.words = self.mask_for(SHAPE).words  # one bit per element of SHAPE
        self.noise = fastdrop.GaussianNoise(shape=SHAPE, p=0.5, seed=11, stream=0, offset=0)
        for array in (self.x, self.grad, self.out):
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
        words = self.keep(_mask_words(tuple(shape), p).copy())
        return fastdrop.DropoutMask(words, shape=shape, p=p, seed=11, stream=0, offset=0)

    def changed(self):
        """The kept arrays whose dtype, shape or bytes differ from when they were kept."""
        return [array for array, dtype, shape, data in self._kept
                if (array.dtype, array.shape, array.tobytes()) != (dtype, shape, data)]


def case(case_id, error, fragment, call, seeded=True):
    """A bad call: ``call(arrays, backend)`` must raise ``error`` with ``fragment`` in its message.

    ``seeded`` cases pass ``a.seed`` and run with an int, a Generator and the default Generator.
    """
    return (case_id, error, fragment, call, seeded)


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


def gaussian(a, b, x, p=0.5, **kwargs):
    kwargs.setdefault("seed", a.seed)
    return fastdrop.gaussian_dropout(x, p, backend=b, **kwargs)


def noise(a, b, n, p=0.5, **kwargs):
    kwargs.setdefault("seed", a.seed)
    return fastdrop.gaussian_noise(n, p, backend=b, **kwargs)


def dropconnect(a, b, weight, p=0.5, **kwargs):
    kwargs.setdefault("seed", a.seed)
    return fastdrop.dropconnect(weight, p, backend=b, **kwargs)


def recompute(a, b, grad, p=0.5, **kwargs):
    kwargs.setdefault("seed", 1)
    kwargs.setdefault("stream", 0)
    return fastdrop.dropout_backward_recompute(grad, p, backend=b, **kwargs)


# ---------------------------------------------------------------- noise_shape, broadcast_dims

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
                 lambda a, b, c=_call, s=_shape: c(a, b, a.x, noise_shape=s, inplace=True)),
            case(f"{_name}-noise_shape-{_id}-out", _error, _fragment,
                 lambda a, b, c=_call, s=_shape: c(a, b, a.x, noise_shape=s, out=a.out)),
        ]
    for _id, _dims, _error, _fragment in BAD_BROADCAST_DIMS:
        NOISE_CASES.append(
            case(f"{_name}-broadcast_dims-{_id}", _error, _fragment,
                 lambda a, b, c=_call, d=_dims: c(a, b, a.x, broadcast_dims=d, inplace=True)))
    NOISE_CASES += [
        case(f"{_name}-noise_shape-and-broadcast_dims", ValueError, "broadcast_dims",
             lambda a, b, c=_call: c(a, b, a.x, noise_shape=NOISE, broadcast_dims=(2, 3),
                                     inplace=True)),
        # offset + m may not pass 2**63, m the mask's elements (6), not x's (120)
        case(f"{_name}-noise_shape-offset-past-end", ValueError, f"offset={2**63 - M + 1}",
             lambda a, b, c=_call: c(a, b, a.x, noise_shape=NOISE, offset=2**63 - M + 1,
                                     inplace=True)),
    ]
for _id, _shape, _error, _fragment in BAD_NOISE_SHAPES:
    NOISE_CASES.append(
        case(f"recompute-noise_shape-{_id}", _error, _fragment,
             lambda a, b, s=_shape: recompute(a, b, a.grad, noise_shape=s, inplace=True),
             seeded=False))
NOISE_CASES.append(
    case("recompute-noise_shape-offset-past-end", ValueError, f"offset={2**63 - M + 1}",
         lambda a, b: recompute(a, b, a.grad, noise_shape=NOISE, offset=2**63 - M + 1,
                                out=a.out), seeded=False))


# ---------------------------------------------------------------- channel axes

CHANNEL_CASES = []
for _name, _call in (("channel", channel), ("feature_alpha", feature_alpha)):
    CHANNEL_CASES += [
        case(f"{_name}-0-d", ValueError, "shape ()",
             lambda a, b, c=_call: c(a, b, a.keep(np.array(1.5, np.float32)), inplace=True)),
        case(f"{_name}-1-d", ValueError, "shape (7,)",
             lambda a, b, c=_call: c(a, b, a.keep(np.ones(7, np.float32)), inplace=True)),
        case(f"{_name}-1-d-unbatched", ValueError, "(7,)",
             lambda a, b, c=_call: c(a, b, a.keep(np.ones(7, np.float32)), channel_axis=0,
                                     batch_axis=None, inplace=True)),
        case(f"{_name}-N-C", ValueError, "(4, 3)",
             lambda a, b, c=_call: c(a, b, a.keep(np.ones((4, 3), np.float32)), inplace=True)),
        case(f"{_name}-N-C-out", ValueError, "(4, 3)",
             lambda a, b, c=_call: c(a, b, a.keep(np.ones((4, 3), np.float32)),
                                     out=a.keep(np.zeros((4, 3), np.float32)))),
        case(f"{_name}-channel_axis=4", ValueError, "channel_axis=4",
             lambda a, b, c=_call: c(a, b, a.x, channel_axis=4, inplace=True)),
        case(f"{_name}-channel_axis=-5", ValueError, "channel_axis=-5",
             lambda a, b, c=_call: c(a, b, a.x, channel_axis=-5, out=a.out)),
        case(f"{_name}-batch_axis=4", ValueError, "batch_axis=4",
             lambda a, b, c=_call: c(a, b, a.x, batch_axis=4, inplace=True)),
        case(f"{_name}-channel-is-batch", ValueError, "channel_axis=0",
             lambda a, b, c=_call: c(a, b, a.x, channel_axis=0, inplace=True)),
        case(f"{_name}-channel-is-batch-negative", ValueError, "channel_axis=-4",
             lambda a, b, c=_call: c(a, b, a.x, channel_axis=-4, out=a.out)),
        case(f"{_name}-channel_axis=1.0", TypeError, "1.0",
             lambda a, b, c=_call: c(a, b, a.x, channel_axis=1.0, inplace=True)),
        case(f"{_name}-x=int64", TypeError, "int64",
             lambda a, b, c=_call: c(a, b, a.keep(np.ones(SHAPE, np.int64)), inplace=True)),
        case(f"{_name}-p=1.5", ValueError, "p=1.5",
             lambda a, b, c=_call: c(a, b, a.x, 1.5, inplace=True)),
        case(f"{_name}-p='half'", TypeError, "'half'",
             lambda a, b, c=_call: c(a, b, a.x, "half", inplace=True)),
        case(f"{_name}-offset-past-end", ValueError, f"offset={2**63 - M + 1}",
             lambda a, b, c=_call: c(a, b, a.x, offset=2**63 - M + 1, inplace=True)),
    ]


# ---------------------------------------------------------------- Gaussian dropout

BAD_GAUSSIAN_P = [1.0, 1, np.float32(1.0), -0.1, 1.5, math.inf, math.nan]
GAUSSIAN_CASES = (
    [case(f"gaussian-p={p!r}", ValueError, f"p={float(p)!r}",
          lambda a, b, p=p: gaussian(a, b, a.x, p, inplace=True)) for p in BAD_GAUSSIAN_P]
    + [case(f"gaussian-out-p={p!r}", ValueError, f"p={float(p)!r}",
            lambda a, b, p=p: gaussian(a, b, a.x, p, out=a.out)) for p in BAD_GAUSSIAN_P]
    + [case(f"gaussian_noise-p={p!r}", ValueError, f"p={float(p)!r}",
            lambda a, b, p=p: noise(a, b, N, p)) for p in BAD_GAUSSIAN_P]
    + [case(f"gaussian-p={p!r}", TypeError, repr(p),
            lambda a, b, p=p: gaussian(a, b, a.x, p, inplace=True)) for p in ["half", None, True]]
    + [
        case("gaussian-x=int32", TypeError, "int32",
             lambda a, b: gaussian(a, b, a.keep(np.ones(SHAPE, np.int32)), inplace=True)),
        case("gaussian-inplace-offset=-1", ValueError, "offset=-1",
             lambda a, b: gaussian(a, b, a.x, offset=-1, inplace=True)),
        case("gaussian-offset-past-end", ValueError, f"offset={2**63 - N + 1}",
             lambda a, b: gaussian(a, b, a.x, offset=2**63 - N + 1, out=a.out)),
        case("gaussian-out-float64", TypeError, "float64",
             lambda a, b: gaussian(a, b, a.x, out=a.keep(np.zeros(SHAPE)))),
        case("gaussian_noise-n=-1", ValueError, "n=-1", lambda a, b: noise(a, b, -1)),
        case("gaussian_noise-n=2.0", TypeError, "2.0", lambda a, b: noise(a, b, 2.0)),
        case("gaussian_noise-offset-past-end", ValueError, f"offset={2**63 - N + 1}",
             lambda a, b: noise(a, b, N, offset=2**63 - N + 1)),
    ]
)
BACKWARD_CASES = [
    case("gaussian_backward-DropoutMask", TypeError, "DropoutMask",
         lambda a, b: fastdrop.gaussian_dropout_backward(a.grad, a.mask, inplace=True,
                                                         backend=b), seeded=False),
    case("gaussian_backward-None", TypeError, "NoneType",
         lambda a, b: fastdrop.gaussian_dropout_backward(a.grad, None, out=a.out, backend=b),
         seeded=False),
    case("gaussian_backward-array", TypeError, "ndarray",
         lambda a, b: fastdrop.gaussian_dropout_backward(a.grad, a.keep(np.ones(N)),
                                                         inplace=True, backend=b), seeded=False),
    case("gaussian_backward-fewer-elements", ValueError, "119",
         lambda a, b: fastdrop.gaussian_dropout_backward(
             a.grad, fastdrop.GaussianNoise(shape=(119,), p=0.5, seed=1, stream=0, offset=0),
             inplace=True, backend=b), seeded=False),
    case("gaussian_backward-more-elements", ValueError, "121",
         lambda a, b: fastdrop.gaussian_dropout_backward(
             a.grad, fastdrop.GaussianNoise(shape=(11, 11), p=0.5, seed=1, stream=0, offset=0),
             out=a.out, backend=b), seeded=False),
    case("gaussian_backward-grad=int64", TypeError, "int64",
         lambda a, b: fastdrop.gaussian_dropout_backward(
             a.keep(np.ones(SHAPE, np.int64)), a.noise, inplace=True, backend=b), seeded=False),
    case("gaussian_backward-read-only", ValueError, "grad is read-only",
         lambda a, b: fastdrop.gaussian_dropout_backward(a.read_only(a.grad), a.noise,
                                                         inplace=True, backend=b), seeded=False),
    case("alpha_backward-raw-words", TypeError, "ndarray",
         lambda a, b: fastdrop.alpha_dropout_backward(a.grad, a.words, inplace=True, backend=b),
         seeded=False),
    case("alpha_backward-GaussianNoise", TypeError, "GaussianNoise",
         lambda a, b: fastdrop.alpha_dropout_backward(a.grad, a.noise, out=a.out, backend=b),
         seeded=False),
    case("alpha_backward-not-broadcastable", ValueError, "(2, 4, 1, 1)",
         lambda a, b: fastdrop.alpha_dropout_backward(a.grad, a.mask_for((2, 4, 1, 1)),
                                                      inplace=True, backend=b), seeded=False),
    case("alpha_backward-grad=bool", TypeError, "bool",
         lambda a, b: fastdrop.alpha_dropout_backward(a.keep(np.ones(SHAPE, bool)), a.mask,
                                                      inplace=True, backend=b), seeded=False),
    case("backward-not-broadcastable", ValueError, "(2, 4, 1, 1)",
         lambda a, b: fastdrop.dropout_backward(a.grad, a.mask_for((2, 4, 1, 1)), out=a.out,
                                                backend=b), seeded=False),
]


# ---------------------------------------------------------------- apply_mask


def apply(a, b, x, mask, **kwargs):
    return fastdrop.apply_mask(x, mask, backend=b, **kwargs)


APPLY_CASES = [
    case("apply-not-broadcastable", ValueError, "(2, 4, 1, 1)",
         lambda a, b: apply(a, b, a.x, a.mask_for((2, 4, 1, 1)), inplace=True), seeded=False),
    case("apply-not-broadcastable-shorter", ValueError, "(3,)",
         lambda a, b: apply(a, b, a.x, a.mask_for((3,)), out=a.out), seeded=False),
    case("apply-longer-mask", ValueError, "(1, 2, 3, 1, 1)",
         lambda a, b: apply(a, b, a.x, a.mask_for((1, 2, 3, 1, 1)), inplace=True),
         seeded=False),
    case("apply-words-without-p", ValueError, "p is required",
         lambda a, b: apply(a, b, a.x, a.words, inplace=True), seeded=False),
    case("apply-words-of-the-noise-shape", ValueError, f"{N} elements",
         lambda a, b: apply(a, b, a.x, a.mask.words, p=0.5, inplace=True), seeded=False),
    case("apply-words-int64", TypeError, "int64",
         lambda a, b: apply(a, b, a.x, a.words.view(np.int64), p=0.5, out=a.out), seeded=False),
    case("apply-p-disagrees", ValueError, "p=0.25",
         lambda a, b: apply(a, b, a.x, a.mask, p=0.25, inplace=True), seeded=False),
    case("apply-p-out-of-range", ValueError, "p=1.5",
         lambda a, b: apply(a, b, a.x, a.words, p=1.5, inplace=True), seeded=False),
    case("apply-x=int64", TypeError, "int64",
         lambda a, b: apply(a, b, a.keep(np.ones(SHAPE, np.int64)), a.mask, inplace=True),
         seeded=False),
    case("apply-read-only", ValueError, "x is read-only",
         lambda a, b: apply(a, b, a.read_only(a.x), a.mask, inplace=True), seeded=False),
    case("apply-out-shape", ValueError, "(2, 3, 4, 6)",
         lambda a, b: apply(a, b, a.x, a.mask, out=a.keep(np.zeros((2, 3, 4, 6), np.float32))),
         seeded=False),
    case("apply-mask-None", TypeError, "NoneType",
         lambda a, b: apply(a, b, a.x, None, p=0.5, inplace=True), seeded=False),
]
for _scale, _error, _fragment in [(math.nan, ValueError, "scale=nan"),
                                  (math.inf, ValueError, "scale=inf"),
                                  (-math.inf, ValueError, "scale=-inf"),
                                  (np.float32("nan"), ValueError, "nan"),
                                  ("2", TypeError, "'2'"), (True, TypeError, "True"),
                                  (1j, TypeError, "1j"), ([2.0], TypeError, "[2.0]")]:
    APPLY_CASES += [
        case(f"apply-scale={_scale!r}", _error, _fragment,
             lambda a, b, s=_scale: apply(a, b, a.x, a.mask, scale=s, inplace=True),
             seeded=False),
        case(f"apply-words-scale={_scale!r}", _error, _fragment,
             lambda a, b, s=_scale: apply(a, b, a.x, a.words, p=0.5, scale=s, out=a.out),
             seeded=False),
    ]


# ---------------------------------------------------------------- DropConnect

DROPCONNECT_CASES = [
    case("dropconnect-0-d", ValueError, "0-d",
         lambda a, b: dropconnect(a, b, a.keep(np.array(1.5, np.float32)))),
    case("dropconnect-0-d-out", ValueError, "0-d",
         lambda a, b: dropconnect(a, b, a.keep(np.array(1.5, np.float32)),
                                  out=a.keep(np.array(-7.0, np.float32)))),
    case("dropconnect-int64", TypeError, "int64",
         lambda a, b: dropconnect(a, b, a.keep(np.ones(SHAPE, np.int64)))),
    case("dropconnect-int32-out", TypeError, "int32",
         lambda a, b: dropconnect(a, b, a.keep(np.ones(SHAPE, np.int32)), out=a.out)),
    case("dropconnect-list-of-int", TypeError, "int",
         lambda a, b: dropconnect(a, b, [[1, 2], [3, 4]])),
    case("dropconnect-p=-0.1", ValueError, "p=-0.1",
         lambda a, b: dropconnect(a, b, a.x, -0.1, out=a.out)),
    case("dropconnect-out-shape", ValueError, "(3, 2, 4, 5)",
         lambda a, b: dropconnect(a, b, a.x, out=a.keep(np.zeros((3, 2, 4, 5), np.float32)))),
    case("dropconnect-out-float16", TypeError, "float16",
         lambda a, b: dropconnect(a, b, a.x, out=a.keep(np.zeros(SHAPE, np.float16)))),
]

# ---------------------------------------------------------------- where the result goes

NESTED_LIST = [[[1.0, 2.0]], [[3.0, 4.0]]]  # (2, 1, 2): a channel axis with an axis to share
TARGET_CASES = []
for _name, _call in (("dropout-noise_shape", lambda a, b, x, **k: dropout(
        a, b, x, noise_shape=(2, 1, 1), **k)), ("alpha", alpha), ("channel", channel),
        ("feature_alpha", feature_alpha), ("gaussian", gaussian)):
    TARGET_CASES += [
        # inplace=True on a list would write into a temporary copy and return it
        case(f"{_name}-inplace-list", TypeError, "list",
             lambda a, b, c=_call: c(a, b, NESTED_LIST, inplace=True)),
        case(f"{_name}-inplace-read-only", ValueError, "x is read-only",
             lambda a, b, c=_call: c(a, b, a.read_only(a.x), inplace=True)),
        case(f"{_name}-inplace-and-out", ValueError, "out=",
             lambda a, b, c=_call: c(a, b, a.x, inplace=True, out=a.out)),
        case(f"{_name}-out-transposed-shape", ValueError, "(5, 4, 3, 2)",
             lambda a, b, c=_call: c(a, b, a.x, out=a.keep(np.zeros((5, 4, 3, 2), np.float32)))),
        case(f"{_name}-out-read-only", ValueError, "read-only",
             lambda a, b, c=_call: c(a, b, a.x, out=a.read_only(a.out))),
    ]
for _name, _call in (
        ("apply", lambda a, b, grad, **k: apply(a, b, grad, a.mask_for((2, 1, 1)), **k)),
        ("alpha_backward", lambda a, b, grad, **k: fastdrop.alpha_dropout_backward(
            grad, a.mask_for((2, 1, 1)), backend=b, **k)),
        ("gaussian_backward", lambda a, b, grad, **k: fastdrop.gaussian_dropout_backward(
            grad, fastdrop.GaussianNoise(shape=(2, 1, 2), p=0.5, seed=1, stream=0, offset=0),
            backend=b, **k)),
        ("recompute-noise_shape", lambda a, b, grad, **k: recompute(
            a, b, grad, noise_shape=(2, 1, 1), **k))):
    TARGET_CASES.append(case(f"{_name}-inplace-list", TypeError, "list",
                             lambda a, b, c=_call: c(a, b, NESTED_LIST, inplace=True),
                             seeded=False))


# ---------------------------------------------------------------- seeds, streams, backends

SEED_CASES = []
for _name, _call in (("alpha", alpha), ("channel", channel), ("feature_alpha", feature_alpha),
                     ("gaussian", gaussian), ("dropconnect", dropconnect)):
    SEED_CASES += [
        case(f"{_name}-seed=-1", ValueError, "seed=-1",
             lambda a, b, c=_call: c(a, b, a.x, seed=-1, out=a.out), seeded=False),
        case(f"{_name}-stream=2**64", ValueError, f"stream={2**64}",
             lambda a, b, c=_call: c(a, b, a.x, seed=1, stream=2**64, out=a.out), seeded=False),
        case(f"{_name}-stream-without-seed", ValueError, "stream=3",
             lambda a, b, c=_call: c(a, b, a.x, seed=None, stream=3, out=a.out), seeded=False),
        case(f"{_name}-stream-with-a-Generator", ValueError, "stream=3",
             lambda a, b, c=_call: c(a, b, a.x, seed=a.generator, stream=3, out=a.out),
             seeded=False),
        case(f"{_name}-seed=1.5", TypeError, "1.5",
             lambda a, b, c=_call: c(a, b, a.x, seed=1.5, out=a.out), seeded=False),
        case(f"{_name}-offset=-1", ValueError, "offset=-1",
             lambda a, b, c=_call: c(a, b, a.x, offset=-1, out=a.out)),
    ]
SEED_CASES.append(case("gaussian_noise-seed=2**64", ValueError, f"seed={2**64}",
                       lambda a, b: noise(a, b, N, seed=2**64), seeded=False))

BACKEND_CASES = [
    case(f"{name}-backend='cuda'", ValueError, "'cuda'", call)
    for name, call in [
        ("dropout-noise_shape",
         lambda a, b: dropout(a, "cuda", a.x, noise_shape=NOISE, inplace=True)),
        ("channel", lambda a, b: channel(a, "cuda", a.x, inplace=True)),
        ("alpha", lambda a, b: alpha(a, "cuda", a.x, inplace=True)),
        ("feature_alpha", lambda a, b: feature_alpha(a, "cuda", a.x, out=a.out)),
        ("gaussian", lambda a, b: gaussian(a, "cuda", a.x, inplace=True)),
        ("gaussian_noise", lambda a, b: noise(a, "cuda", N)),
        ("dropconnect", lambda a, b: dropconnect(a, "cuda", a.x, out=a.out)),
        ("apply_mask", lambda a, b: apply(a, "cuda", a.x, a.mask, inplace=True)),
        ("alpha_backward", lambda a, b: fastdrop.alpha_dropout_backward(
            a.grad, a.mask, inplace=True, backend="cuda")),
        ("gaussian_backward", lambda a, b: fastdrop.gaussian_dropout_backward(
            a.grad, a.noise, out=a.out, backend="cuda")),
        ("recompute-noise_shape", lambda a, b: recompute(a, "cuda", a.grad, noise_shape=NOISE,
                                                         inplace=True)),
    ]
]

ALL_CASES = (NOISE_CASES + CHANNEL_CASES + GAUSSIAN_CASES + BACKWARD_CASES + APPLY_CASES
             + DROPCONNECT_CASES + TARGET_CASES + SEED_CASES + BACKEND_CASES)
assert len({c[0] for c in ALL_CASES}) == len(ALL_CASES), "case ids must be unique"
PARAMS = [pytest.param(seed_kind, error, fragment, call, id=f"{case_id}-{seed_kind}")
          for case_id, error, fragment, call, seeded in ALL_CASES
          for seed_kind in (("int", "generator", "default") if seeded else ("int",))]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("seed_kind, error, fragment, call", PARAMS)
def test_bad_input_raises_writes_nothing_and_takes_no_stream(backend, seed_kind, error,
                                                             fragment, call):
    arrays = Arrays(seed_kind)
    generator_before = arrays.generator.state
    default_before = fastdrop.default_generator().state
    with pytest.raises(error) as raised:
        call(arrays, backend)
    assert type(raised.value) is error  # not a subclass the caller would not expect
    assert fragment in str(raised.value), f"message does not name {fragment!r}: {raised.value}"
    assert not arrays.changed(), "an array was written before the error"
    assert arrays.generator.state == generator_before, "the Generator handed out a stream"
    assert fastdrop.default_generator().state == default_before, "the default Generator moved"


VALID_SEEDED_CALLS = {
    "dropout-noise_shape": lambda a, b: dropout(a, b, a.x, noise_shape=NOISE),
    "channel": lambda a, b: channel(a, b, a.x),
    "alpha": lambda a, b: alpha(a, b, a.x, broadcast_dims=(2, 3)),
    "feature_alpha": lambda a, b: feature_alpha(a, b, a.x),
    "gaussian": lambda a, b: gaussian(a, b, a.x),
    "gaussian_noise": lambda a, b: noise(a, b, N),
    "dropconnect": lambda a, b: dropconnect(a, b, a.x),
}


@pytest.mark.parametrize("name", list(VALID_SEEDED_CALLS))
@pytest.mark.parametrize("backend", BACKENDS)
def test_the_stream_check_can_fail_a_valid_call_takes_one_stream(backend, name):
    """The checks above have power: the same calls with valid arguments take exactly one
    stream from the Generator, or from the default Generator with seed=None."""
    arrays = Arrays("generator")
    VALID_SEEDED_CALLS[name](arrays, backend)
    assert arrays.generator.state["stream"] == 1
    arrays = Arrays("default")
    before = fastdrop.default_generator().state["stream"]
    VALID_SEEDED_CALLS[name](arrays, backend)
    assert fastdrop.default_generator().state["stream"] == before + 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_limits_themselves_are_accepted(backend):
    """The edges of the documented ranges are valid: the checks are not off by one."""
    x = np.ones(SHAPE, np.float32)
    # offset + m == 2**63 with m the mask's elements, fewer than x's
    _, mask = fastdrop.dropout(x, 0.5, seed=1, offset=2**63 - M, noise_shape=NOISE,
                               backend=backend)
    assert mask.offset == 2**63 - M and mask.n == M
    _, mask = fastdrop.channel_dropout(x, 0.5, seed=1, offset=2**63 - M, backend=backend)
    assert mask.offset == 2**63 - M
    # noise shapes as lists, NumPy integers, arrays; equal to x's; broadcast_dims empty or NumPy
    for noise_shape in ([2, 3, 1, 1], np.array(NOISE), (np.int64(3), 1, np.uint8(1)), SHAPE,
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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call, error", [
    (lambda x, b: fastdrop.dropout(x, 0.5, seed=1, noise_shape=(5,), training=False,
                                   backend=b), ValueError),
    (lambda x, b: fastdrop.dropout(x, 0.5, seed=1, broadcast_dims=7, training=False,
                                   backend=b), ValueError),
    (lambda x, b: fastdrop.alpha_dropout(x, 0.5, seed=1, noise_shape=(5,), training=False,
                                         backend=b), ValueError),
    (lambda x, b: fastdrop.channel_dropout(x[0], 0.5, seed=1, training=False, backend=b),
     ValueError),
    (lambda x, b: fastdrop.feature_alpha_dropout(x, 0.5, seed=1, channel_axis=0,
                                                 training=False, backend=b), ValueError),
    (lambda x, b: fastdrop.gaussian_dropout(x, 1.0, seed=1, training=False, backend=b),
     ValueError),
    (lambda x, b: fastdrop.gaussian_dropout(x, 0.5, seed=-1, training=False, backend=b),
     ValueError),
    (lambda x, b: fastdrop.dropconnect(x[0, 0, 0], 0.5, seed=1, training=False, backend=b),
     ValueError),
], ids=["dropout-noise_shape", "dropout-broadcast_dims", "alpha", "channel-N-C",
        "feature_alpha-channel-is-batch", "gaussian-p=1", "gaussian-seed", "dropconnect-0-d"])
def test_training_off_still_checks_every_argument(backend, call, error):
    """With training=False the variants validate as in training and write nothing on error."""
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    before = x.copy()
    with pytest.raises(error):
        call(x, backend)
    assert np.array_equal(x, before)
