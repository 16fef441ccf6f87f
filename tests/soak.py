"""Soak: random calls across fastdrop's public API for a fixed time, each checked.

Four Python threads in this process and a pool of two processes (under an address-space
limit) make random calls -- every public function that takes an array or draws a mask,
every dtype, sizes from 1 to 2**24 elements, in place, into ``out=`` and new, offsets up
to 2**63, strided, reversed, Fortran-ordered and unaligned views, a shared `Generator` --
and check each result against `fastdrop.reference` bit for bit: the whole result up to
`WHOLE` elements, else random blocks and the last one, each computed by the reference
alone with its ``origin=`` in the whole. Every array lies inside a larger buffer whose
other bytes hold a pattern (or between PROT_NONE guard pages), so a write outside it is
seen; an input not written in place must be unchanged. The resident set is measured when
every thread is idle (freed memory handed back to the OS first) after a warm-up, at
checkpoints and at the end: it must not grow by `RSS_GROWTH_LIMIT`.

``python -m tests.soak --minutes 15`` runs the long form (docs/building.md,
Reliability); tests/test_soak.py runs it for seconds.
"""
import argparse
import ctypes
import dataclasses
import gc
import hashlib
import math
import mmap
import multiprocessing
import os
import resource
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

import fastdrop
from fastdrop import reference

try:
    import ml_dtypes
    BFLOAT16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # the bf16 extra is not installed: bfloat16 as uint16 bits only
    BFLOAT16 = None

MAX_LOG2_SIZE = 24
WHOLE = 4096  # results up to this many elements are compared whole
BLOCK = 2048  # else blocks of at most this many elements
PATTERN = 0xA5  # the bytes around (and between) an array's elements
MARGIN = 64  # bytes of pattern before and after an array
RSS_GROWTH_LIMIT = 0.05
MEMORY_HEADROOM = 2 << 30  # the pool's address-space limit: what it uses after warm-up + this
FORWARD = ("dropout", "channel_dropout", "alpha_dropout", "feature_alpha_dropout",
           "gaussian_dropout", "dropconnect")
BACKWARD = ("dropout_backward", "dropout_backward_recompute", "alpha_dropout_backward",
            "gaussian_dropout_backward", "apply_mask")
COUNTS = ("bernoulli_mask", "gaussian_noise", "pack_mask")
FUNCTIONS = FORWARD + BACKWARD + COUNTS
# the element types: storage dtype and the dtype= argument ("bfloat16" reads uint16 bits)
ELEMENTS = [(np.dtype(np.float16), None), (np.dtype(np.float32), None),
            (np.dtype(np.float64), None), (np.dtype(np.uint16), "bfloat16"),
            (np.dtype(">f4"), None), (np.dtype(">f2"), None)]
if BFLOAT16 is not None:
    ELEMENTS.append((BFLOAT16, None))
LAYOUTS = ("contiguous", "strided", "reversed", "fortran", "unaligned", "guard-start",
           "guard-end")
_libc = ctypes.CDLL(None, use_errno=True)


# ------------------------------------------------------------------ arrays in fenced memory

