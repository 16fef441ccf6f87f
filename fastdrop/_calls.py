"""Call preparation, shared by the public API and the reference.

Each public function starts by turning its arguments into one `Call` record: every
value checked (`fastdrop._validate`), in an order that leaves no trace on error, and
only then a stream taken (`fastdrop.streams`). What follows -- the kernels, or the
reference's plain NumPy -- takes the record's checked values.
"""
from . import _layout, streams
from ._mask import DropoutMask, GaussianNoise
from ._validate import (check_count, check_gaussian_p, check_mask, check_noise, check_noise_shape,
                        check_offset, check_p, check_scale, check_seed, check_stream, prepare_target,
                        shape_size)


class Call:
    """The checked arguments of one call.

    Attributes
    ----------
    x : ndarray
        The input (or gradient) as an ndarray of a float dtype; None for calls that
        take a count instead.
    target : ndarray or None
        Where the result goes: x (in place), ``out``, or None for a new array.
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
    """

    __slots__ = ("x", "target", "p", "mask_shape", "m", "offset", "seed", "stream", "words",
                 "scale")

    def __init__(self, x, target, p, mask_shape, m, offset, seed=None, stream=None, words=None,
                 scale=None):
        self.x, self.target, self.p = x, target, p
        self.mask_shape, self.m, self.offset = mask_shape, m, offset
        self.seed, self.stream, self.words, self.scale = seed, stream, words, scale

    @property
    def stretched(self):
        """Whether a smaller mask is stretched over x (a noise shape)."""
        return self.m != self.x.size

    def deliver(self, flat):
        """The C-ordered result ``flat`` where the caller asked for it."""
        return _layout.deliver(flat, self.x, self.target)

    def untouched(self):
        """The result of a call with training off: x itself, or x copied into ``out``."""
        return self.x if self.target is None else _layout.deliver(self.x, self.x, self.target)

    def mask(self, words):
        """The DropoutMask of this call's keep bits ``words``."""
        return DropoutMask(words, shape=self.mask_shape, p=self.p, seed=self.seed,
                           stream=self.stream, offset=self.offset)

    def noise(self):
        """The GaussianNoise record that regenerates this call's noise."""
        return GaussianNoise(shape=self.x.shape, p=self.p, seed=self.seed, stream=self.stream,
                             offset=self.offset)


def masked(x, p, seed, stream, offset, inplace, out, noise_shape, broadcast_dims, training):
    """A call that draws a keep mask (dropout and its variants); a stream taken if training."""
    p = check_p(p)
    x, target = prepare_target(x, "x", inplace, out)
    if noise_shape is None and broadcast_dims is None:
        mask_shape, m = x.shape, x.size
    else:
        mask_shape = check_noise_shape(x.shape, noise_shape, broadcast_dims)
        m = shape_size(mask_shape)
    parsed = streams.parse(seed, stream)
    offset = check_offset(offset, m)
    seed, stream = streams.take(parsed) if training else (None, None)
    return Call(x, target, p, mask_shape, m, offset, seed, stream)


def gaussian(x, p, seed, stream, offset, inplace, out, training):
    """A Gaussian dropout call (p in [0, 1)); a stream taken if training."""
    p = check_gaussian_p(p)
    x, target = prepare_target(x, "x", inplace, out)
    parsed = streams.parse(seed, stream)
    offset = check_offset(offset, x.size)
    seed, stream = streams.take(parsed) if training else (None, None)
    return Call(x, target, p, x.shape, x.size, offset, seed, stream)


def recompute(grad, p, seed, stream, offset, noise_shape, inplace, out):
    """A backward call that regenerates its mask from an explicit (seed, stream, offset)."""
    p = check_p(p)
    grad, target = prepare_target(grad, "grad", inplace, out)
    mask_shape = check_noise_shape(grad.shape, noise_shape, None)
    seed, stream = check_seed(seed), check_stream(stream)
    m = shape_size(mask_shape)
    return Call(grad, target, p, mask_shape, m, check_offset(offset, m), seed, stream)


def stored_mask(x, name, mask, p, scale, inplace, out):
    """A call that applies stored keep bits (a DropoutMask, or words with p) to x.

    ``name`` is what error messages call x ("x", "grad").
    """
    x, target = prepare_target(x, name, inplace, out)
    words, p, mask_shape = check_mask(mask, x.shape, p)
    return Call(x, target, p, mask_shape, shape_size(mask_shape), 0, words=words,
                scale=check_scale(scale, p))


def stored_noise(grad, noise, inplace, out):
    """A backward call that regenerates the noise of a GaussianNoise record."""
    grad, target = prepare_target(grad, "grad", inplace, out)
    check_noise(noise, grad.size)
    return Call(grad, target, noise.p, grad.shape, grad.size, noise.offset, noise.seed,
                noise.stream)


def count(n, p, seed, stream, offset, gaussian=False):
    """A call for n mask elements or noise values (no array); a stream taken."""
    n = check_count(n)
    p = check_gaussian_p(p) if gaussian else check_p(p)
    offset = check_offset(offset, n)
    seed, stream = streams.resolve(seed, stream)
    return Call(None, None, p, (n,), n, offset, seed, stream)
