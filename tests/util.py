"""The test toolkit: dtypes, backends, awkward arrays, samples, snapshots and the function registry.

The property files (test_against_reference, test_bad_input, test_input_not_modified,
test_offsets_and_layouts, test_statistics) are parametrised over `REGISTRY`, with the
inputs of `AWKWARD`, so a new public function, dtype or backend is one entry here and
every property then covers it. `tests/test_toolkit.py` checks that every public
function that takes arrays or draws masks has an entry.
"""
import dataclasses
import functools
import itertools
import math
import zlib
from typing import Callable

import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from fastdrop._backends import available_backends

try:  # bfloat16 comes from ml_dtypes, an optional dependency (the bf16 extra)
    import ml_dtypes

    BFLOAT16 = ml_dtypes.bfloat16
except ImportError:
    BFLOAT16 = None
# Every float dtype the API takes; a new one is one more entry.
FLOAT_DTYPES = (np.float16, np.float32, np.float64) + ((BFLOAT16,) if BFLOAT16 else ())
ALL_BACKENDS = tuple(available_backends())
# Compiled backends are compared with the reference; "numpy" *is* the reference.
COMPILED_BACKENDS = tuple(name for name in ALL_BACKENDS if name != "numpy")


def numba_twin(backend, threads):
    """Whether a call on ``threads`` threads runs a Numba parallel wrapper, a twin to compile.

    Numba compiles each kernel once per dtype (seconds each), and again for each
    parallel wrapper. The wrappers only split the work among threads by whole mask
    words and call the serial kernels, whatever the dtype; the one-thread calls check
    every dtype. So a Numba call on more than one thread runs float32 alone.
    """
    return backend == "numba" and threads > 1


def dtypes_on(backend, threads=1):
    """The dtypes a call is checked in: all, but float32 alone where Numba compiles a twin."""
    return (np.float32,) if numba_twin(backend, threads) else FLOAT_DTYPES


def bits(array):
    """An array's raw bytes in C order, so comparisons are bit for bit (NaN, -0.0 included)."""
    return np.ascontiguousarray(array).view(np.uint8)


def assert_bits_equal(actual, expected, context=""):
    """Same shape, dtype and bytes."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, \
        (context, actual.shape, actual.dtype, expected.shape, expected.dtype)
    assert np.array_equal(bits(actual), bits(expected)), context


def assert_same_record(record, expected):
    """Two results' records (DropoutMask, GaussianNoise or None) are equal: words and fields."""
    assert type(record) is type(expected), (type(record), type(expected))
    if expected is None:
        return
    fields = ("shape", "n", "p", "seed", "stream", "offset")
    assert [getattr(record, f) for f in fields] == [getattr(expected, f) for f in fields]
    if isinstance(expected, fastdrop.DropoutMask):
        assert record.words.dtype == np.uint64
        assert np.array_equal(record.words, expected.words)


def require(module, extra):
    """``module`` imported, or the test (or, at module level, the file) skipped.

    The reason names the extra of pyproject.toml that installs it, so a run with only
    the test extra says what to install. ImportError (not only ModuleNotFoundError):
    fastdrop's integrations raise it, with the extra's name, when their host is missing.
    """
    reason = f'needs {module}: pip install "fastdrop-cpu[{extra}]"'
    return pytest.importorskip(module, reason=reason, exc_type=ImportError)


def require_inductor():
    """Skip the test where torch.compile's Inductor backend cannot run (it needs a C++ compiler)."""
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as error:  # torch's InvalidCxxCompiler, or what finding one raised
        pytest.skip(f"torch.compile's Inductor backend needs a C++ compiler: {error}")


