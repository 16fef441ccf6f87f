"""Monte Carlo dropout's keys: each row's result the same however `predict_mc` cuts the work.

`fastdrop.nn.predict_mc` runs the rows of X times the samples in forward passes
of any size. Two things make a row's result independent of the pass it runs in:

- **masks keyed by (sample, row)**: for each pass, every random layer's
  ``mask_keys`` is a `RowKeys`, and the layer has it draw the masks of the
  pass's blocks (`RowKeys.dropout`, `RowKeys.gaussian_dropout`,
  `RowKeys.dropconnect_matmul`) instead of taking its generator's next stream;
- **fixed row places in BLAS**: inside `fixed_matmul_rows` the engine's ``@``
  (`matmul`) multiplies zero-padded blocks with each row at its label's place.

Arrays and fastdrop's functions only: the engine and the layers build on it.
"""
import contextlib
import dataclasses
import math
import threading

import numpy as np

import fastdrop

MC_STREAM_BASE = 2**63  # Monte Carlo sample k uses stream 2**63 + k; training counts up from 0


@dataclasses.dataclass(frozen=True)
class RowKeys:
    """Masks keyed by (sample, row) for one forward pass of `fastdrop.nn.predict_mc`.

    The pass's input stacks ``blocks`` in order: block ``(sample, first_row,
    rows)`` holds the rows ``first_row ... first_row + rows - 1`` of the data
    (global row indices) for Monte Carlo sample ``sample``. A random layer with
    these keys draws that block's mask with ``seed``, stream
    ``MC_STREAM_BASE + sample`` and offset ``first_row * w``, w being the
    layer's mask elements per row, so each row's mask is the one it would get
    in any other cut of the work. With ``consistent`` every row of a sample
    shares one row's mask (offset 0), as Baal's ConsistentDropout does.

    Attributes
    ----------
    seed : int
        The layer's 64-bit key.
    blocks : tuple of (int, int, int)
        ``(sample, first_row, rows)`` per block, in the order of the pass's rows.
    consistent : bool
    """

    seed: int
    blocks: tuple
    consistent: bool = False

    @property
    def rows(self):
        """Rows in the pass (the sum over the blocks)."""
        return sum(rows for _, _, rows in self.blocks)

    def row_blocks(self):
        """``(row slice in the pass, stream, first_row, rows)`` for each block."""
        start = 0
        for sample, first_row, rows in self.blocks:
            yield slice(start, start + rows), MC_STREAM_BASE + sample, first_row, rows
            start += rows

    def mask_blocks(self, mask_shape, shares_rows=False):
        """``(row slice, stream, offset, block mask shape)`` of each block, for a pass's mask.

        The mask has ``mask_shape`` over the pass. ``mask_shape[0]`` is the pass's
        rows, or 1 with ``shares_rows``: a layer that shares its mask along the rows
        already (``broadcast_dims`` with axis 0), whose rows then share it in every
        sample.
        """
        shared = self.consistent or shares_rows
        width = math.prod(mask_shape[1:])
        for rows_slice, stream, first_row, rows in self.row_blocks():
            block_shape = ((1 if shared else rows),) + tuple(mask_shape[1:])
            yield rows_slice, stream, (0 if shared else first_row * width), block_shape

    def dropout(self, kernel, data, p, mask_shape, shares_rows, backend):
        """``kernel`` (`fastdrop.dropout` or a variant) on each block of ``data``, in place.

        ``mask_shape`` is the pass's mask shape (see `mask_blocks`); ``data`` is the
        pass's C-contiguous array, rows on axis 0.
        """
        for rows, stream, offset, block_shape in self.mask_blocks(mask_shape, shares_rows):
            kernel(data[rows], p, seed=self.seed, stream=stream, offset=offset,
                   noise_shape=block_shape, inplace=True, backend=backend)

    def gaussian_dropout(self, data, p, backend):
        """`fastdrop.gaussian_dropout` of each block of ``data`` with its keys, in place."""
        for rows, stream, offset, block_shape in self.mask_blocks(data.shape):
            if block_shape == data[rows].shape:
                fastdrop.gaussian_dropout(data[rows], p, seed=self.seed, stream=stream,
                                          offset=offset, inplace=True, backend=backend)
            else:  # consistent: one row of multipliers (the noise of ones) for every row
                multipliers = fastdrop.gaussian_dropout(
                    np.ones(block_shape, data.dtype), p, seed=self.seed, stream=stream,
                    offset=offset, backend=backend)[0]
                np.multiply(data[rows], multipliers, out=data[rows])

    def dropconnect_matmul(self, x, weight, p, backend):
        """``x @ weight_dropped`` with each block's sample's weight mask (offset 0).

        A sample's rows may come in several blocks; its dropped weights are made once.
        """
        out = np.empty((x.shape[0], weight.shape[1]), dtype=np.result_type(x.dtype, weight.dtype))
        dropped = {}  # stream -> this sample's weights
        for rows, stream, first_row, count in self.row_blocks():
            if stream not in dropped:
                dropped[stream] = fastdrop.dropconnect(weight, p, seed=self.seed, stream=stream,
                                                       backend=backend)[0]
            out[rows] = matmul(x[rows], dropped[stream],
                               labels=np.arange(first_row, first_row + count))
        return out


