"""Call preparation, shared by the public API and the reference.

Each public function starts by turning its arguments into one `Call` record: every
value checked (`fastdrop._checks`, `fastdrop._validate`), in an order that leaves no
trace on error (the usual call's one step, `fastdrop._fastpath`, keeps it), and
only then a stream taken (`fastdrop.streams`). What follows -- the kernels, or the
reference's plain NumPy -- takes the record's checked values.
"""
import numpy as np

from . import _layout, streams
from ._checks import check_bool, check_offset, check_p, check_seed, check_stream
from ._mask import DropoutMask, GaussianNoise, words_for
from ._validate import (
    check_block,
    check_count,
    check_dtype_request,
    check_gaussian_p,
    check_noise_shape,
    check_out,
    check_scale,
    element_array,
    is_bfloat16,
    shape_size,
)


class Call:
    """The checked arguments of one call.

    Attributes
    ----------
    x : ndarray
        The input (or gradient) as kernels see it: a native float16/32/64 ndarray, or
        bfloat16 as uint16 bit patterns; None for calls that take a count instead.
    target : ndarray or None
        Where kernels put the result: x (in place), ``out`` (as kernels see it), or
        None for a new array.
    source : ndarray
        The caller's array (x itself where it is one, subclasses included).
    returned : ndarray or None
        What an in-place or ``out=`` call returns: the caller's x or out.
    copy_back : bool
        Whether the result must be copied into ``returned`` (byte-swapped arrays,
        which kernels see as native copies).
    view : dtype or None
        The dtype a new result is viewed as (ml_dtypes' bfloat16), if not x's.
    p : float
        The drop probability (Gaussian dropout's rate).
    mask_shape : tuple of int
        The mask's shape: x's, or a noise shape stretched over x.
    m : int
        Number of mask elements (``prod(mask_shape)``), or the count asked for.
    offset, seed, stream : int
        The mask-stream coordinates of mask element 0; seed and stream are None
        when training is off (no stream is taken).
    words : ndarray of uint64 or None
        Stored keep bits, for calls that apply a mask.
    scale : float or None
        The multiplier of kept elements, for calls that apply a mask.
    runs : BlockRuns or None
        For a block of a larger array: the runs of global indices its mask (or noise)
        elements take (`fastdrop._layout.block_runs`); None for a whole array, whose
        element i has global index ``offset + i``.
    block : tuple or None
        The (origin, global_shape) the call's record keeps: the mask's block in the
        global mask, or (Gaussian) the data's block in the global array.
    """

    __slots__ = ("x", "target", "source", "returned", "copy_back", "view", "p", "mask_shape",
                 "m", "offset", "seed", "stream", "words", "scale", "runs", "block")

    def __init__(self, arrays, p, mask_shape, m, offset, seed=None, stream=None, words=None,
                 scale=None, runs=None, block=None):
        self.x, self.target, self.source, self.returned, self.copy_back, self.view = arrays
        self.p, self.mask_shape, self.m, self.offset = p, mask_shape, m, offset
        self.seed, self.stream, self.words, self.scale = seed, stream, words, scale
        self.runs, self.block = runs, block

    @property
    def start(self):
        """The global index of element 0 where the elements are one contiguous range, else None.

        A whole array's are (from ``offset``), and so are a block's when it spans every
        axis but the first whole (rows of a C-order array): one run.
        """
        if self.runs is None:
            return self.offset
        return self.runs.base if len(self.runs.outer_shape) == 0 else None

    @property
    def stretched(self):
        """Whether a smaller mask is stretched over x (a noise shape)."""
        return self.m != self.x.size

    def finish(self, result):
        """What the caller gets for the kernels' result (the target, or a new array)."""
        if self.returned is None:
            return result if self.view is None else result.view(self.view)
        if self.copy_back:
            self.returned[...] = result
        return self.returned

    def deliver(self, flat):
        """The C-ordered result ``flat`` where the caller asked for it."""
        return self.finish(_layout.deliver(flat, self.x, self.target))

    def untouched(self):
        """The result of a call with training off: x itself, or x copied into ``out``."""
        if self.returned is None or self.returned is self.source:
            return self.source
        self.returned[...] = self.source
        return self.returned

    def mask(self, words):
        """The DropoutMask of this call's keep bits ``words``."""
        return DropoutMask(words, shape=self.mask_shape, p=self.p, seed=self.seed,
                           stream=self.stream, offset=self.offset, block=self.block)

    def noise(self):
        """The GaussianNoise record that regenerates this call's noise."""
        return GaussianNoise(shape=self.x.shape, p=self.p, seed=self.seed, stream=self.stream,
                             offset=self.offset, block=self.block)