class Fenced:
    """An array of ``shape`` inside a larger buffer; every other byte of it holds PATTERN.

    ``layout`` places it: contiguous, every second element (the gaps fenced too),
    reversed, Fortran order, one byte off alignment, or flush against a PROT_NONE page
    before (``guard-start``) or after it (``guard-end``), so a read or write past it
    faults.
    """

    def __init__(self, shape, dtype, layout):
        n, item = math.prod(shape), dtype.itemsize
        self.layout, self.step = layout, 2 if layout == "strided" else 1
        self.span = ((n - 1) * self.step + 1) * item if n else 0  # bytes from first to last
        if layout.startswith("guard"):
            page = mmap.PAGESIZE
            pages = -(-self.span // page) or 1
            self.buffer = mmap.mmap(-1, (pages + 2) * page)
            raw = np.frombuffer(self.buffer, np.uint8)
            raw[:] = PATTERN
            address = raw.ctypes.data
            for start in (address, address + (pages + 1) * page):
                if _libc.mprotect(ctypes.c_void_p(start), ctypes.c_size_t(page), 0) != 0:
                    raise OSError(ctypes.get_errno(), "mprotect failed")
            self.bytes = raw[page:(pages + 1) * page]  # the readable pages
            self.start = 0 if layout == "guard-start" else pages * page - self.span
        else:
            self.bytes = np.full(2 * MARGIN + self.span + 1, PATTERN, np.uint8)
            self.start = MARGIN + (layout == "unaligned")
        flat = np.ndarray((n,), dtype, buffer=self.bytes, offset=self.start,
                          strides=(self.step * item,))
        if layout == "reversed":
            flat = flat[::-1]
        if layout == "fortran" and len(shape) > 1:
            self.array = flat.reshape(shape[::-1]).T
        else:
            self.array = flat.reshape(shape)
        assert np.shares_memory(self.array, self.bytes) or n == 0  # a view, never a copy

    def overwritten(self):
        """Where a byte outside the array changed ("" when none did)."""
        item = self.array.dtype.itemsize
        where = []
        if not (self.bytes[:self.start] == PATTERN).all():
            where.append("before")
        if not (self.bytes[self.start + self.span:] == PATTERN).all():
            where.append("after")
        n = self.array.size
        if self.step == 2 and n > 1:
            gaps = np.ndarray((n - 1, item), np.uint8, buffer=self.bytes,
                              offset=self.start + item, strides=(2 * item, 1))
            if not (gaps == PATTERN).all():
                where.append("between")
        return ", ".join(where)


# ------------------------------------------------------------------ values and checks

def bits(array):
    """The bit patterns of an array's elements, native byte order, C order."""
    array = np.asarray(array)
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    return np.ascontiguousarray(array).view(f"u{array.dtype.itemsize}")


def digest(array):
    """A hash of an array's elements (C order), to see that an input stayed unchanged."""
    return hashlib.blake2b(np.ascontiguousarray(array).view(np.uint8)).digest()


def fill(array, rng):
    """Random values (or random bit patterns, NaNs with payloads included) with specials."""
    n, dtype = array.size, array.dtype
    if n == 0:
        return
    width = dtype.itemsize * 8
    pool = min(n, 1 << 16)  # a big array repeats a random pool of values
    if rng.random() < 0.25:
        values = rng.integers(0, 1 << width, pool, dtype=f"u{dtype.itemsize}",
                              endpoint=False).view(dtype.newbyteorder("="))
    else:
        normals = rng.standard_normal(pool) * 4.0 ** rng.integers(-3, 4)
        if dtype.kind == "u":  # bfloat16 bits
            values = reference.float32_to_bfloat16(normals.astype(np.float32))
        else:
            values = normals.astype(dtype.newbyteorder("="))
        specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-42, 6e-8, 65504.0])
        where = rng.integers(0, pool, 8)
        if dtype.kind == "u":
            values[where] = reference.float32_to_bfloat16(specials.astype(np.float32))
        else:
            with np.errstate(over="ignore"):
                values[where] = specials.astype(values.dtype)
    if pool < n:
        values = np.roll(np.resize(values, n), int(rng.integers(0, pool)))
    array[...] = values.reshape(array.shape)


def blocks(shape, rng):
    """The parts of an array of ``shape`` to check: None (all of it), or blocks and the last."""
    if math.prod(shape) <= WHOLE:
        return [None]
    lengths, budget = [], BLOCK
    for size in reversed(shape):
        lengths.insert(0, min(size, max(budget, 1)))
        budget //= lengths[0]
    random_start = [int(rng.integers(0, size - length + 1))
                    for size, length in zip(shape, lengths)]
    last_start = [size - length for size, length in zip(shape, lengths)]
    return [tuple(slice(start, start + length) for start, length in zip(starts, lengths))
            for starts in (random_start, last_start)]


def origin_of(block):
    return tuple(part.start for part in block)


def mask_block(block, mask_shape):
    """The part of a mask of ``mask_shape`` (broadcast over the array) that a block reads."""
    return tuple(slice(0, 1) if size == 1 else part for part, size in zip(block, mask_shape))