def for_each(subtests, check, /, *arguments, **axes):
    """``check(*arguments, **case)`` for every combination of the axes' values, each a subtest.

    A failure names its case (``p=0.5, offset=3``) and the other cases still run: the
    loop of a test whose cases share one code path (bottleneck's and numpy's habit),
    where parametrising would multiply test IDs.
    """
    names = list(axes)
    for values in itertools.product(*axes.values()):
        case = dict(zip(names, values))
        with subtests.test(**case):
            check(*arguments, **case)


# ---------------------------------------------------------------- samples


@functools.lru_cache(maxsize=None)
def _sample(shape, dtype, salt):
    rng = np.random.default_rng([zlib.crc32(repr(shape).encode()), salt])
    flat = rng.standard_normal(math.prod(shape)) * 3
    flat[::97] = 0.0
    flat[1::101] = -0.0
    if flat.size > 10:
        flat[2], flat[3], flat[4] = np.inf, -np.inf, np.nan  # dropped lanes must still be +0.0
    flat = flat.astype(dtype)
    flat.flags.writeable = False
    return flat.reshape(shape)


def sample(shape, dtype, salt=0):
    """A fresh, writeable, C-ordered array, of the same values every run.

    Normals times 3 with +0.0 (every 97th), -0.0 (every 101st) and inf, -inf, NaN at flat
    indices 2, 3, 4 (``salt`` gives another set, e.g. for a gradient).
    """
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return _sample(shape, np.dtype(dtype), salt).copy()


# ---------------------------------------------------------------- awkward arrays

BOX = (37, 29, 5)  # 5365 elements: no axis or size a multiple of 64


@dataclasses.dataclass(frozen=True)
class Awkward:
    """One kind of awkward input: ``make(dtype)`` gives ``(x, owner)``, x a view of owner.

    x may be owner itself; `written` marks the elements of owner that x covers.
    """

    name: str
    owner_shape: tuple
    view: Callable = lambda owner: owner
    order: str = "C"
    writeable: bool = True
    large: bool = False  # worth running on the compiled backends only

    def __str__(self):
        return self.name

    def make(self, dtype, salt=0):
        owner = sample(self.owner_shape, dtype, salt)
        if self.order == "F":
            owner = np.asfortranarray(owner)
        x = self.view(owner)
        if not self.writeable:
            x.flags.writeable = False
        return x, owner

    @functools.cached_property
    def shape(self):
        return self.view(np.empty(self.owner_shape, np.uint8)).shape

    def written(self):
        """Booleans of owner's shape: True where x lies."""
        inside = np.zeros(self.owner_shape, bool)
        self.view(inside)[...] = True
        return inside


AWKWARD = (
    Awkward("C", BOX),
    Awkward("F", BOX, order="F"),
    Awkward("transposed", BOX, lambda a: a.transpose(2, 0, 1)),
    Awkward("strided", BOX, lambda a: a[::2, 1::3, ::-1]),  # steps 2, 3 and -1
    Awkward("negative-step-3", (1000,), lambda a: a[::-3]),
    Awkward("column", BOX, lambda a: a[:, 3, 2]),
    Awkward("4-d-view", BOX, lambda a: a[:36].reshape(6, 6, 29, 5)[:, ::2]),
    Awkward("0-d", BOX, lambda a: a[4, 4, 4, ...]),
    Awkward("empty", (0, 7, 3)),
    Awkward("read-only", BOX, writeable=False),
    *(Awkward(f"size-{n}", (n,)) for n in (0, 1, 63, 64, 65)),
    Awkward("size-2**20+3", (2**20 + 3,), large=True),
)
AWKWARD_BY_NAME = {kind.name: kind for kind in AWKWARD}
LAYOUTS = tuple(kind for kind in AWKWARD if not kind.name.startswith("size-"))
SIZES = tuple(kind for kind in AWKWARD if kind.name.startswith("size-"))


def awkward(*names):
    """The kinds of `AWKWARD` with these names, in this order."""
    return tuple(AWKWARD_BY_NAME[name] for name in names)


# ---------------------------------------------------------------- "input not written"


