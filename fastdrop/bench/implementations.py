"""The one registry of what is benchmarked: operations, and the implementations of each.

``fastdrop bench`` and the repository's ``benchmarks/`` (the pytest-benchmark suite, the
targets, docs/development/benchmark-runs.md) all read `OPERATIONS` and `IMPLEMENTATIONS`,
so a new implementation or operation appears everywhere at once; ``benchmarks/`` adds NumPy
written for speed as one more `Implementation`.

An implementation of an operation is a *setup* ``setup(n, p, dtype, threads)`` that
allocates everything (inputs, outputs, stored masks, scratch buffers) and returns a
zero-argument callable: the timed call. In-place operations run on the same array
call after call. That changes the values but not the work: dropout of dropout reads
and writes the same bytes, and no kernel here branches on values. Values only ever
shrink to +0.0 or grow by s = 1/(1-p) > 1, so they never become subnormal (the one
case x86 SSE/AVX arithmetic slows down for). The floor's values reach inf after a
few hundred calls, and so do the elements a fixed stored mask keeps in the backward
rows (the textbook NumPy formula can then make NaN, inf * 0); inf and NaN arithmetic
run at full speed on x86-64 SSE/AVX (checked: ``scale_in_place`` on ones, inf and
NaN takes the same time). The runner silences NumPy's overflow warnings.

Gaussian dropout is the exception: multiplying by noise ``1 + sigma * z`` call after
call walks |x| down through the subnormals (about 20x slower to multiply on x86) to
zero within a few hundred calls, so a row's speed would depend on how many calls it
made. Its rows start from +0.0 instead, which stays +-0.0 and multiplies at full speed.
"""
import importlib.util
import math
from dataclasses import dataclass, field

import numpy as np

from .._internal import SERIAL_ELEMENTS, backend_available, bfloat16_dtype, resolve_backend
from ..maskstream.spec import gaussian_sigma

SEED = 1234
STREAM = 0


@dataclass(frozen=True)
class Operation:
    """One benchmarked operation, as the tables and the plot name it.

    Attributes
    ----------
    name : str
        The registry key (the ``--ops`` value), e.g. ``"forward_inplace"``.
    title : str
        The short title in tables and plots.
    description : str
        What one timed call does.
    dtype_independent : bool
        Timed once per (n, p), with the first dtype's floor (the mask alone).
    """

    name: str
    title: str
    description: str
    dtype_independent: bool = False  # timed once per (n, p), with the first dtype's floor


OPERATIONS = {operation.name: operation for operation in (
    Operation("forward_inplace", "forward in place",
              "x = dropout(x): draw the mask, scale and zero x in place (fastdrop also "
              "stores the packed mask)"),
    Operation("forward", "forward out of place",
              "y = dropout(x) into a separate array (preallocated where the API takes one)"),
    Operation("mask", "mask only",
              "keep mask of n elements: packed bits (fastdrop) or bool (NumPy, PyTorch)",
              dtype_independent=True),
    Operation("backward_mask", "backward from mask",
              "grad = grad * keep / (1 - p) in place, keep read from the stored mask"),
    Operation("backward_recompute", "backward recompute",
              "grad = grad * keep / (1 - p) in place, keep regenerated from the seed"),
    Operation("channel_inplace", "channel dropout in place",
              "x = channel_dropout(x) in place on an (N, C, 32, 32) array of n elements: one "
              "keep bit per (sample, channel), each 32x32 map zeroed or scaled whole"),
    Operation("gaussian_inplace", "Gaussian dropout in place",
              "x *= 1 + sigma * z in place, z standard normal per element, sigma = "
              "sqrt(p / (1 - p)); compute-bound (fastdrop: a Philox block per 2 elements and "
              "an inverse normal CDF), nothing stored"),
)}


@dataclass(frozen=True)
class Implementation:
    """One benchmarked implementation: where it runs and how each operation is set up.

    Attributes
    ----------
    name : str
        The registry key (the ``--impls`` value), e.g. ``"cython"``.
    description : str
        What the implementation is, for the report.
    requirement : callable
        ``requirement()`` is None if the implementation can run here, else the reason
        it cannot.
    setups : dict
        Operation name -> ``setup(n, p, dtype, threads)``, which allocates everything and
        returns the timed zero-argument callable.
    """

    name: str
    description: str
    requirement: object  # () -> None if usable here, else the reason it is not
    setups: dict = field(default_factory=dict)  # operation name -> setup

    def unavailable_reason(self):
        """None if this implementation runs here, else why not."""
        return self.requirement()

    def available(self):
        """Whether this implementation can run here (its requirement is met)."""
        return self.requirement() is None

    def supports(self, operation):
        """Whether this implementation has a setup for ``operation`` (a name)."""
        return operation in self.setups

    def setup(self, operation, n, p, dtype, threads):
        """The timed zero-argument callable for ``operation`` on n elements."""
        return self.setups[operation](int(n), float(p), bench_dtype(dtype), int(threads))


