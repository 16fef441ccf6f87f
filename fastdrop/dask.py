"""fastdrop on Dask arrays: dropout chunk by chunk, bit for bit the in-memory result.

Every function here is a thin layer over the public function of the same name. It
checks its arguments at graph-build time (by calling that function on an empty block
of x's dtype and rank), fixes everything that decides the result there -- the seed
and stream included, taken once from a `fastdrop.Generator` or the default source --
and builds one lazy ``map_blocks`` layer whose task for each block calls
``fastdrop.<function>(block, ..., origin=, global_shape=)``: the block's elements take
their global indices in the whole array (docs/mask-stream.md, section 10), so every
chunking, scheduler, thread count and re-execution gives the same bits as the call on
``x.compute()``. Task keys are a token of everything that decides the result.

The forward functions return ``(y, record)``: a `DaskDropoutMask` or a
`DaskGaussianNoise` holds the few numbers that regenerate the mask or noise of any
block (nothing of size n); `dropout_backward`, `alpha_dropout_backward` and
`gaussian_dropout_backward` take it. ``out=`` writes into a NumPy array as the graph
runs, each task's kernel straight into its region (docs/dask.md).

Importing this module needs dask (``pip install "fastdrop-cpu[dask]"``); ``import
fastdrop`` never imports it.
"""
import math

import numpy as np

try:
    import dask
    import dask.array as da
    from dask.base import get_scheduler, tokenize
except ImportError as error:  # pragma: no cover - depends on what is installed
    raise ImportError("fastdrop.dask needs dask: pip install \"fastdrop-cpu[dask]\" "
                      "(or dask[array])") from error

import fastdrop

from . import streams
from ._internal import block_of_mask, check_out, check_threads

__all__ = [
    "DaskDropoutMask",
    "DaskGaussianNoise",
    "alpha_dropout",
    "alpha_dropout_backward",
    "channel_dropout",
    "dropout",
    "dropout_backward",
    "dropout_backward_recompute",
    "feature_alpha_dropout",
    "gaussian_dropout",
    "gaussian_dropout_backward",
]


# ------------------------------------------------------------------------ the records

class _DaskRecord:
    """What one call drew from the stream, for an array of ``chunks``: no data, a few numbers."""

    __slots__ = ("shape", "p", "seed", "stream", "offset", "chunks")

    def __init__(self, *, shape, p, seed, stream, offset, chunks):
        self.shape, self.p = tuple(shape), float(p)
        self.seed, self.stream, self.offset = int(seed), int(stream), int(offset)
        self.chunks = tuple(tuple(int(size) for size in sizes) for sizes in chunks)

    @property
    def n(self):
        """Number of elements (of the mask, for a `DaskDropoutMask`)."""
        return math.prod(self.shape)

    @property
    def numblocks(self):
        """Number of blocks along each axis of the array the call covered."""
        return tuple(len(sizes) for sizes in self.chunks)

    def _block_place(self, index):
        """(shape, origin) of block ``index`` of the array the call covered."""
        index = (index,) if isinstance(index, (int, np.integer)) else tuple(index)
        if len(index) != len(self.chunks) or not all(
                isinstance(i, (int, np.integer)) and -len(sizes) <= i < len(sizes)
                for i, sizes in zip(index, self.chunks)):
            raise IndexError(f"block index {index!r} is not one of an array with "
                             f"numblocks={self.numblocks}")
        index = tuple(int(i) % len(sizes) for i, sizes in zip(index, self.chunks))
        return (tuple(sizes[i] for i, sizes in zip(index, self.chunks)),
                tuple(sum(sizes[:i]) for i, sizes in zip(index, self.chunks)))

    def _fields(self):
        return (type(self).__name__, *(getattr(self, name) for name in self._field_names()))

    @classmethod
    def _field_names(cls):
        return [name for klass in reversed(cls.__mro__) for name in getattr(klass, "__slots__", ())]

    def __dask_tokenize__(self):
        return self._fields()

    def __eq__(self, other):
        return type(other) is type(self) and other._fields() == self._fields()

    def __hash__(self):
        return hash(self._fields())

    def __reduce__(self):
        return _rebuild, (type(self), {name: getattr(self, name) for name in self._field_names()})

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._field_names()
                           if name != "chunks")
        return f"{type(self).__name__}({fields}, numblocks={self.numblocks})"