def check_mask_object(mask):
    """A DropoutMask (the variants' backward passes need its p and shape)."""
    if not isinstance(mask, DropoutMask):
        raise TypeError(f"mask must be a DropoutMask, got {type(mask).__name__}")


def check_mask(mask, shape, p):
    """(words, p, mask_shape) of a mask applied to an array of ``shape``.

    A DropoutMask records its shape: it applies to an array of that shape, or is
    stretched over one its shape broadcasts to (a noise shape). Raw uint64 words
    carry no shape: they need ``p`` and one bit per element, in C order.
    """
    if isinstance(mask, DropoutMask):
        words, mask_p = mask.words, mask.p
        if p is not None and check_p(p) != mask_p:
            raise ValueError(f"p={p!r} does not match the mask's p={mask_p!r}")
        p = mask_p
        try:
            mask_shape = check_noise_shape(shape, mask.shape, None)
        except ValueError:
            raise ValueError(f"mask of shape {mask.shape} does not match the array's shape "
                             f"{tuple(shape)!r} and does not broadcast to it (pass the mask's "
                             f"words with p= to apply it by element count)") from None
    else:
        if not isinstance(mask, np.ndarray):
            raise TypeError(f"mask must be a DropoutMask or a 1-D uint64 array of words, "
                            f"got {type(mask).__name__}")
        words = mask
        if p is None:
            raise ValueError("p is required when mask is an array of words, not a DropoutMask")
        mask_shape = tuple(shape)
    p = check_p(p)
    if not isinstance(words, np.ndarray) or words.dtype != np.uint64 or words.ndim != 1:
        raise TypeError(f"mask words must be a 1-D uint64 array, got "
                        f"{getattr(words, 'dtype', type(words).__name__)} "
                        f"with shape {getattr(words, 'shape', None)}")
    m = shape_size(mask_shape)
    if words.size != words_for(m):
        raise ValueError(f"mask has {words.size} words but {m} elements need {words_for(m)}")
    return words, p, mask_shape


def check_noise(noise, n):
    """The GaussianNoise record of a forward pass over n elements."""
    if not isinstance(noise, GaussianNoise):
        raise TypeError(f"noise must be the GaussianNoise returned by gaussian_dropout, "
                        f"got {type(noise).__name__}")
    if noise.n != n:
        raise ValueError(f"noise is for {noise.n} elements but the gradient has {n}")


def arrays(x, name, inplace, out, dtype):
    """x and where its result goes: the first six fields of a `Call`.

    ``(kernel x, kernel target, caller's array, returned, copy_back, view)``; see `Call`.
    """
    inplace = check_bool(inplace, "inplace")
    request = check_dtype_request(dtype)
    if inplace and out is not None:
        raise ValueError("pass either inplace=True or out=, not both")
    if inplace and not isinstance(x, np.ndarray):
        raise TypeError(f"inplace=True needs a NumPy array for {name}, got {type(x).__name__}")
    array, kernel = element_array(x, name, request)
    swapped = kernel.dtype != array.dtype and not kernel.dtype == np.uint16
    if inplace:
        if not array.flags.writeable:
            raise ValueError(f"inplace=True but {name} is read-only")
        return kernel, None if swapped else kernel, array, array, swapped, None
    if out is not None:
        check_out(out, array, name)
        if swapped:
            return kernel, None, array, out, True, None
        return kernel, element_array(out, "out", request)[1], array, out, False, None
    view = array.dtype if kernel.dtype != array.dtype and is_bfloat16(array.dtype) else None
    return kernel, None, array, None, False, view


def _mask_geometry(shape, noise_shape, broadcast_dims, offset, origin, global_shape):
    """(mask_shape, m, offset, runs, block) of a call's mask, checked.

    Without a block: the mask has x's shape or the noise shape, its element j global
    index ``offset + j``. With one, the noise shape is the global array's, and the
    mask is the block of the global mask that the data block reads.
    """
    block = check_block(shape, origin, global_shape)
    if block is None:
        mask_shape = (shape if noise_shape is None and broadcast_dims is None
                      else check_noise_shape(shape, noise_shape, broadcast_dims))
        m = shape_size(mask_shape)
        return mask_shape, m, check_offset(offset, m), None, None
    origin, global_shape = block
    global_mask = (global_shape if noise_shape is None and broadcast_dims is None
                   else check_noise_shape(global_shape, noise_shape, broadcast_dims))
    check_offset(offset, shape_size(global_mask))
    mask_shape, mask_origin = _layout.block_of_mask(shape, origin, global_shape, global_mask)
    runs = _layout.block_runs(mask_shape, mask_origin, global_mask, offset)
    return mask_shape, shape_size(mask_shape), offset, runs, (mask_origin, global_mask)