_matmul_mode = threading.local()


@contextlib.contextmanager
def fixed_matmul_rows(rows=64, labels=None):
    """Context manager in which a row of ``a @ b`` has the same bits however ``a`` is cut.

    BLAS picks its kernel, and with it the rounding, by matrix size, and within a
    product by a row's place in the kernel's tile: a one-row product is a
    matrix-vector product, and OpenBLAS rounds row 6 of a 64-row block differently
    from the same numbers in row 0. Inside this context every product runs on
    zero-padded blocks of exactly ``rows`` rows, and the row labelled r always sits
    at place ``r % rows`` of its block, so each row of the result depends only on
    its own values and label: `predict_mc` labels rows with their index in the data
    and gets the same bits however the work is cut into passes. The setting is per
    thread; the gradients are unchanged.

    Parameters
    ----------
    rows : int, default 64
        Rows per block, >= 1.
    labels : array_like of int, optional
        One label per row of the products inside the context (their row count);
        ``None``, or a product with another row count, labels rows 0, 1, 2, ...

    Examples
    --------
    >>> import numpy as np
    >>> from fastdrop.nn import Tensor
    >>> from fastdrop.nn.mc import fixed_matmul_rows
    >>> a, b = np.random.default_rng(0).standard_normal((2, 200, 200))
    >>> with fixed_matmul_rows():
    ...     whole = (Tensor(a) @ b).data
    >>> with fixed_matmul_rows(labels=[7]):
    ...     row_7 = (Tensor(a[7:8]) @ b).data
    >>> bool(np.array_equal(whole[7:8], row_7))
    True
    """
    rows = int(rows)
    if rows < 1:
        raise ValueError(f"rows must be >= 1, got {rows}")
    labels = None if labels is None else np.asarray(labels, dtype=np.int64).reshape(-1)
    previous = getattr(_matmul_mode, "setting", None)
    _matmul_mode.setting = (rows, labels)
    try:
        yield
    finally:
        _matmul_mode.setting = previous


def matmul(a, b, labels=None):
    """``a @ b`` for 2-D arrays; inside `fixed_matmul_rows`, each row at its label's place.

    ``labels`` (one per row of a) overrides the context's, for a product over some of
    a pass's rows.
    """
    setting = getattr(_matmul_mode, "setting", None)
    if setting is None:
        return a @ b
    rows, context_labels = setting
    if labels is None:
        labels = (context_labels if context_labels is not None
                  and len(context_labels) == len(a) else np.arange(len(a)))
    places = np.asarray(labels, dtype=np.int64) % rows
    out = np.empty((len(a), b.shape[1]), dtype=np.result_type(a, b))
    # runs of rows at consecutive places of one block: each run is one padded product
    breaks = np.flatnonzero(places[1:] != places[:-1] + 1) + 1
    for start, stop in zip(np.r_[0, breaks], np.r_[breaks, len(a)]):
        first = int(places[start]) if len(a) else 0
        count = stop - start
        if count == rows:
            out[start:stop] = a[start:stop] @ b
            continue
        block = np.zeros((rows, a.shape[1]), dtype=a.dtype)
        block[first:first + count] = a[start:stop]
        out[start:stop] = (block @ b)[first:first + count]
    return out
