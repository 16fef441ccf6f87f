"""Numba backend: the kernel interface of `fastdrop.kernels.interface` on Numba-compiled loops.

Functions here take checked machine values on 1-D C-contiguous arrays (the public
API validates, lays arrays out and makes the interface's records once per call),
unpack the records into the loops' arguments, and run a serial range loop or its
parallel twin over ranges of whole mask words.

Modules: ``philox`` (the block function), ``bits`` (float bit reinterpretation),
``half`` (float16 arithmetic), ``words`` (mask words, scalar and as an LLVM vector
batch), ``normal`` (the Gaussian stream), ``llvm`` (prefetch and whole-word scaling
intrinsics), ``dropout`` (the dropout loops), ``runs`` (blocks of a larger array),
``variants`` (noise shapes, alpha and Gaussian dropout), ``fused`` (dropout and an add),
``softmax`` (softmax then dropout).

Before Numba compiles an entry loop for a new type (seconds to a minute; a load from
Numba's disk cache takes milliseconds and says nothing), one line on stderr says so,
once per type and process, unless ``FASTDROP_QUIET=1`` (`fastdrop._config`).
"""
import math
import os
import sys

import numba
import numpy as np
from numba.core import event

from ..._config import ENV_QUIET, NUMBA_CACHE, SERIAL_ELEMENTS
from ..common import chunk_count, kernel_mask_op, kernel_scale
from .dropout import (
    mask_parallel,
    mask_range,
    plain_range,
    stream_parallel,
    stream_range,
    words_parallel,
    words_range,
)
from .fused import dropout_add_parallel, dropout_add_range
from .runs import runs_parallel, runs_range
from .softmax import (
    softmax_backward_parallel,
    softmax_backward_range,
    softmax_parallel,
    softmax_range,
)
from .variants import (
    broadcast_parallel,
    broadcast_range,
    gaussian_parallel,
    gaussian_range,
    gaussian_runs_parallel,
    gaussian_runs_range,
)

_NO_WORDS = np.empty(0, dtype=np.uint64)
_NO_ELEMENTS = np.empty(0, dtype=np.float32)
_ENTRY_LOOPS = frozenset((
    plain_range, stream_range, stream_parallel, words_range, words_parallel, mask_range,
    mask_parallel, runs_range, runs_parallel, broadcast_range, broadcast_parallel,
    gaussian_range, gaussian_parallel, gaussian_runs_range, gaussian_runs_parallel,
    dropout_add_range, dropout_add_parallel, softmax_range, softmax_parallel,
    softmax_backward_range, softmax_backward_parallel))
# what a loop's first array holds, by its Numba dtype (kernel_view's bit-pattern views)
_TYPE_NAMES = {"uint16": "float16", "int16": "bfloat16", "uint64": "packed masks"}


class _CompileNotice(event.Listener):
    """One line on stderr before an entry loop compiles for a type not yet announced.

    Numba's "numba:compile" event starts only where no compiled or cached code fits the
    arguments, so a load from the disk cache never reaches it.
    """

    def __init__(self):
        self.announced = set()

    def on_start(self, compile_event):
        details = compile_event.data
        if details["dispatcher"] not in _ENTRY_LOOPS:
            return
        arrays = [arg for arg in details["args"] if isinstance(arg, numba.types.Array)]
        dtype = str(arrays[0].dtype) if arrays else "its scalars"
        name = _TYPE_NAMES.get(dtype, dtype)
        if name in self.announced or os.environ.get(ENV_QUIET, "").strip() not in ("", "0"):
            return
        self.announced.add(name)
        kept = "cached on disk" if NUMBA_CACHE else "not cached: FASTDROP_NUMBA_CACHE=0"
        sys.stderr.write(f"fastdrop: Numba is compiling the kernels for {name} "
                         f"(once per type; {kept}) ...\n")
        sys.stderr.flush()

    def on_end(self, compile_event):
        pass


event.register("numba:compile", _CompileNotice())


def kernel_view(array):
    """An array as the Numba loops see it: float16 as uint16 and bfloat16 as int16 bit patterns.

    The API passes bfloat16 as uint16 bits; Numba's element types then tell the two
    16-bit formats apart.
    """
    char = array.dtype.char
    if char == "e":
        return array.view(np.uint16)
    if char == "H":
        return array.view(np.int16)
    return array


def input_view(array):
    """`kernel_view` of an array a loop only reads, read-only whatever the caller's flags.

    A read-only array is another Numba type: handing every input read-only compiles each
    loop once per element type (in place, the writeable target is the same memory).
    """
    view = kernel_view(array)
    if view is array:
        view = array.view()
    view.setflags(write=False)
    return view