def words_problem(words, m, p, seed, stream, offset, rng):
    """Whether packed words hold the reference's keep bits of m mask elements ("" if so)."""
    words = np.asarray(words)
    if words.dtype != np.uint64 or words.shape != (-(-m // 64),):
        return f"words of dtype {words.dtype} and shape {words.shape} for {m} elements"
    if m <= WHOLE:
        expected = reference.bernoulli_mask(m, p, seed=seed, stream=stream, offset=offset)
        return "" if np.array_equal(words, expected) else "mask words differ"
    start = int(rng.integers(0, m - BLOCK + 1))
    got = fastdrop.unpack_mask(words[start // 64:-(-(start + BLOCK) // 64)],
                               64 * (-(-(start + BLOCK) // 64) - start // 64))
    got = got[start % 64:start % 64 + BLOCK]
    if not np.array_equal(got, reference.keep_bits(BLOCK, p, seed, stream, offset + start)):
        return f"mask bits {start}..{start + BLOCK} differ"
    last = (m - 1) // 64
    tail = reference.keep_bits(m - 64 * last, p, seed, stream, offset + 64 * last)
    if words[last] != fastdrop.pack_mask(tail)[0]:
        return "the last mask word differs"
    return ""


# ------------------------------------------------------------------ one random call

@dataclasses.dataclass
class Stats:
    """What one thread or process did."""

    calls: int = 0  # the warm-up's included: they are checked too
    warm_up_calls: int = 0
    warm_up_seconds: float = 0.0
    compiled: int = 0  # Numba signatures compiled after the warm-up
    elements: int = 0
    by_function: dict = dataclasses.field(default_factory=dict)
    failures: list = dataclasses.field(default_factory=list)
    streams: list = dataclasses.field(default_factory=list)  # streams the shared Generator gave
    memory_errors: int = 0

    def add(self, other):
        self.calls += other.calls
        self.warm_up_calls += other.warm_up_calls
        self.warm_up_seconds = max(self.warm_up_seconds, other.warm_up_seconds)
        self.compiled += other.compiled
        self.elements += other.elements
        for name, count in other.by_function.items():
            self.by_function[name] = self.by_function.get(name, 0) + count
        self.failures += other.failures
        self.streams += other.streams
        self.memory_errors += other.memory_errors


def draw_size(rng):
    if rng.random() < 0.02:
        return 0
    return int(2 ** rng.uniform(0, MAX_LOG2_SIZE))


def draw_shape(n, ndim, rng):
    """A shape of ndim axes with about n elements (n itself for one axis)."""
    if ndim == 0:
        return ()
    lead = [int(rng.integers(1, 6)) for _ in range(ndim - 1)]
    return (*lead, max(-(-n // math.prod(lead)), 0 if n == 0 else 1))


def draw_p(rng, below_one=False):
    choice = rng.random()
    if choice < 0.1:
        p = float(rng.choice([0.0, 0.25, 0.5, 0.75, 1.0, 2.0**-60, 1 - 2.0**-53]))
    else:
        p = float(rng.random())
    return min(p, 0.9) if below_one and p >= 1.0 else p


def draw_offset(n, rng):
    choice = rng.random()
    if choice < 0.4:
        return 0
    if choice < 0.7:
        return int(rng.integers(0, 1000))
    if choice < 0.95:
        return int(rng.integers(0, 2**63 - n))
    return 2**63 - max(n, 1)  # the largest the API takes: offset + n <= 2**63, offset < 2**63


class Caller:
    """Random calls of one thread or process, each checked; problems go to ``stats``."""

    def __init__(self, rng, shared, backends, stats):
        self.rng, self.shared, self.backends, self.stats = rng, shared, backends, stats
        self.private = fastdrop.Generator(int(rng.integers(0, 2**63)))

    def call(self, function=None, n=None, element=None, backend=None, mode=None, layout=None,
             threads=None):
        """One call, random in every choice not given, checked; a problem goes to stats."""
        rng = self.rng
        function = function or FUNCTIONS[int(rng.integers(len(FUNCTIONS)))]
        n = draw_size(rng) if n is None else n
        element = element or ELEMENTS[int(rng.integers(len(ELEMENTS)))]
        backend = backend or self.backends[int(rng.integers(len(self.backends)))]
        fastdrop.set_num_threads(threads or int(rng.integers(1, 3)))
        self.last = description = dict(function=function, n=n, dtype=element[0].str,
                                       backend=backend)
        try:
            if function in COUNTS:
                problem = self._count(function, n, backend, description)
            else:
                problem = self._elementwise(function, n, element, backend, mode, layout,
                                            description)
        except Exception as error:  # noqa: BLE001 - any exception is a finding, reported
            problem = f"{type(error).__name__}: {error}"
        self.stats.calls += 1
        self.stats.elements += n
        self.stats.by_function[function] = self.stats.by_function.get(function, 0) + 1
        if problem:
            self.stats.failures.append(f"{problem} in {description}")

    def _keys(self, n):
        """(seed argument, stream argument, offset) of a call drawing a mask or noise."""
        rng, choice = self.rng, self.rng.random()
        offset = draw_offset(n, rng)
        if choice < 0.15:
            return self.shared, None, offset
        if choice < 0.2:
            return None, None, offset  # the default source
        return int(rng.integers(0, 2**64, dtype=np.uint64)), \
            int(rng.integers(0, 2**64, dtype=np.uint64)), offset

    def _count(self, function, n, backend, description):
        rng = self.rng
        if function == "pack_mask":
            keep = rng.random(n) < rng.random()
            words = fastdrop.pack_mask(keep)
            padded = np.zeros(8 * (-(-n // 64)), np.uint8)
            padded[:-(-n // 8)] = np.packbits(keep, bitorder="little")
            if not np.array_equal(words, padded.view("<u8")):
                return "pack_mask differs from numpy.packbits"
            return "" if np.array_equal(fastdrop.unpack_mask(words, n), keep) else \
                "unpack_mask(pack_mask(keep)) is not keep"
        p = draw_p(rng, below_one=function == "gaussian_noise")
        seed, stream, offset = self._keys(n)
        keys = dict(seed=seed, stream=stream, offset=offset)
        if not isinstance(seed, int):  # words carry no stream: a Generator whose state is known
            keys = dict(seed=self.private, offset=offset)
            seed, stream = self.private.seed, self.private.state["stream"]
        description.update(p=p, seed=seed, stream=stream, offset=offset)
        if "stream" not in keys and rng.random() < 0.5:  # the Generator's method
            result = getattr(keys.pop("seed"), function)(n, p, **self._given(
                backend=backend, **keys))
        else:
            result = getattr(fastdrop, function)(n, p, **keys, backend=backend)
        if function == "bernoulli_mask":
            return words_problem(result, n, p, seed, stream, offset, rng)
        if result.shape != (n,) or result.dtype != np.float64:
            return f"gaussian_noise gave {result.dtype} {result.shape}"
        start = 0 if n <= WHOLE else int(rng.integers(0, n - BLOCK + 1))
        count = min(n, WHOLE if n <= WHOLE else BLOCK)
        expected = reference.gaussian_noise(count, p, seed=seed, stream=stream,
                                            offset=offset + start)
        return "" if np.array_equal(bits(result[start:start + count]), bits(expected)) else \
            f"noise {start}..{start + count} differs"

    def _elementwise(self, function, n, element, backend, mode, layout, description):
        rng = self.rng
        dtype, dtype_argument = element
        channel = function in ("channel_dropout", "feature_alpha_dropout")
        ndim = int(rng.integers(3 if channel else 0 if function != "dropconnect" else 1, 5))
        shape = draw_shape(n, ndim, rng)
        n = math.prod(shape)
        description.update(shape=shape, n=n)
        modes = ("new", "out") if function == "dropconnect" else ("new", "inplace", "out")
        mode = mode or modes[int(rng.integers(len(modes)))]
        layout = layout or self._layout(shape, n)
        x = Fenced(shape, dtype, layout)
        fill(x.array, rng)
        out = None
        if mode == "out":
            out = Fenced(shape, dtype, self._layout(shape, n))
            fill(out.array, rng)
        p = draw_p(rng, below_one="gaussian" in function)
        options = {} if dtype_argument is None else {"dtype": dtype_argument}
        mask_shape = shape
        if channel:
            options.update(self._channel_axes(ndim))
            kept = {options.get("channel_axis", 1) % ndim, options.get("batch_axis", 0)}
            mask_shape = tuple(size if axis in kept else 1 for axis, size in enumerate(shape))
        if function in ("dropout", "alpha_dropout", "dropout_backward",
                        "dropout_backward_recompute", "alpha_dropout_backward",
                        "apply_mask") and ndim and rng.random() < 0.25:
            mask_shape = tuple(1 if rng.random() < 0.5 else size for size in shape)
            if function in ("dropout", "alpha_dropout", "dropout_backward_recompute"):
                options["noise_shape"] = mask_shape
        if function == "apply_mask" and rng.random() < 0.3:
            options["scale"] = float(rng.standard_normal())
        # The offset counts mask elements (an empty x may still have a channel mask), but
        # the reference on a block (origin=) takes offset + x.size <= 2**63 even with a
        # smaller mask: a limit of fastdrop's block calls, so such offsets go to whole checks.
        parts = blocks(shape, rng)
        m = math.prod(mask_shape)
        seed, stream, offset = self._keys(m if parts == [None] else max(n, m))
        description.update(mode=mode, layout=layout, p=p, offset=offset, options=options,
                           mask_shape=mask_shape)
        before = [x.array.copy() if part is None else x.array[part].copy() for part in parts]
        unchanged = digest(x.array) if mode != "inplace" else None
        written = {"inplace": {"inplace": True}, "out": {"out": getattr(out, "array", None)},
                   "new": {}}[mode]
        words = None
        if function in FORWARD:
            training = rng.random() > 0.03
            keywords = self._given(offset=offset, training=training, backend=backend,
                                   **written, **options)
            if isinstance(seed, fastdrop.Generator) and rng.random() < 0.5:  # its method
                y, record = getattr(seed, function)(x.array, p, **keywords)
            else:
                y, record = getattr(fastdrop, function)(x.array, p, seed=seed, stream=stream,
                                                        **keywords)
            if not training:
                return self._untrained(y, record, x, out) or self._fences(x, out, None,
                                                                          unchanged)
            if seed is self.shared:
                self.stats.streams.append((record.seed, record.stream))
            seed, stream = record.seed, record.stream
            description.update(seed=seed, stream=stream)
            problem = self._record(record, function, shape, mask_shape, p, seed, stream, offset)
            if problem:
                return problem
        else:
            seed = seed if isinstance(seed, int) else int(rng.integers(0, 2**63))
            stream = stream if isinstance(stream, int) else 0
            description.update(seed=seed, stream=stream)
            y, words = self._backward(function, x, p, seed, stream, offset, mask_shape,
                                      backend, written, options)
        expected_of = self._reference(function, p, seed, stream, offset, shape, mask_shape,
                                      options)
        for part, values in zip(parts, before):
            expected = expected_of(values, part)
            got = y if part is None else y[part]
            if mode == "new" and got.dtype != expected.dtype:
                return f"result dtype {got.dtype}, reference {expected.dtype}"
            if not np.array_equal(bits(got), bits(expected)):
                wrong = np.flatnonzero(bits(got).reshape(-1) != bits(expected).reshape(-1))
                return f"{wrong.size} elements differ in block {part} (first {wrong[:4]})"
        if mode == "inplace" and y is not x.array:
            return "inplace did not return x"
        if mode == "out" and y is not out.array:
            return "out= did not return out"
        if mode == "new" and (y.shape != shape or np.may_share_memory(y, x.bytes)):
            return "the new result has the wrong shape or shares x's memory"
        return self._fences(x, out, words, unchanged)

    @staticmethod
    def _untrained(y, record, x, out):
        """Whether training=False gave x back (or copied it into out) and no record."""
        if record is not None:
            return "a record with training=False"
        if out is None:
            return "" if y is x.array else "training=False did not return x"
        if y is not out.array or not np.array_equal(bits(y), bits(x.array)):
            return "training=False did not copy x into out"
        return ""

    @staticmethod
    def _given(**keywords):
        """The keywords that differ from their defaults: a call as short as a user's."""
        defaults = dict(offset=0, training=True, backend="auto", inplace=False)
        return {key: value for key, value in keywords.items()
                if key not in defaults or value != defaults[key]}

    def _layout(self, shape, n):
        rng = self.rng
        layouts = [name for name in LAYOUTS if not (
            (name == "fortran" and len(shape) < 2) or (name == "strided" and n > 1 << 23))]
        return layouts[int(rng.integers(len(layouts)))]

    def _channel_axes(self, ndim):
        choice = int(self.rng.integers(3))
        if choice == 0:
            return {}
        if choice == 1:
            return {"channel_axis": -1, "batch_axis": 0}
        return {"channel_axis": int(self.rng.integers(1, ndim)), "batch_axis": None}

    def _record(self, record, function, shape, mask_shape, p, seed, stream, offset):
        """Whether a forward call's record says what the call was ("" if so)."""
        if function == "gaussian_dropout":
            return "" if isinstance(record, fastdrop.GaussianNoise) and record.shape == shape \
                and record.offset == offset and record.p == p else f"noise record {record}"
        if record.shape != mask_shape or record.offset != offset or record.p != p:
            return f"mask record {record}"
        return words_problem(record.words, math.prod(mask_shape), p, seed, stream, offset,
                             self.rng)

    def _backward(self, function, x, p, seed, stream, offset, mask_shape, backend, written,
                  options):
        """A backward call (or apply_mask) with its record; (y, the fenced mask words)."""
        options = dict(options, backend=backend, **written)
        if function == "dropout_backward_recompute":
            return fastdrop.dropout_backward_recompute(
                x.array, p, seed=seed, stream=stream, offset=offset, **options), None
        if function == "gaussian_dropout_backward":
            noise = fastdrop.GaussianNoise(shape=x.array.shape, p=p, seed=seed, stream=stream,
                                           offset=offset)
            return fastdrop.gaussian_dropout_backward(x.array, noise, **options), None
        m = math.prod(mask_shape)
        words = Fenced((-(-m // 64),), np.dtype(np.uint64),
                       ("contiguous", "guard-start", "guard-end")[int(self.rng.integers(3))])
        words.array[...] = fastdrop.bernoulli_mask(m, p, seed=seed, stream=stream,
                                                   offset=offset, backend=backend)
        mask = fastdrop.DropoutMask(words.array, shape=mask_shape, p=p, seed=seed,
                                    stream=stream, offset=offset)
        if function == "apply_mask":
            if mask_shape == x.array.shape and self.rng.random() < 0.5:
                return fastdrop.apply_mask(x.array, words.array, p=p, **options), words
        return getattr(fastdrop, function)(x.array, mask, **options), words

    @staticmethod
    def _reference(function, p, seed, stream, offset, shape, mask_shape, options):
        """``expected(values, part)``: the reference's result for a part of the array."""
        keys = dict(seed=seed, stream=stream, offset=offset)

        def place(part):
            return {} if part is None else {"origin": origin_of(part), "global_shape": shape}

        def expected(values, part):
            if function == "dropconnect":  # dropout over the weights
                named = "dropout" if part is not None else "dropconnect"
                return getattr(reference, named)(values, p, **keys, **options, **place(part))[0]
            if function in FORWARD:
                return getattr(reference, function)(values, p, **keys, **options,
                                                    **place(part))[0]
            if function == "dropout_backward_recompute":
                return reference.dropout_backward_recompute(values, p, **keys, **options,
                                                            **place(part))
            if function == "gaussian_dropout_backward":
                block = None if part is None else (origin_of(part), shape)
                noise = fastdrop.GaussianNoise(shape=values.shape, p=p, **keys, block=block)
                return reference.gaussian_dropout_backward(values, noise, **options)
            # a stored mask: the reference's words of the part of the mask it reads
            within = tuple(slice(0, size) for size in mask_shape) if part is None else \
                mask_block(part, mask_shape)
            words = reference.bernoulli_mask(
                tuple(piece.stop - piece.start for piece in within), p, **keys,
                origin=origin_of(within), global_shape=mask_shape)
            mask = fastdrop.DropoutMask(
                words, shape=tuple(piece.stop - piece.start for piece in within), p=p, **keys,
                block=(origin_of(within), mask_shape))
            extra = {key: value for key, value in options.items() if key in ("dtype", "scale")}
            if function == "apply_mask" and "scale" not in extra:
                extra["p"] = p
            if function == "apply_mask":
                return reference.apply_mask(values, mask, **extra)
            return getattr(reference, function)(values, mask, **extra)
        return expected

    @staticmethod
    def _fences(x, out, words, unchanged):
        """Whether every buffer's pattern is intact and an input not written is unchanged."""
        for name, fenced in (("x", x), ("out", out), ("mask words", words)):
            where = fenced.overwritten() if fenced is not None else ""
            if where:
                return f"bytes {where} {name} were written"
        if unchanged is not None and digest(x.array) != unchanged:
            return "the input was changed"
        return ""


# ------------------------------------------------------------------ threads, processes, RSS

def fixed_mmap_threshold():
    """Fix glibc's mmap threshold at its default, so every freed array leaves the resident set.

    Left dynamic, it rises to 32 MiB after a large free, and each thread's malloc arena
    then keeps up to that much cached, in pages that malloc_trim does not return: growth
    that is no leak. The setting is process-wide, so the soak runs in processes of its own.
    """
    try:
        _libc.mallopt(-3, 128 << 10)  # M_MMAP_THRESHOLD
    except AttributeError:  # not glibc
        pass


def resident_bytes():
    """The resident set of this process after freed heap memory is handed back to the OS."""
    gc.collect()
    try:
        _libc.malloc_trim(0)
    except AttributeError:  # not glibc
        pass
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def compiled_signatures():
    """How many signatures fastdrop's Numba kernels have compiled (or loaded) so far."""
    if "fastdrop.kernels.numba" not in sys.modules:
        return 0
    from numba.core.registry import CPUDispatcher
    return sum(len(value.signatures) for name, module in list(sys.modules.items())
               if name.startswith("fastdrop.kernels.numba.")
               for value in vars(module).values() if isinstance(value, CPUDispatcher))


def warm_up(callers, backends):
    """Calls until the steady state: every kernel compiled, every thread's pools filled.

    Every function, dtype and mode on every backend, small and (Numba, whose kernels
    compile per dtype and path) parallel-sized; then random calls, until 200 in a row
    (25 without Numba) compiled nothing new.
    """
    settle = 200 if "numba" in backends else 25
    plan = [dict(function=function, element=element, backend=backend, mode=mode, n=n,
                 layout="contiguous", threads=2)
            for backend in backends for function in FUNCTIONS for element in ELEMENTS
            for mode in ("new", "inplace", "out") if mode != "inplace" or
            function != "dropconnect"
            for n in ((300, 300_000) if backend == "numba" else (300,))]
    plan += [dict(n=300_000, threads=2)] * 4 * len(callers)  # every thread's kernel threads

    def run(caller, part):
        for call in part:
            caller.call(**call)
        quiet = 0
        while quiet < settle:
            before = compiled_signatures()
            caller.call()
            quiet = quiet + 1 if compiled_signatures() == before else 0

    threads = [threading.Thread(target=run, args=(caller, plan[number::len(callers)]))
               for number, caller in enumerate(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def soak(seconds, seed, threads=4, backends=("auto",), checkpoints=1, memory_limit=None,
         label=None):
    """``threads`` threads of random calls for ``seconds`` after a warm-up.

    Returns (Stats, the resident set in bytes at the start and at each of
    ``checkpoints`` idle points after it), in this process, under ``memory_limit``
    bytes of address space beyond what it uses after the warm-up when given. With a
    ``label``, each checkpoint prints a line.
    """
    fixed_mmap_threshold()
    root = np.random.default_rng(seed)
    shared = fastdrop.Generator(int(root.integers(0, 2**63)))
    stats = [Stats() for _ in range(threads)]
    callers = [Caller(np.random.default_rng(root.integers(0, 2**63)), shared, backends, part)
               for part in stats]
    began = time.monotonic()
    warm_up(callers, backends)
    for part in stats:  # the warm-up's calls are checked too; only its streams are not kept
        part.streams.clear()
        part.warm_up_calls = part.calls
    if memory_limit is not None:
        with open("/proc/self/statm") as statm:
            size = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (size + memory_limit, size + memory_limit))
    compiled = compiled_signatures()
    rss = [resident_bytes()]
    start = time.monotonic()

    reported = set()

    def checkpoint():
        rss.append(resident_bytes())
        if label:
            failures = [failure for part in stats for failure in part.failures]
            print(f"{label}: {time.monotonic() - start:.0f} s, "
                  f"{sum(part.calls - part.warm_up_calls for part in stats)} calls, "
                  f"{len(failures)} mismatches, RSS {rss[-1] / 2**20:.0f} MiB", flush=True)
            for failure in failures:  # each as soon as it is seen, for a long run
                if failure not in reported:
                    reported.add(failure)
                    print(f"{label}:   {failure}", flush=True)

    barrier = threading.Barrier(threads, action=checkpoint)

    def run(caller):
        for checkpoint in range(1, checkpoints + 1):
            deadline = start + seconds * checkpoint / checkpoints
            while time.monotonic() < deadline:
                steady_calls = caller.stats.calls - caller.stats.warm_up_calls
                if memory_limit is not None and steady_calls % 100 == 0:
                    over_the_limit(caller.stats)
                caller.call()
            barrier.wait()

    workers = [threading.Thread(target=run, args=(caller,)) for caller in callers]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    total = Stats(warm_up_seconds=start - began, compiled=compiled_signatures() - compiled)
    for part in stats:
        total.add(part)
    return total, rss


def over_the_limit(stats):
    """A call whose result cannot fit under the memory limit must raise MemoryError, no more.

    Its mask words (256 MiB) fit; its 8 GiB result does not.
    """
    function = ("dropout", "alpha_dropout", "gaussian_dropout")[stats.memory_errors % 3]
    try:
        getattr(fastdrop, function)(np.broadcast_to(np.float32(1), (1 << 31,)), 0.5, seed=1)
    except MemoryError:
        stats.memory_errors += 1
    except Exception as error:  # noqa: BLE001 - reported
        stats.failures.append(f"over the memory limit: {type(error).__name__}: {error}")
    else:
        stats.failures.append("a call of 8 GiB succeeded under the memory limit")


def run(seconds, seed=0, threads=4, processes=2, backends=("auto",), checkpoints=1,
        verbose=False):
    """The soak at once in a process of ``threads`` threads and ``processes`` processes.

    The latter are one thread each, under an address-space limit. Each is a fresh
    interpreter (spawned: no fork of a process with threads), so nothing here changes
    the caller's process. Returns {place: (Stats, rss)}.
    """
    context = multiprocessing.get_context("spawn")
    places = {"threads": dict(threads=threads)}
    places.update({f"process {number}": dict(threads=1, memory_limit=MEMORY_HEADROOM)
                   for number in range(processes)})
    with ProcessPoolExecutor(len(places), mp_context=context) as pool:
        futures = {place: pool.submit(soak, seconds, seed + number, backends=backends,
                                      checkpoints=checkpoints, label=verbose and place,
                                      **options)
                   for number, (place, options) in enumerate(places.items())}
        return {place: future.result() for place, future in futures.items()}


def growth(rss):
    """Relative growth of the resident set from the first measurement to the last."""
    return (rss[-1] - rss[0]) / rss[0]


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--minutes", type=float, default=15.0,
                        help="time of random calls after the warm-up (default 15)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--backends", default="auto,numba",
                        help="comma-separated backends to draw from (default auto,numba)")
    parser.add_argument("--checkpoints", type=int, default=0,
                        help="idle points at which RSS is measured (default: one a minute)")
    options = parser.parse_args(argv)
    checkpoints = options.checkpoints or max(1, round(options.minutes))
    began = time.monotonic()
    results = run(options.minutes * 60, options.seed, options.threads, options.processes,
                  tuple(options.backends.split(",")), checkpoints, verbose=True)
    failed = False
    total = Stats()
    for place, (stats, rss) in results.items():
        total.add(stats)
        mib = [f"{value / 2**20:.0f}" for value in rss]
        print(f"{place}: warm-up {stats.warm_up_calls} calls in {stats.warm_up_seconds:.0f} s; "
              f"then {stats.calls - stats.warm_up_calls} calls, {len(stats.failures)} "
              f"mismatches, {stats.memory_errors} MemoryErrors as expected, {stats.compiled} "
              f"Numba signatures compiled; RSS MiB {' '.join(mib)}: growth "
              f"{100 * growth(rss):+.2f}%")
        failed |= growth(rss) >= RSS_GROWTH_LIMIT
    duplicates = len(total.streams) - len(set(total.streams))
    print(f"all: {total.calls} calls ({total.warm_up_calls} of them warm-up), {total.elements} "
          f"elements, {len(total.failures)} mismatches, {duplicates} streams given twice, "
          f"{time.monotonic() - began:.0f} s; by function {total.by_function}")
    for failure in total.failures[:20]:
        print("  ", failure)
    return 1 if failed or total.failures or duplicates else 0


if __name__ == "__main__":
    sys.exit(main())