def _rebuild(cls, fields):
    return cls(**fields)


class DaskDropoutMask(_DaskRecord):
    """The mask of one `fastdrop.dask` dropout call: what regenerates any block of it.

    Holds no bits: the mask is a pure function of these numbers
    (docs/mask-stream.md), so `dropout_backward` and `alpha_dropout_backward`
    regenerate it block by block, on any chunking of the gradient.

    Attributes
    ----------
    shape : tuple of int
        The global mask's shape: the array's, or the (global) noise shape, as
        `fastdrop.DropoutMask.shape` is for an array in memory.
    array_shape : tuple of int
        The shape of the array the call covered.
    chunks : tuple of tuple of int
        That array's chunks (the blocks `block` and `words` refer to).
    p : float
        Drop probability.
    seed, stream, offset : int
        The mask-stream coordinates, fixed when the graph was built: mask element k
        (C order in ``shape``) has global index ``offset + k``.
    n : int
        Number of mask elements.
    numblocks : tuple of int
        Blocks along each axis of the array.
    """

    __slots__ = ("array_shape",)

    def __init__(self, *, shape, p, seed, stream, offset, chunks, array_shape):
        _DaskRecord.__init__(self, shape=shape, p=p, seed=seed, stream=stream, offset=offset,
                             chunks=chunks)
        self.array_shape = tuple(array_shape)

    def block(self, index, *, backend="auto"):
        """The packed mask of one block, as the in-memory call on that block returns it.

        Parameters
        ----------
        index : int or tuple of int
            The block's index in the array's grid of blocks (as in ``x.blocks[index]``;
            negative indices count from the end).
        backend : {"auto", "cython", "numba", "numpy"}, default "auto"

        Returns
        -------
        fastdrop.DropoutMask
            Bit for bit the mask ``fastdrop.dropout(x.blocks[index].compute(), p,
            seed=, stream=, offset=, origin=, global_shape=)`` returns: the block's
            part of the global mask, with its ``origin`` and ``global_shape``.

        Raises
        ------
        IndexError
            The index is not that of a block.
        """
        return self._block_mask(*self._block_place(index), backend)

    def _block_mask(self, shape, origin, backend="auto"):
        """The DropoutMask of the block of ``shape`` at ``origin`` in the array."""
        mask_shape, mask_origin = block_of_mask(shape, origin, self.array_shape, self.shape)
        words = fastdrop.bernoulli_mask(mask_shape, self.p, seed=self.seed, stream=self.stream,
                                        offset=self.offset, origin=mask_origin,
                                        global_shape=self.shape, backend=backend)
        return fastdrop.DropoutMask(words, shape=mask_shape, p=self.p, seed=self.seed,
                                    stream=self.stream, offset=self.offset,
                                    block=(mask_origin, self.shape))

    def words(self, *, backend="auto"):
        """Every block's packed mask, lazily: one chunk of words per block of the array.

        Parameters
        ----------
        backend : {"auto", "cython", "numba", "numpy"}, default "auto"

        Returns
        -------
        dask.array.Array of uint64, one-dimensional
            Chunk i holds ``block(index).words`` for the i-th block index in C order of
            the grid (``numpy.ndindex(*numblocks)``), so ``.blocks[i]`` is one block's
            words; 1 bit per mask element, computed only when asked for.
        """
        pieces = []
        name = f"fastdrop-mask-words-{tokenize(self, backend)}"
        for number, index in enumerate(np.ndindex(*self.numblocks)):
            shape, origin = self._block_place(index)
            count = -(-math.prod(block_of_mask(shape, origin, self.array_shape,
                                               self.shape)[0]) // 64)
            words = dask.delayed(_words_of_block, pure=True)(
                self, shape, origin, backend, dask_key_name=f"{name}-{number}")
            pieces.append(da.from_delayed(words, shape=(count,), dtype=np.uint64,
                                          meta=np.empty(0, np.uint64)))
        if not pieces:
            return da.empty((0,), dtype=np.uint64, chunks=((0,),))
        return da.concatenate(pieces) if len(pieces) > 1 else pieces[0]


def _words_of_block(mask, shape, origin, backend):
    return mask._block_mask(shape, origin, backend).words


class DaskGaussianNoise(_DaskRecord):
    """What regenerates the noise of one `fastdrop.dask.gaussian_dropout` call, block by block.

    Attributes
    ----------
    shape : tuple of int
        The array's shape.
    chunks : tuple of tuple of int
        Its chunks.
    p : float
        The rate: the noise is N(1, p / (1 - p)).
    seed, stream, offset : int
        Coordinates in the Gaussian noise stream, fixed when the graph was built.
    n : int
        Number of elements.
    numblocks : tuple of int
        Blocks along each axis.
    """

    __slots__ = ()

    def block(self, index):
        """The record of one block, for `fastdrop.gaussian_dropout_backward` on that block.

        Parameters
        ----------
        index : int or tuple of int
            The block's index in the array's grid of blocks (as in ``x.blocks[index]``).

        Returns
        -------
        fastdrop.GaussianNoise
            The record the in-memory call on that block (with ``origin=`` and
            ``global_shape=``) returns.

        Raises
        ------
        IndexError
            The index is not that of a block.
        """
        return self._block_noise(*self._block_place(index))

    def _block_noise(self, shape, origin):
        return fastdrop.GaussianNoise(shape=shape, p=self.p, seed=self.seed, stream=self.stream,
                                      offset=self.offset, block=(origin, self.shape))


# --------------------------------------------------------------------- one block's call

class _BlockCall:
    """``fastdrop.<function>(block, *arguments, **keywords)`` for any block of an array.

    The block's place reaches the function as ``origin=`` and ``global_shape=``, or,
    for the backward passes that read a record, as the record of that block in the
    argument's place. Picklable, and tokenized by what it calls.
    """

    __slots__ = ("function", "arguments", "keywords", "global_shape", "record")

    def __init__(self, function, arguments, keywords, global_shape, record=None):
        self.function, self.arguments, self.keywords = function, tuple(arguments), keywords
        self.global_shape, self.record = tuple(global_shape), record

    def __call__(self, block, origin, out=None):
        """The in-memory function's whole result on ``block``, which starts at ``origin``."""
        function = getattr(fastdrop, self.function)  # looked up here: what the caller patched
        if self.record is None:
            return function(block, *self.arguments, out=out, origin=origin,
                            global_shape=self.global_shape, **self.keywords)
        if isinstance(self.record, DaskDropoutMask):
            record = self.record._block_mask(block.shape, origin, self.keywords["backend"])
        else:
            record = self.record._block_noise(block.shape, origin)
        return function(block, record, out=out, **self.keywords)

    def __dask_tokenize__(self):
        return (self.function, self.arguments, sorted(self.keywords.items(), key=str),
                self.global_shape, self.record)

    def __reduce__(self):
        return _BlockCall, (self.function, self.arguments, self.keywords, self.global_shape,
                            self.record)


class _Target:
    """A NumPy array a graph writes into, passed by reference (never hashed or copied by dask)."""

    __slots__ = ("array",)

    def __init__(self, array):
        self.array = array

    def __dask_tokenize__(self):  # its memory, not its contents, which the graph overwrites
        array = self.array
        return (array.__array_interface__["data"][0], array.shape, array.strides,
                array.dtype.str)

    def __sizeof__(self):
        return 64  # dask would put a large argument in a task of its own, hashing it


def _run_block(block, call, threads, target=None, block_info=None):
    """One task: the call on one block, on ``threads`` threads; into ``target`` if given."""
    location = block_info[0]["array-location"]
    origin = tuple(start for start, _ in location)
    with fastdrop.num_threads(threads):
        if target is None:
            result = call(block, origin)
            return result[0] if isinstance(result, tuple) else result
        region = tuple(slice(start, stop) for start, stop in location)
        call(block, origin, out=target.array[region])
    return np.empty((0,) * block.ndim, dtype=block.dtype)  # written: nothing to hand on


# ------------------------------------------------------------------- graph-build checks

def _check_array(x, name, function):
    """x as a dask array of NumPy blocks with known chunk sizes, or a TypeError/ValueError."""
    if not isinstance(x, da.Array):
        raise TypeError(f"fastdrop.dask.{function} takes a dask array for {name}, got "
                        f"{type(x).__module__}.{type(x).__name__}: use fastdrop.{function} for "
                        f"an array in memory, or wrap it with dask.array.from_array")
    meta = x._meta
    if isinstance(meta, np.ma.MaskedArray) or not isinstance(meta, np.ndarray):
        raise TypeError(f"fastdrop.dask.{function} needs NumPy blocks; {name}'s blocks are "
                        f"{type(meta).__module__}.{type(meta).__name__}")
    if any(math.isnan(size) for sizes in x.chunks for size in sizes):
        raise ValueError(f"{name} has unknown chunk sizes {x.chunks}; fastdrop.dask places "
                         f"each block in the whole array when the graph is built: call "
                         f"{name}.compute_chunk_sizes() first")
    return x


def _probe(call, x):
    """The in-memory function's result on an empty block of x's dtype and rank.

    It runs every check the function makes for a block of x -- dtype, p, offset, noise
    shape, axes, backend -- raising its own exceptions before any task exists. The
    call must not take a stream (its seed is an integer).
    """
    empty = np.empty((0,) * x.ndim, dtype=x.dtype)
    return call(empty, (0,) * x.ndim)


def _check_target(out, x):
    """``out=``: a writeable NumPy array of x's shape and dtype, and a scheduler sharing it."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array (or np.memmap), got {type(out).__name__}: "
                        f"store into other targets (zarr, h5py) with dask.array.store(y, "
                        f"target) or y.to_zarr(...)")
    check_out(out, np.broadcast_to(np.empty((), dtype=x.dtype), x.shape), "x")
    scheduler = get_scheduler(collections=[x])
    if scheduler not in (dask.threaded.get, dask.local.get_sync):
        raise ValueError("out= writes into a NumPy array of this process, so it needs dask's "
                         "threaded or synchronous scheduler (dask.config.set(scheduler="
                         "'threads')); with processes or distributed, store into a zarr array "
                         "with dask.array.store(y, target) or y.to_zarr(...)")


# ------------------------------------------------------------------------ the builders

def _build(x, call, threads, out, meta):
    """The lazy result of ``call`` on every block of x, or, with ``out``, out filled.

    ``meta`` is the call's result on an empty block (`_probe`): its dtype is what every
    block computes -- native byte order for a big-endian x, as in memory.
    """
    if out is None:
        name = f"fastdrop-{call.function}-{tokenize(x, call, threads)}"
        return x.map_blocks(_run_block, call=call, threads=threads, name=name,
                            dtype=meta.dtype, meta=meta)
    target = _Target(out)
    name = f"fastdrop-{call.function}-into-{tokenize(x, call, threads, target)}"
    written = x.map_blocks(_run_block, call=call, threads=threads, target=target, name=name,
                           chunks=tuple((0,) * len(sizes) for sizes in x.chunks),
                           dtype=meta.dtype, meta=meta)
    written.compute()
    return out


def _forward(function, x, p, seed, stream, offset, training, out, threads, backend, **options):
    """A forward call: checks, one stream taken, then the graph; returns (y, record)."""
    _check_array(x, "x", function)
    threads = check_threads(threads)
    parsed = streams.parse(seed, stream)  # checked; a stream is taken only after every check
    keywords = dict(options, offset=offset, backend=backend)
    # training too: the in-memory function checks it (a bool), as every other argument
    probe = _BlockCall(function, (p,), dict(keywords, seed=0, stream=0, training=training),
                       x.shape)
    meta, example = _probe(probe, x)
    if out is not None:
        _check_target(out, x)
    if not training:
        if out is not None:
            da.store(x, out, lock=False)
        return (x if out is None else out), None
    seed, stream = streams.take(parsed)
    call = _BlockCall(function, (example.p,),  # the checked values, as the keys' token sees them
                      dict(keywords, seed=seed, stream=stream, offset=example.offset), x.shape)
    y = _build(x, call, threads, out, meta)
    if isinstance(example, fastdrop.GaussianNoise):
        record = DaskGaussianNoise(shape=x.shape, p=example.p, seed=seed, stream=stream,
                                   offset=example.offset, chunks=x.chunks)
    else:
        record = DaskDropoutMask(shape=example.global_shape, p=example.p, seed=seed,
                                 stream=stream, offset=example.offset, chunks=x.chunks,
                                 array_shape=x.shape)
    return y, record


def _backward(function, grad, out, threads, arguments, keywords, record=None):
    """A backward call of ``fastdrop.<function>``: checks on an empty block, then the graph."""
    _check_array(grad, "grad", function)
    threads = check_threads(threads)
    if record is not None:
        _check_record(record, grad, function)
    call = _BlockCall(function, arguments, keywords, grad.shape, record)
    meta = _probe(call, grad)
    if out is not None:
        _check_target(out, grad)
    return _build(grad, call, threads, out, meta)


def _check_record(record, grad, function):
    """The record of a forward call over an array of grad's shape (grad a dask array)."""
    kind = DaskGaussianNoise if function == "gaussian_dropout_backward" else DaskDropoutMask
    if not isinstance(record, kind):
        raise TypeError(f"fastdrop.dask.{function} needs the {kind.__name__} a fastdrop.dask "
                        f"forward call returned, got {type(record).__name__}")
    array_shape = getattr(record, "array_shape", record.shape)
    if grad.shape != array_shape:
        raise ValueError(f"grad has shape {grad.shape} but the {kind.__name__} is for an array "
                         f"of shape {array_shape}")


# ------------------------------------------------------------------ the public functions

def dropout(x, p=0.5, *, seed=None, stream=None, offset=0, training=True, noise_shape=None,
            broadcast_dims=None, out=None, dtype=None, threads=1, backend="auto"):
    """Inverted dropout of a dask array, block by block: `fastdrop.dropout` of the whole, lazily.

    Each task calls `fastdrop.dropout` on its block with ``origin=`` and
    ``global_shape=``, so y is bit for bit ``fastdrop.dropout(x.compute(), p, seed=,
    stream=, offset=, ...)`` for every chunking of x, every scheduler and thread
    count.

    Parameters
    ----------
    x : dask.array.Array of float16, float32, float64 or bfloat16
        Input, any shape and chunking (chunk sizes known), NumPy blocks.
    p : float, default 0.5
        Drop probability in [0, 1].
    seed : int, Generator or None
        As in `fastdrop.dropout`; a `fastdrop.Generator` or None (the default
        source) hands out one stream, taken now, when the graph is built: computing
        the graph again (a lost worker, ``persist``) gives the same bits.
    stream : int, optional
        64-bit call id with an integer seed (default 0).
    offset : int, default 0
        Global index of x's first element.
    training : bool, default True
        If False, x itself is returned (no stream taken) and the mask is None.
    noise_shape, broadcast_dims : optional
        The global mask's shape, as in `fastdrop.dropout`; the shared axes may be
        chunked.
    out : numpy.ndarray, optional
        Write the result into this array (x's shape and dtype; a ``np.memmap``
        too) now, each task's kernel straight into its region, instead of returning
        a lazy array. It computes at once, under dask's threaded or synchronous
        scheduler (the array lives in this process), and must not share memory with
        x's sources.
    dtype : {None, "bfloat16"}, optional
        As in `fastdrop.dropout` (uint16 blocks read as bfloat16 bit patterns).
    threads : int, default 1
        fastdrop's threads inside each task (`fastdrop.num_threads`): 1 keeps
        tasks x threads within the cores under Dask's schedulers.
    backend : {"auto", "cython", "numba", "numpy"}, default "auto"
        The backend inside each task.

    Returns
    -------
    y : dask.array.Array
        Lazy, with x's chunks and dtype (``out`` itself when given).
    mask : DaskDropoutMask or None
        What regenerates the mask of any block: pass it to `dropout_backward`, or
        get a block's packed words with ``mask.block(index)``.

    Raises
    ------
    TypeError, ValueError
        When called, before any task runs, with `fastdrop.dropout`'s messages: x not
        a dask array of float blocks, p, seed, stream or offset out of range, a noise
        shape that does not broadcast, an unknown backend; unknown chunk sizes;
        ``threads`` < 1; a bad ``out``. A failed call takes no stream.

    Examples
    --------
    >>> import dask.array as da, numpy as np, fastdrop, fastdrop.dask
    >>> x = da.ones((6, 100), dtype=np.float32, chunks=(4, 37))
    >>> y, mask = fastdrop.dask.dropout(x, 0.5, seed=1, stream=2)
    >>> whole, _ = fastdrop.dropout(np.ones((6, 100), np.float32), 0.5, seed=1, stream=2)
    >>> bool((y.compute() == whole).all()), mask.shape
    (True, (6, 100))
    """
    return _forward("dropout", x, p, seed, stream, offset, training, out, threads, backend,
                    noise_shape=noise_shape, broadcast_dims=broadcast_dims, dtype=dtype)


def channel_dropout(x, p=0.5, *, channel_axis=1, batch_axis=0, seed=None, stream=None, offset=0,
                    training=True, out=None, dtype=None, threads=1, backend="auto"):
    """Channel dropout of a dask array: `fastdrop.channel_dropout` of the whole, block by block.

    Parameters
    ----------
    x : dask.array.Array of float16, float32, float64 or bfloat16
        Input such as ``(N, C, H, W)``; any axis may be chunked, the spatial ones too.
    p : float, default 0.5
        Probability of dropping a channel.
    channel_axis, batch_axis
        As in `fastdrop.channel_dropout`.
    seed, stream, offset, training, out, dtype, threads, backend
        As in `dropout`.

    Returns
    -------
    y : dask.array.Array
        Lazy (``out`` itself when given).
    mask : DaskDropoutMask or None
        One bit per (sample, channel): ``mask.shape`` is e.g. ``(N, C, 1, 1)``.

    Raises
    ------
    TypeError, ValueError
        As in `dropout`, and `fastdrop.channel_dropout`'s axis errors.
    """
    return _forward("channel_dropout", x, p, seed, stream, offset, training, out, threads,
                    backend, channel_axis=channel_axis, batch_axis=batch_axis, dtype=dtype)


def alpha_dropout(x, p=0.5, *, seed=None, stream=None, offset=0, training=True, noise_shape=None,
                  broadcast_dims=None, out=None, dtype=None, threads=1, backend="auto"):
    """Alpha dropout of a dask array: `fastdrop.alpha_dropout` of the whole, block by block.

    Parameters
    ----------
    x : dask.array.Array of float16, float32, float64 or bfloat16
        Input, typically SELU activations.
    p : float, default 0.5
        Drop probability.
    seed, stream, offset, training, noise_shape, broadcast_dims, out, dtype, threads, backend
        As in `dropout`.

    Returns
    -------
    y : dask.array.Array
        Lazy (``out`` itself when given).
    mask : DaskDropoutMask or None
        The keep bits; pass it to `alpha_dropout_backward`.

    Raises
    ------
    TypeError, ValueError
        As in `dropout`.
    """
    return _forward("alpha_dropout", x, p, seed, stream, offset, training, out, threads, backend,
                    noise_shape=noise_shape, broadcast_dims=broadcast_dims, dtype=dtype)


def feature_alpha_dropout(x, p=0.5, *, channel_axis=1, batch_axis=0, seed=None, stream=None,
                          offset=0, training=True, out=None, dtype=None, threads=1,
                          backend="auto"):
    """Alpha dropout of whole channels of a dask array (`fastdrop.feature_alpha_dropout`).

    Parameters
    ----------
    x : dask.array.Array of float16, float32, float64 or bfloat16
        Input with a channel axis, e.g. ``(N, C, H, W)``.
    p : float, default 0.5
        Probability of dropping a channel.
    channel_axis, batch_axis
        As in `fastdrop.channel_dropout`.
    seed, stream, offset, training, out, dtype, threads, backend
        As in `dropout`.

    Returns
    -------
    y : dask.array.Array
        Lazy (``out`` itself when given).
    mask : DaskDropoutMask or None
        One bit per (sample, channel); pass it to `alpha_dropout_backward`.

    Raises
    ------
    TypeError, ValueError
        As in `channel_dropout`.
    """
    return _forward("feature_alpha_dropout", x, p, seed, stream, offset, training, out, threads,
                    backend, channel_axis=channel_axis, batch_axis=batch_axis, dtype=dtype)


def gaussian_dropout(x, p=0.5, *, seed=None, stream=None, offset=0, training=True, out=None,
                     dtype=None, threads=1, backend="auto"):
    """Gaussian dropout of a dask array: `fastdrop.gaussian_dropout` of the whole, block by block.

    Parameters
    ----------
    x : dask.array.Array of float16, float32, float64 or bfloat16
        Input.
    p : float, default 0.5
        Rate in [0, 1): the multiplier is N(1, p / (1 - p)).
    seed, stream, offset, training, out, dtype, threads, backend
        As in `dropout`.

    Returns
    -------
    y : dask.array.Array
        Lazy (``out`` itself when given).
    noise : DaskGaussianNoise or None
        What regenerates the noise of any block: pass it to
        `gaussian_dropout_backward`.

    Raises
    ------
    TypeError, ValueError
        As in `dropout`; p = 1.
    """
    return _forward("gaussian_dropout", x, p, seed, stream, offset, training, out, threads,
                    backend, dtype=dtype)


def dropout_backward(grad, mask, *, out=None, dtype=None, threads=1, backend="auto"):
    """Gradient of `dropout` (or `channel_dropout`), its mask regenerated block by block.

    Bit for bit `fastdrop.dropout_backward` of ``grad.compute()`` with the in-memory
    call's mask; grad may be chunked differently from the forward input.

    Parameters
    ----------
    grad : dask.array.Array of float16, float32, float64 or bfloat16
        Gradient with respect to dropout's output, of the forward input's shape.
    mask : DaskDropoutMask
        What the forward call returned.
    out, dtype, threads, backend
        As in `dropout`.

    Returns
    -------
    dask.array.Array
        ``grad * keep / (1 - p)``, lazy (``out`` itself when given).

    Raises
    ------
    TypeError
        mask is not a DaskDropoutMask; grad is not a dask array of float blocks.
    ValueError
        grad's shape is not the forward input's; as in `dropout`.
    """
    _check_array(grad, "grad", "dropout_backward")
    _check_record(mask, grad, "dropout_backward")
    noise_shape = None if mask.shape == mask.array_shape else mask.shape
    return _backward("dropout_backward_recompute", grad, out, threads, (mask.p,),
                     dict(seed=mask.seed, stream=mask.stream, offset=mask.offset,
                          noise_shape=noise_shape, dtype=dtype, backend=backend))


def dropout_backward_recompute(grad, p, *, seed, stream, offset=0, noise_shape=None, out=None,
                               dtype=None, threads=1, backend="auto"):
    """Gradient of dropout from explicit (seed, stream, offset), block by block.

    Bit for bit `fastdrop.dropout_backward_recompute` of ``grad.compute()``.

    Parameters
    ----------
    grad : dask.array.Array of float16, float32, float64 or bfloat16
        Gradient with respect to dropout's output.
    p : float
        The forward pass's drop probability.
    seed, stream : int
        The forward pass's seed and stream.
    offset : int, default 0
        The forward pass's offset.
    noise_shape : tuple of int, optional
        The forward pass's (global) noise shape.
    out, dtype, threads, backend
        As in `dropout`.

    Returns
    -------
    dask.array.Array
        ``grad * keep / (1 - p)``, lazy (``out`` itself when given).

    Raises
    ------
    TypeError, ValueError
        As in `fastdrop.dropout_backward_recompute`, when called.
    """
    return _backward("dropout_backward_recompute", grad, out, threads, (p,),
                     dict(seed=seed, stream=stream, offset=offset, noise_shape=noise_shape,
                          dtype=dtype, backend=backend))


def alpha_dropout_backward(grad, mask, *, out=None, dtype=None, threads=1, backend="auto"):
    """Gradient of `alpha_dropout` (or `feature_alpha_dropout`), block by block.

    Each task regenerates its block's mask and calls `fastdrop.alpha_dropout_backward`.

    Parameters
    ----------
    grad : dask.array.Array of float16, float32, float64 or bfloat16
        Gradient with respect to alpha dropout's output.
    mask : DaskDropoutMask
        What the forward call returned.
    out, dtype, threads, backend
        As in `dropout`.

    Returns
    -------
    dask.array.Array
        ``grad * a`` where kept, +0.0 where dropped (``out`` itself when given).

    Raises
    ------
    TypeError, ValueError
        As in `dropout_backward`.
    """
    return _backward("alpha_dropout_backward", grad, out, threads, (),
                     dict(dtype=dtype, backend=backend), record=mask)


def gaussian_dropout_backward(grad, noise, *, out=None, dtype=None, threads=1, backend="auto"):
    """Gradient of `gaussian_dropout`: grad times the same noise, regenerated block by block.

    Parameters
    ----------
    grad : dask.array.Array of float16, float32, float64 or bfloat16
        Gradient with respect to the output, of the forward input's shape.
    noise : DaskGaussianNoise
        What the forward call returned.
    out, dtype, threads, backend
        As in `dropout`.

    Returns
    -------
    dask.array.Array
        ``grad * (1 + sigma * z)`` with the forward pass's z (``out`` itself when given).

    Raises
    ------
    TypeError, ValueError
        As in `dropout_backward`.
    """
    return _backward("gaussian_dropout_backward", grad, out, threads, (),
                     dict(dtype=dtype, backend=backend), record=noise)