def input_values(n, dtype):
    """The array a row starts from: n elements of 1.5."""
    return np.full(n, 1.5, dtype=dtype)


def bench_dtype(dtype):
    """A row's dtype from its name (bfloat16 is ml_dtypes', imported only for it)."""
    if isinstance(dtype, str) and dtype == "bfloat16":
        return bfloat16_dtype()
    return np.dtype(dtype)


def _is_bfloat16(dtype):
    return bench_dtype(dtype).name == "bfloat16"


def uniform_dtype(dtype):
    """The dtype NumPy's generator draws uniforms in for x's dtype (bfloat16: float32)."""
    return np.float32 if _is_bfloat16(dtype) else dtype


def dropout_scale(p):
    """The factor 1 / (1 - p) that kept elements are multiplied by."""
    return 1.0 / (1.0 - p)


CHANNEL_MAP = 32 * 32  # H * W of the channel rows' feature maps
CHANNELS = 64


def channel_shape(n):
    """(N, C, H, W) with N*C*H*W = n: 32x32 maps and 64 channels where n allows.

    Sizes that are not a multiple of 32*32 get smaller maps (a power of two that
    divides n), so every n of the registry has a shape.
    """
    spatial = math.gcd(n, CHANNEL_MAP)
    height = 1 << ((spatial.bit_length() - 1) // 2)
    channels = math.gcd(n // spatial, CHANNELS)
    return (n // spatial // channels, channels, height, spatial // height)


def channel_input(n, dtype):
    """`input_values` shaped (N, C, H, W) by `channel_shape`."""
    return input_values(n, dtype).reshape(channel_shape(n))


def gaussian_input(n, dtype):
    """+0.0: repeated in-place noise keeps it +-0.0, never subnormal (see the module notes)."""
    return np.zeros(n, dtype=dtype)


def _module_requirement(module):
    def requirement():
        if importlib.util.find_spec(module) is None:
            return f"not installed: pip install {module}"
        return None
    return requirement


def _backend_requirement(backend):
    def requirement():
        try:
            resolve_backend(backend)
        except ValueError as error:  # it says what cannot be imported
            return str(error)
        return None
    return requirement


# ---------------------------------------------------------------------------- the floor

def floor_kernel():
    """Which kernel measures the floor here: "cython" (scale_in_place), "numba" or "numpy"."""
    if backend_available("cython"):
        from ..kernels.cython import kernels as cython_kernels

        if hasattr(cython_kernels, "scale_in_place"):
            return "cython"
    if importlib.util.find_spec("numba") is not None:
        return "numba"
    return "numpy"


FLOOR_DESCRIPTIONS = {
    "cython": "x *= s in place with the kernels' own vector loop and OpenMP threads "
              "(bfloat16 too, rounded as dropout rounds)",
    "numba": "x *= s in place, Numba prange (the Cython extension is not built)",
    "numpy": "np.multiply(x, s, out=x) on one thread (neither Cython nor Numba is available)",
}
FLOOR_SERIAL = (f"below 2^{SERIAL_ELEMENTS.bit_length() - 1} elements, where fastdrop runs on one "
                "thread: np.multiply(x, s, out=x)")

_numba_scale_kernel = None


def _numba_scale():
    global _numba_scale_kernel
    if _numba_scale_kernel is None:
        from numba import njit, prange

        @njit(parallel=True, cache=False)
        def scale(values, factor):
            for i in prange(values.size):
                values[i] *= factor

        _numba_scale_kernel = scale
    return _numba_scale_kernel


def _floor_setup(n, p, dtype, threads):
    """x *= s over n elements on all threads; one thread below fastdrop's serial cutoff.

    Below the cutoff (``fastdrop._config.SERIAL_ELEMENTS``) fastdrop runs serially with
    no parallel region, so the floor there is NumPy's serial SIMD loop
    ``np.multiply(x, s, out=x)`` rather than a one-thread parallel region.
    """
    from ..kernels.common import chunk_count

    x = input_values(n, dtype)
    scale = dropout_scale(p)
    threads = chunk_count(n, threads)  # same serial cutoff as fastdrop's kernels
    if _is_bfloat16(dtype) and floor_kernel() == "cython":
        # NumPy's bfloat16 loops (ml_dtypes) are no floor: always the kernels' own scaling
        from ..kernels.cython.kernels import scale_in_place

        bits = x.view(np.uint16)
        return lambda: scale_in_place(bits, scale, threads)
    kernel = floor_kernel() if threads > 1 and not _is_bfloat16(dtype) else "numpy"
    if kernel == "cython":
        from ..kernels.cython.kernels import scale_in_place

        return lambda: scale_in_place(x, scale, threads)
    if kernel == "numba":
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        numba_scale, factor = _numba_scale(), dtype.type(scale)
        return lambda: numba_scale(x, factor)
    factor = dtype.type(scale)
    return lambda: np.multiply(x, factor, out=x)


# ----------------------------------------------------------- NumPy, the textbook formula

def _numpy_forward_inplace(n, p, dtype, threads):
    x, rng = input_values(n, dtype), np.random.default_rng(SEED)

    def call():  # x *= (rng.random(x.shape) >= p) / (1 - p)
        np.multiply(x, (rng.random(x.shape) >= p) / (1 - p), out=x)
    return call


def _numpy_forward(n, p, dtype, threads):
    x, rng = input_values(n, dtype), np.random.default_rng(SEED)
    return lambda: x * (rng.random(x.shape) >= p) / (1 - p)


def _numpy_mask(n, p, dtype, threads):
    rng = np.random.default_rng(SEED)
    return lambda: rng.random(n) >= p


def _numpy_backward_mask(n, p, dtype, threads):
    grad, mask = input_values(n, dtype), np.random.default_rng(SEED).random(n) >= p

    def call():  # grad *= mask / (1 - p)
        np.multiply(grad, mask / (1 - p), out=grad)
    return call


def _numpy_backward_recompute(n, p, dtype, threads):
    grad = input_values(n, dtype)

    def call():  # NumPy's only way to recompute: reseed and draw again
        np.multiply(grad, (np.random.default_rng(SEED).random(grad.shape) >= p) / (1 - p),
                    out=grad)
    return call


def _numpy_channel_inplace(n, p, dtype, threads):
    x, rng = channel_input(n, dtype), np.random.default_rng(SEED)
    mask_shape = x.shape[:2] + (1, 1)

    def call():  # x *= (rng.random((N, C, 1, 1)) >= p) / (1 - p)
        np.multiply(x, (rng.random(mask_shape) >= p) / (1 - p), out=x)
    return call


def _numpy_gaussian_inplace(n, p, dtype, threads):
    x, rng, sigma = gaussian_input(n, dtype), np.random.default_rng(SEED), gaussian_sigma(p)

    def call():  # x *= rng.normal(1, sigma, x.shape)
        np.multiply(x, rng.normal(1.0, sigma, x.shape), out=x)
    return call


# ------------------------------------------------------------------------------ PyTorch

def _torch(threads):
    import torch

    torch.set_num_threads(threads)
    return torch


def _tensor(torch, array):
    """A tensor sharing ``array``'s memory (bfloat16 through its 16-bit pattern)."""
    if _is_bfloat16(array.dtype):
        return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(array)


def _torch_forward_inplace(n, p, dtype, threads):
    torch = _torch(threads)
    x = _tensor(torch, input_values(n, dtype))
    return lambda: torch.nn.functional.dropout(x, p, training=True, inplace=True)


def _torch_forward(n, p, dtype, threads):
    torch = _torch(threads)
    x = _tensor(torch, input_values(n, dtype))
    return lambda: torch.nn.functional.dropout(x, p, training=True)


def _torch_mask(n, p, dtype, threads):
    torch = _torch(threads)
    keep = torch.empty(n, dtype=torch.bool)
    return lambda: keep.bernoulli_(1 - p)


def _torch_backward_mask(n, p, dtype, threads):  # aten native_dropout_backward's arithmetic
    torch = _torch(threads)
    grad = _tensor(torch, input_values(n, dtype))
    keep = torch.empty(n, dtype=torch.bool).bernoulli_(1 - p)
    scale = dropout_scale(p)
    return lambda: grad.mul_(keep).mul_(scale)


def _torch_backward_recompute(n, p, dtype, threads):
    torch = _torch(threads)
    grad = _tensor(torch, input_values(n, dtype))
    keep, generator = torch.empty(n, dtype=torch.bool), torch.Generator()
    scale = dropout_scale(p)

    def call():
        keep.bernoulli_(1 - p, generator=generator.manual_seed(SEED))
        grad.mul_(keep).mul_(scale)
    return call


def _torch_channel_inplace(n, p, dtype, threads):
    torch = _torch(threads)
    x = _tensor(torch, channel_input(n, dtype))
    return lambda: torch.nn.functional.dropout2d(x, p, training=True, inplace=True)


def _torch_gaussian_inplace(n, p, dtype, threads):  # torch has no Gaussian dropout: the idiom
    torch = _torch(threads)
    x, sigma = _tensor(torch, gaussian_input(n, dtype)), gaussian_sigma(p)
    return lambda: x.mul_(torch.empty_like(x).normal_(1.0, sigma))


# ----------------------------------------------------------------------------- fastdrop

def _fastdrop_setups(backend):
    import fastdrop

    def forward_inplace(n, p, dtype, threads):
        fastdrop.set_num_threads(threads)
        x = input_values(n, dtype)
        return lambda: fastdrop.dropout(x, p, seed=SEED, stream=STREAM, inplace=True,
                                        backend=backend)

    def forward(n, p, dtype, threads):
        fastdrop.set_num_threads(threads)
        x, y = input_values(n, dtype), np.empty(n, dtype=dtype)
        return lambda: fastdrop.dropout(x, p, seed=SEED, stream=STREAM, out=y, backend=backend)

    def mask(n, p, dtype, threads):
        fastdrop.set_num_threads(threads)
        return lambda: fastdrop.bernoulli_mask(n, p, seed=SEED, stream=STREAM, backend=backend)

    def backward_mask(n, p, dtype, threads):
        fastdrop.set_num_threads(threads)
        grad = input_values(n, dtype)
        _, stored = fastdrop.dropout(np.zeros(n, dtype), p, seed=SEED, stream=STREAM,
                                     backend=backend)
        return lambda: fastdrop.dropout_backward(grad, stored, inplace=True, backend=backend)

    def backward_recompute(n, p, dtype, threads):
        fastdrop.set_num_threads(threads)
        grad = input_values(n, dtype)
        return lambda: fastdrop.dropout_backward_recompute(
            grad, p, seed=SEED, stream=STREAM, inplace=True, backend=backend)

    def channel_inplace(n, p, dtype, threads):
        fastdrop.set_num_threads(threads)
        x = channel_input(n, dtype)
        return lambda: fastdrop.channel_dropout(x, p, seed=SEED, stream=STREAM, inplace=True,
                                                backend=backend)

    def gaussian_inplace(n, p, dtype, threads):
        fastdrop.set_num_threads(threads)
        x = gaussian_input(n, dtype)
        return lambda: fastdrop.gaussian_dropout(x, p, seed=SEED, stream=STREAM, inplace=True,
                                                 backend=backend)

    return {"forward_inplace": forward_inplace, "forward": forward, "mask": mask,
            "backward_mask": backward_mask, "backward_recompute": backward_recompute,
            "channel_inplace": channel_inplace, "gaussian_inplace": gaussian_inplace}


def _all_operations(setup):
    return {name: setup for name in OPERATIONS}


IMPLEMENTATIONS = {implementation.name: implementation for implementation in (
    Implementation(
        "floor",
        "the memory floor: x *= s in place on the same threads, measured in the same run",
        lambda: None, _all_operations(_floor_setup)),
    Implementation(
        "numpy",
        "the textbook formula x * (rng.random(x.shape) >= p) / (1 - p) (in-place rows: x *= ...;"
        " backward: grad *= mask / (1 - p) with a stored bool mask; recompute: reseed and draw;"
        " channel: x *= (rng.random((N, C, 1, 1)) >= p) / (1 - p); Gaussian: "
        "x *= rng.normal(1, sigma, x.shape))",
        lambda: None,
        {"forward_inplace": _numpy_forward_inplace, "forward": _numpy_forward,
         "mask": _numpy_mask, "backward_mask": _numpy_backward_mask,
         "backward_recompute": _numpy_backward_recompute,
         "channel_inplace": _numpy_channel_inplace,
         "gaussian_inplace": _numpy_gaussian_inplace}),
    Implementation(
        "torch",
        "torch.nn.functional.dropout (inplace=True for in-place rows); mask: bool bernoulli_; "
        "backward: grad.mul_(mask).mul_(scale); channel: F.dropout2d(inplace=True); "
        "Gaussian (no torch function): x.mul_(torch.empty_like(x).normal_(1, sigma)), "
        "allocating the noise each call; torch.set_num_threads(threads)",
        _module_requirement("torch"),
        {"forward_inplace": _torch_forward_inplace, "forward": _torch_forward,
         "mask": _torch_mask, "backward_mask": _torch_backward_mask,
         "backward_recompute": _torch_backward_recompute,
         "channel_inplace": _torch_channel_inplace,
         "gaussian_inplace": _torch_gaussian_inplace}),
    Implementation(
        "numba", "fastdrop, backend='numba'", _backend_requirement("numba"),
        _fastdrop_setups("numba")),
    Implementation(
        "cython", "fastdrop, backend='cython'", _backend_requirement("cython"),
        _fastdrop_setups("cython")),
)}

BASELINE = "numpy"  # speed-ups are over this implementation
FLOOR = "floor"  # ratios divide by this implementation's time


def available_implementations(names=None):
    """The implementations (all, or those named) that can run here, in registry order."""
    chosen = IMPLEMENTATIONS if names is None else {name: IMPLEMENTATIONS[name] for name in names}
    return [implementation for implementation in IMPLEMENTATIONS.values()
            if implementation.name in chosen and implementation.available()]