class Unchanged:
    """A record of some arrays and Generators, made now and checked later.

    The bytes, dtype and shape of some arrays (a DropoutMask: its words) and the state of
    some Generators.

    ``with unchanged(x, mask): call()`` checks on leaving the block (unless it raised);
    `keep` adds an object (and returns it), ``where=`` restricts the check to some elements.
    """

    def __init__(self, *objects):
        self._kept = []
        for item in objects:
            self.keep(item)

    def keep(self, item, where=None):
        if isinstance(item, np.ndarray):
            data = item if where is None else item[where]
            self._kept.append((item, where, item.dtype, item.shape, data.tobytes()))
        elif isinstance(item, fastdrop.DropoutMask):
            self.keep(item.words)
        elif isinstance(item, fastdrop.Generator):
            self._kept.append((item, None, None, None, item.state))
        return item

    def keep_all(self, items):
        for item in items:
            self.keep(item)

    def changed(self):
        """The kept objects that changed."""
        changed = []
        for item, where, dtype, shape, data in self._kept:
            if isinstance(item, fastdrop.Generator):
                if item.state != data:
                    changed.append(item)
            elif (item.dtype, item.shape) != (dtype, shape) or \
                    (item if where is None else item[where]).tobytes() != data:
                changed.append(item)
        return changed

    def check(self, message="an input was written"):
        assert not self.changed(), message

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        if error_type is None:
            self.check()
        return False


def unchanged(*objects):
    """`Unchanged` of these objects: ``with unchanged(x, mask, generator): ...``."""
    return Unchanged(*objects)


# ---------------------------------------------------------------- the registry of functions

# The standard arguments: p, seed, stream and offset (offset not a multiple of 64).
P, SEED, STREAM, OFFSET = 0.4, 0x5EED_F00D_0123_4567, 41, 5


def channel_noise(shape):
    """A noise shape for any x: (N, C, 1, ...) for ndim >= 3, (N, 1) for 2-d, (1,) for 1-d."""
    shape = tuple(shape)
    if len(shape) >= 3:
        return shape[:2] + (1,) * (len(shape) - 2)
    if len(shape) == 2:
        return (shape[0], 1)
    return (1,) * len(shape)


def broadcast_dims_of(shape, mask_shape):
    """The axes a mask of ``mask_shape`` (as long as shape) shares one element along."""
    return tuple(axis for axis, length in enumerate(mask_shape) if length == 1)


@functools.lru_cache(maxsize=None)
def reference_keep(n, p, seed=SEED, stream=STREAM, offset=OFFSET):
    """The reference's keep flags of n mask elements from global index offset (read-only)."""
    keep = reference.keep_bits(n, p, seed, stream, offset)
    keep.flags.writeable = False
    return keep


@functools.lru_cache(maxsize=None)
def _reference_words(n, p, seed, stream, offset):
    words = reference.pack_mask(reference_keep(n, p, seed, stream, offset))
    words.flags.writeable = False
    return words


def reference_words(n, p, seed=SEED, stream=STREAM, offset=OFFSET):
    """Fresh, writeable packed words of `reference_keep`."""
    return _reference_words(n, p, seed, stream, offset).copy()


def stored_mask(mask_shape, p=P, seed=SEED, stream=STREAM, offset=OFFSET):
    """The DropoutMask dropout(..., noise_shape=mask_shape) stores, from the reference.

    Its words are fresh and writeable.
    """
    mask_shape = tuple(mask_shape)
    words = reference_words(math.prod(mask_shape), p, seed, stream, offset)
    return fastdrop.DropoutMask(words, shape=mask_shape, p=p, seed=seed, stream=stream,
                                offset=offset)


def _keyed(**extra):
    """Arguments of a function that takes (p, seed, stream, offset) itself."""
    def arguments(shape, p, seed, stream, offset):
        keywords = {name: value(shape) for name, value in extra.items()}
        return (p,), dict(seed=seed, stream=stream, offset=offset, **keywords)
    return arguments