def masked(x, p, seed, stream, offset, inplace, out, noise_shape, broadcast_dims, training,
           dtype=None, origin=None, global_shape=None):
    """A call that draws a keep mask (dropout and its variants); a stream taken if training."""
    training = check_bool(training, "training")
    p = check_p(p)
    sides = arrays(x, "x", inplace, out, dtype)
    mask_shape, m, offset, runs, block = _mask_geometry(sides[0].shape, noise_shape,
                                                        broadcast_dims, offset, origin,
                                                        global_shape)
    parsed = streams.parse(seed, stream)
    seed, stream = streams.take(parsed) if training else (None, None)
    return Call(sides, p, mask_shape, m, offset, seed, stream, runs=runs, block=block)


def _data_geometry(shape, offset, origin, global_shape):
    """(offset, runs, block) of a call whose elements themselves take global indices."""
    block = check_block(shape, origin, global_shape)
    if block is None:
        return check_offset(offset, shape_size(shape)), None, None
    offset = check_offset(offset, shape_size(block[1]))
    return offset, _layout.block_runs(shape, *block, offset), block


def gaussian(x, p, seed, stream, offset, inplace, out, training, dtype=None, origin=None,
             global_shape=None):
    """A Gaussian dropout call (p in [0, 1)); a stream taken if training."""
    training = check_bool(training, "training")
    p = check_gaussian_p(p)
    sides = arrays(x, "x", inplace, out, dtype)
    parsed = streams.parse(seed, stream)
    offset, runs, block = _data_geometry(sides[0].shape, offset, origin, global_shape)
    seed, stream = streams.take(parsed) if training else (None, None)
    return Call(sides, p, sides[0].shape, sides[0].size, offset, seed, stream, runs=runs,
                block=block)


def recompute(grad, p, seed, stream, offset, noise_shape, inplace, out, dtype=None, origin=None,
              global_shape=None):
    """A backward call that regenerates its mask from an explicit (seed, stream, offset)."""
    p = check_p(p)
    sides = arrays(grad, "grad", inplace, out, dtype)
    mask_shape, m, offset, runs, block = _mask_geometry(sides[0].shape, noise_shape, None,
                                                        offset, origin, global_shape)
    seed, stream = check_seed(seed), check_stream(stream)
    return Call(sides, p, mask_shape, m, offset, seed, stream, runs=runs, block=block)


def stored_mask(x, name, mask, p, scale, inplace, out, dtype=None):
    """A call that applies stored keep bits (a DropoutMask, or words with p) to x.

    ``name`` is what error messages call x ("x", "grad").
    """
    sides = arrays(x, name, inplace, out, dtype)
    words, p, mask_shape = check_mask(mask, sides[0].shape, p)
    return Call(sides, p, mask_shape, shape_size(mask_shape), 0, words=words,
                scale=check_scale(scale, p))


def stored_noise(grad, noise, inplace, out, dtype=None):
    """A backward call that regenerates the noise of a GaussianNoise record."""
    sides = arrays(grad, "grad", inplace, out, dtype)
    check_noise(noise, sides[0].size)
    runs = (None if noise.origin is None
            else _layout.block_runs(noise.shape, noise.origin, noise.global_shape, noise.offset))
    return Call(sides, noise.p, sides[0].shape, sides[0].size, noise.offset, noise.seed,
                noise.stream, runs=runs)


def count(n, p, seed, stream, offset, gaussian=False, origin=None, global_shape=None):
    """A call for n mask elements or noise values (no array); a stream taken.

    With a block, ``n`` is the block's shape and its elements take the block's global
    indices.
    """
    if origin is None and global_shape is None:
        n = check_count(n)
        shape = (n,)
    else:
        try:
            shape = tuple(check_count(extent) for extent in n)
        except TypeError:
            raise TypeError(f"with origin= and global_shape=, n must be the block's shape, "
                            f"got n={n!r}") from None
        n = shape_size(shape)
    p = check_gaussian_p(p) if gaussian else check_p(p)
    offset, runs, block = _data_geometry(shape, offset, origin, global_shape)
    seed, stream = streams.resolve(seed, stream)
    return Call((None, None, None, None, False, None), p, shape, n, offset, seed, stream,
                runs=runs, block=block)
