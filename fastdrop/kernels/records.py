"""The records the kernel entry points take: each call's scalars in one value, as in C.

Made once per call by the public API, read by the kernels (`fastdrop.kernels.interface`
says which entry takes which). Each mirrors a struct of the C headers. Where the Cython
extension is built, setup.py compiles this file as it is, and ``records.pxd`` makes
each record an extension type with read-only fields, which the usual call makes in a
few nanoseconds (a NamedTuple takes over 100) and the Cython kernels read in C.
Elsewhere it runs as plain Python: the same fields, written only by ``__init__``.
Rebuild after editing it: an in-place build shadows the .py.
"""


class _Record:
    """Fields named by ``__slots__``, shown by repr."""

    __slots__ = ()

    def __repr__(self):
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in type(self).__slots__)
        return f"{type(self).__name__}({fields})"


class MaskParams(_Record):
    """Where a call's keep bits come from: the C kernels' ``fd_mask_params`` (mask_stream.h).

    Parameters
    ----------
    seed, stream : int
        The Philox key and the call id, in [0, 2**64).
    threshold, drop_all : int, bool
        `fastdrop.maskstream.spec.stream_parameters` of p: T = floor(p * 2**64), and
        whether p = 1 (where T would be 2**64).
    offset : int
        The global index of element 0 (the ``*_runs`` entries take every index from
        their `BlockRuns` instead).
    n : int
        The number of mask elements.
    """

    __slots__ = ("seed", "stream", "threshold", "drop_all", "offset", "n")

    def __init__(self, seed, stream, threshold, drop_all, offset, n):
        self.seed, self.stream, self.threshold = seed, stream, threshold
        self.drop_all, self.offset, self.n = drop_all, offset, n


class NoiseParams(_Record):
    """Where a call's Gaussian multipliers ``1 + sigma * z`` come from.

    Parameters
    ----------
    seed, stream : int
        The Philox key and the call id, in [0, 2**64).
    sigma : float
        `fastdrop.maskstream.spec.gaussian_sigma` of p.
    offset : int
        The global index of element 0 in the noise stream (the ``*_runs`` entries take
        every index from their `BlockRuns` instead).
    """

    __slots__ = ("seed", "stream", "sigma", "offset")

    def __init__(self, seed, stream, sigma, offset):
        self.seed, self.stream, self.sigma, self.offset = seed, stream, sigma, offset


class BlockRuns(_Record):
    """The global indices of a block's elements: the C kernels' ``fd_runs`` (dropout.h).

    In C order the block's elements form runs of ``run`` consecutive global indices;
    run r starts at ``base + sum(i_d * outer_strides[d])``, i its index in
    ``outer_shape`` (C order). `fastdrop._layout.block_runs` makes them.

    Parameters
    ----------
    base : int
        The global index of the block's first element (the call's offset included).
    outer_shape, outer_strides : ndarray of int64
        The runs' grid and each axis' step in global indices; empty for one run.
    run : int
        The length of a run.
    """

    __slots__ = ("base", "outer_shape", "outer_strides", "run")

    def __init__(self, base, outer_shape, outer_strides, run):
        self.base, self.outer_shape, self.outer_strides, self.run = (
            base, outer_shape, outer_strides, run)


class BroadcastLayout(_Record):
    """A mask stretched over an array: the C kernels' ``fd_broadcast_layout`` (variants.h).

    `fastdrop._layout.broadcast_layout` makes it.

    Parameters
    ----------
    sizes : ndarray of int64
        The array's axes, merged where the mask varies (or is shared) along neighbours.
    mask_strides : ndarray of int64
        Each axis' step in mask elements: 0 where the mask is shared.
    """

    __slots__ = ("sizes", "mask_strides")

    def __init__(self, sizes, mask_strides):
        self.sizes, self.mask_strides = sizes, mask_strides