def _run(serial, parallel, args, n, threads, units=None):
    """Run the serial range kernel, or the parallel one on ``threads`` threads.

    Kernels take ranges of ``units`` work items (default: the ceil(n / 64) mask
    words of n elements; element kernels pass n). Numba's own thread setting is
    restored afterwards, so fastdrop's does not leak into the caller's Numba code.
    """
    chunks = chunk_count(n, min(threads, numba.config.NUMBA_NUM_THREADS))
    if chunks == 1:
        serial(*args, 0, (n + 63) // 64 if units is None else units)
        return
    _on_threads(parallel, args + (chunks,), chunks)


def _on_threads(parallel, args, chunks):
    """``parallel(*args)`` on ``chunks`` Numba threads, Numba's own setting restored after."""
    previous = numba.get_num_threads()
    numba.set_num_threads(chunks)
    try:
        parallel(*args)
    finally:
        numba.set_num_threads(previous)


def dropout_plain(x, inplace, scale, params, threads):
    """Fused forward of a whole C-contiguous array, in place or into a new array: ``(y, words)``.

    The API's one-step path for the usual call: x is an ndarray, C-contiguous, aligned,
    native float16/32/64 or uint16 bfloat16 bits (writeable in place) of ``params.n``
    elements; every value is checked. A single thread's work goes straight to
    `plain_range` with Python numbers, which Numba's dispatcher types fastest.
    """
    seed, stream, threshold, offset, n = (params.seed, params.stream, params.threshold,
                                          params.offset, params.n)
    words = np.empty((n + 63) >> 6, dtype=np.uint64)
    target = x if inplace else np.empty(x.shape, dtype=x.dtype)
    source = x if x.ndim == 1 else x.reshape(-1)
    result = source if inplace else target.reshape(-1)
    if n and x.dtype.char not in "eH" and (n < SERIAL_ELEMENTS or threads == 1):
        # keys and T >= 2**63 as the int64 of their bits: one compiled signature
        plain_range(source, result, words, scale, seed if seed < _TOP else seed - _KEYS,
                    stream if stream < _TOP else stream - _KEYS,
                    threshold if threshold < _TOP else threshold - _KEYS, params.drop_all, offset)
    else:
        scale_by_stream(source, result, words, scale, params, threads)
    return target, words


_TOP, _KEYS = 2**63, 2**64  # a 64-bit unsigned value v >= 2**63 is the int64 v - 2**64


def scale_by_stream(source, target, words, scale, params, threads):
    """Mask words from the stream, and/or target = source * keep * scale (1-D contiguous arrays).

    ``source``/``target`` may be None (mask only); ``words`` may be None (recompute, no mask).
    """
    n = params.n
    stream_args = (np.uint64(params.seed), np.uint64(params.stream), np.uint64(params.threshold),
                   bool(params.drop_all), params.offset, n)  # ints < 2**63: typed int64
    if source is None:
        _run(words_range, words_parallel, (words,) + stream_args, n, threads)
        return
    element_scale = kernel_scale(source.dtype, scale)
    args = (input_view(source), kernel_view(target), _NO_WORDS if words is None else words,
            element_scale) + stream_args
    _run(stream_range, stream_parallel, args, n, threads)


def scale_by_runs(source, target, words, scale, params, runs, threads):
    """`scale_by_stream` for a block of a larger array: global indices from ``runs``.

    ``runs`` is a `BlockRuns` record.
    """
    n = params.n
    if source is None:  # mask words alone: the loops take empty element arrays
        source = target = _NO_ELEMENTS
        element_scale = np.float32(0.0)
    else:
        element_scale = kernel_scale(source.dtype, scale)
    args = (input_view(source), kernel_view(target), _NO_WORDS if words is None else words,
            element_scale, np.uint64(params.seed), np.uint64(params.stream),
            np.uint64(params.threshold), bool(params.drop_all), np.uint64(runs.base),
            runs.outer_shape, runs.outer_strides, np.int64(runs.run), np.int64(n))
    _run(runs_range, runs_parallel, args, n, threads)


def scale_by_mask(source, target, words, scale, threads):
    """target = source * keep * scale with keep read from packed words (1-D contiguous arrays)."""
    n = source.size
    element_scale = kernel_scale(source.dtype, scale)
    args = (input_view(source), kernel_view(target), words, element_scale, np.int64(n))
    _run(mask_range, mask_parallel, args, n, threads)


def apply_broadcast(source, target, words, layout, scale, affine, threads):
    """target = source with stored keep bits stretched over it by a `BroadcastLayout`.

    ``affine`` None: kept x * scale, dropped +0.0; else alpha dropout's (a, b, c).
    """
    n = source.size
    if n == 0:
        return
    is_affine, element_scale, shift, dropped = kernel_mask_op(source.dtype, scale, affine)
    if source.dtype == np.float16:
        dropped = np.uint16(np.float16(dropped).view(np.uint16))
    elif source.dtype == np.uint16:  # bfloat16 bits: the exact value's top half
        dropped = np.int16(np.uint16(np.float32(dropped).view(np.uint32) >> 16))
    else:  # the element type, dropout's +0.0 too: one compiled loop per dtype
        dropped = source.dtype.type(dropped)
    args = (input_view(source), kernel_view(target), words, layout.sizes, layout.mask_strides,
            is_affine, element_scale, type(element_scale)(shift), dropped)
    _run(broadcast_range, broadcast_parallel, args, n, threads, units=n)


def gaussian(source, target, params, threads):
    """target = source * (1 + sigma * z) with z from the Gaussian noise stream (1-D arrays).

    ``params`` is a `NoiseParams` record.
    """
    n = source.size
    if n == 0:
        return
    args = (input_view(source), kernel_view(target), np.float64(params.sigma),
            np.uint64(params.seed), np.uint64(params.stream), np.uint64(params.offset))
    _run(gaussian_range, gaussian_parallel, args, n, threads, units=n)


def gaussian_runs(source, target, params, runs, threads):
    """`gaussian` for a block of a larger array: global indices from ``runs``."""
    n = source.size
    if n == 0:
        return
    args = (input_view(source), kernel_view(target), np.float64(params.sigma),
            np.uint64(params.seed), np.uint64(params.stream), np.uint64(runs.base),
            runs.outer_shape, runs.outer_strides, np.int64(runs.run))
    _run(gaussian_runs_range, gaussian_runs_parallel, args, n, threads, units=n)


def dropout_add(source, residual, bias, target, words, scale, params, threads):
    """target = residual + dropout(source (+ bias)) with keep bits from the stream (1-D arrays).

    ``bias`` None or the last axis's values (element i reads ``bias[i % bias.size]``);
    ``words`` None (no mask stored) or room for ceil(n / 64) words; ``target`` may be
    ``residual`` (in place).
    """
    n = params.n
    if n == 0:
        return
    source = input_view(source)
    bias = source[:0] if bias is None else input_view(bias)
    args = (source, input_view(residual), bias, kernel_view(target),
            _NO_WORDS if words is None else words, kernel_scale(residual.dtype, scale),
            np.uint64(params.seed), np.uint64(params.stream), np.uint64(params.threshold),
            bool(params.drop_all), params.offset, n)
    _run(dropout_add_range, dropout_add_parallel, args, n, threads)


def _units_per_group(unit):
    """Outer units whose elements fill whole mask words: 64 / gcd(unit, 64)."""
    return 64 // math.gcd(unit, 64)


def _run_units(serial, parallel, args, rows, threads):
    """`_run` over ranges of whole groups of the outer units of (outer, length, inner) rows."""
    outer, length, inner = rows.shape
    group = _units_per_group(length * inner)
    chunks = min(chunk_count(rows.size, min(threads, numba.config.NUMBA_NUM_THREADS)),
                 (outer + group - 1) // group)
    if chunks <= 1:
        serial(*args, 0, outer)
        return
    _on_threads(parallel, args + (group, chunks), chunks)


def _compute_work(array):
    """An empty array of the type softmax computes in: float64 for float64, else float32."""
    return np.empty(0, np.float64 if array.dtype == np.float64 else np.float32)


def softmax_dropout(source, target, softmax, words, scale, params, threads):
    """target = dropout(softmax(source)) along axis 1 of (outer, length, inner) arrays.

    ``source`` any strides; ``target``, ``softmax`` (None: not written) C-contiguous;
    ``words`` None: no dropout.
    """
    if params.n == 0:
        return
    element_scale = kernel_scale(target.dtype, scale)
    source, target = input_view(source), kernel_view(target)
    softmax = target[:0, :0, :0] if softmax is None else kernel_view(softmax)
    args = (source, target, softmax, _NO_WORDS if words is None else words, element_scale,
            np.uint64(params.seed), np.uint64(params.stream), np.uint64(params.threshold),
            bool(params.drop_all), params.offset, params.n, words is not None,
            _compute_work(source))
    _run_units(softmax_range, softmax_parallel, args, source, threads)


def softmax_dropout_backward(grad, softmax, target, words, scale, threads):
    """target = s * (g - sum(g * s)) along axis 1, g = dropout_backward(grad) (words None: grad)."""
    if grad.size == 0:
        return
    work = _compute_work(grad)
    element_scale = kernel_scale(grad.dtype, scale)
    grad, softmax, target = input_view(grad), input_view(softmax), kernel_view(target)
    args = (grad, softmax, target, _NO_WORDS if words is None else words, element_scale,
            words is not None, work)
    _run_units(softmax_backward_range, softmax_backward_parallel, args, grad, threads)