def _from_mask(mask_shape_of, raw_words=False):
    """Arguments of a function that reads a mask stored by the reference."""
    def arguments(shape, p, seed, stream, offset):
        mask = stored_mask(mask_shape_of(shape), p, seed, stream, offset)
        return ((mask.words,), dict(p=p)) if raw_words else ((mask,), {})
    return arguments


def _from_noise(shape, p, seed, stream, offset):
    return (fastdrop.GaussianNoise(shape=tuple(shape), p=p, seed=seed, stream=stream,
                                   offset=offset),), {}


def _each_element(shape):
    return tuple(shape)


@dataclasses.dataclass(frozen=True, eq=False)
class Function:
    """One public function called in one way, with the standard arguments.

    ``call(x, backend)`` runs ``fastdrop.<function>(x, *arguments, backend=backend)``;
    ``reference(x)`` runs its twin ``fastdrop.reference.<function>`` with the same
    arguments. Options p, seed, stream, offset replace the standard ones (for a function
    reading a stored mask or noise record they make that record); others (inplace, out,
    training, ...) are passed on.
    """

    name: str
    function: str  # its name in fastdrop and in fastdrop.reference
    arguments: Callable  # (shape, p, seed, stream, offset) -> (positional after x, keywords)
    input: str = "x"  # what messages call the first argument; "n" for an element count
    inplace: bool = True  # takes inplace=True
    out: bool = True  # takes out=
    takes_key: bool = True  # p, seed, stream and offset are its own arguments
    draws_stream: bool = True  # seed may be a Generator or None, which hands out a stream
    returns: str = "array and DropoutMask"  # or "array and GaussianNoise", "array",
    #                                         "mask words", "noise"
    arithmetic: str = "inverted"  # what kept elements become: "inverted" (x / (1 - p)),
    #   "alpha" (a x + b, dropped c), "alpha backward" (a x), "gaussian" (x (1 + sigma z)),
    #   "keep bits" (mask words), "noise" (1 + sigma z)
    max_p: float = 1.0  # p lies in [0, max_p]; Gaussian noise needs p < 1
    min_ndim: int = 0
    mask_shape: Callable = _each_element  # x's shape -> the shape of its mask or noise

    def __str__(self):
        return self.name

    @property
    def takes_array(self):
        return self.input != "n"

    @property
    def forward(self):
        """Takes training=False (and then returns its input)."""
        return self.takes_array and self.draws_stream

    def accepts(self, shape):
        return self.takes_array and len(shape) >= self.min_ndim

    def valid_p(self, p):
        return 0.0 <= p <= self.max_p

    def bind(self, x, *, p=P, seed=SEED, stream=STREAM, offset=OFFSET):
        """(positional, keywords) of a call on x (for "n": on an array of n elements or n)."""
        shape = np.shape(x) if self.takes_array or not isinstance(x, int) else (x,)
        first = np.size(x) if not self.takes_array and isinstance(x, np.ndarray) else x
        positional, keywords = self.arguments(shape, p, seed, stream, offset)
        return (first, *positional), keywords

    def call(self, x, backend, *, p=P, seed=SEED, stream=STREAM, offset=OFFSET, **options):
        positional, keywords = self.bind(x, p=p, seed=seed, stream=stream, offset=offset)
        return self.run(backend, positional, {**keywords, **options})

    def reference(self, x, *, p=P, seed=SEED, stream=STREAM, offset=OFFSET, **options):
        positional, keywords = self.bind(x, p=p, seed=seed, stream=stream, offset=offset)
        return getattr(reference, self.function)(*positional, **keywords, **options)

    def run(self, backend, positional, keywords):
        """The public function on bound arguments (see `bind`)."""
        return getattr(fastdrop, self.function)(*positional, backend=backend, **keywords)

    def output(self, result):
        """The array of a result: y of (y, record), or the result itself."""
        return result[0] if self.returns.startswith("array and") else result

    def record(self, result):
        """The DropoutMask or GaussianNoise of a result, or None."""
        return result[1] if self.returns.startswith("array and") else None


# Functions reading a stored mask or noise record: p, seed, stream, offset make the record.
_stored = dict(takes_key=False, draws_stream=False, returns="array")
REGISTRY = (
    Function("dropout", "dropout", _keyed()),
    Function("dropout-noise_shape", "dropout", _keyed(noise_shape=channel_noise),
             mask_shape=channel_noise),
    Function("dropout-broadcast_dims", "dropout",
             _keyed(broadcast_dims=lambda s: broadcast_dims_of(s, channel_noise(s))),
             mask_shape=channel_noise),
    Function("channel_dropout", "channel_dropout", _keyed(), min_ndim=3,
             mask_shape=channel_noise),
    Function("alpha_dropout", "alpha_dropout", _keyed(), arithmetic="alpha"),
    Function("alpha_dropout-noise_shape", "alpha_dropout", _keyed(noise_shape=channel_noise),
             arithmetic="alpha", mask_shape=channel_noise),
    Function("feature_alpha_dropout", "feature_alpha_dropout", _keyed(), arithmetic="alpha",
             min_ndim=3, mask_shape=channel_noise),
    Function("gaussian_dropout", "gaussian_dropout", _keyed(), returns="array and GaussianNoise",
             arithmetic="gaussian", max_p=np.nextafter(1.0, 0.0)),
    Function("dropconnect", "dropconnect", _keyed(), input="weight", inplace=False, min_ndim=1),
    Function("apply_mask", "apply_mask", _from_mask(channel_noise), mask_shape=channel_noise,
             **_stored),
    Function("apply_mask-words", "apply_mask", _from_mask(_each_element, raw_words=True),
             **_stored),
    Function("dropout_backward", "dropout_backward", _from_mask(_each_element), input="grad",
             **_stored),
    Function("dropout_backward-words", "dropout_backward",
             _from_mask(_each_element, raw_words=True), input="grad", **_stored),
    Function("dropout_backward-broadcast", "dropout_backward", _from_mask(channel_noise),
             mask_shape=channel_noise, input="grad", **_stored),
    Function("dropout_backward_recompute", "dropout_backward_recompute", _keyed(),
             input="grad", draws_stream=False, returns="array"),
    Function("dropout_backward_recompute-noise_shape", "dropout_backward_recompute",
             _keyed(noise_shape=channel_noise), input="grad", draws_stream=False,
             returns="array", mask_shape=channel_noise),
    Function("alpha_dropout_backward", "alpha_dropout_backward", _from_mask(channel_noise),
             arithmetic="alpha backward", mask_shape=channel_noise, input="grad", **_stored),
    Function("gaussian_dropout_backward", "gaussian_dropout_backward", _from_noise,
             arithmetic="gaussian", max_p=np.nextafter(1.0, 0.0), input="grad", **_stored),
    Function("bernoulli_mask", "bernoulli_mask", _keyed(), input="n", inplace=False, out=False,
             returns="mask words", arithmetic="keep bits"),
    Function("gaussian_noise", "gaussian_noise", _keyed(), input="n", inplace=False, out=False,
             returns="noise", arithmetic="noise", max_p=np.nextafter(1.0, 0.0)),
)
REGISTRY_BY_NAME = {entry.name: entry for entry in REGISTRY}
ARRAY_FUNCTIONS = tuple(entry for entry in REGISTRY if entry.takes_array)


def registry(*names, where=None):
    """Registry entries by name (all when none given), optionally filtered by ``where(entry)``."""
    entries = tuple(REGISTRY_BY_NAME[name] for name in names) if names else REGISTRY
    return tuple(entry for entry in entries if where is None or where(entry))
