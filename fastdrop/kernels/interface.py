"""The kernel interface: what every compiled backend provides.

A compiled backend is a module (one folder under fastdrop/kernels/, registered in
`fastdrop._backends`) with every function of `KernelBackend`. The public API has
validated every argument before it calls one: arrays are 1-D and C-contiguous (float16
as float16, bfloat16 as uint16 bit patterns; ``dropout_plain`` alone takes x of any
shape, the softmax entries (outer, length, inner) arrays), and a call's scalars come in
one record of `fastdrop.kernels.records`, made once per call, as the C kernels take
``fd_mask_params``. `tests/test_kernel_interface.py` checks every backend against this
module.
"""
from typing import Protocol

import numpy as np

from .records import BlockRuns, BroadcastLayout, MaskParams, NoiseParams

__all__ = ["BlockRuns", "BroadcastLayout", "KernelBackend", "MaskParams", "NoiseParams"]


Array = np.ndarray
Affine = tuple[float, float, float] | None


class KernelBackend(Protocol):
    """The functions of a compiled backend's kernel module.

    ``source``/``target`` may be the same array (in place); ``threads`` is the most
    threads to use; every function returns None except ``dropout_plain``.
    """

    def scale_by_stream(self, source: Array | None, target: Array | None,
                        words: Array | None, scale: float, params: MaskParams,
                        threads: int) -> None:
        """Keep bits from the stream into ``words`` and/or target = source * keep * scale.

        source and target None: the words alone; words None: the elements alone.
        """

    def scale_by_runs(self, source: Array | None, target: Array | None,
                      words: Array | None, scale: float, params: MaskParams,
                      runs: BlockRuns, threads: int) -> None:
        """`scale_by_stream` for a block of a larger array: global indices from ``runs``."""

    def scale_by_mask(self, source: Array, target: Array, words: Array, scale: float,
                      threads: int) -> None:
        """target = source * keep * scale, keep read from stored words."""

    def apply_broadcast(self, source: Array, target: Array, words: Array,
                        layout: BroadcastLayout, scale: float, affine: Affine,
                        threads: int) -> None:
        """Stored keep bits stretched over source by ``layout`` (noise shapes).

        ``affine`` None: kept x * scale, dropped +0.0; else alpha dropout's float64
        (a, b, c): kept a*x + b, dropped c.
        """

    def dropout_add(self, source: Array, residual: Array, bias: Array | None,
                    target: Array, words: Array | None, scale: float, params: MaskParams,
                    threads: int) -> None:
        """target = residual + dropout(source (+ bias)), keep bits from the stream.

        ``bias`` None or the last axis's values (element i reads ``bias[i % bias.size]``);
        ``words`` None: no mask stored; ``target`` may be ``residual`` (in place).
        """

    def softmax_dropout(self, source: Array, target: Array, softmax: Array | None,
                        words: Array | None, scale: float, params: MaskParams,
                        threads: int) -> None:
        """target = dropout(softmax(source)) along axis 1 of (outer, length, inner) arrays.

        ``source`` has any strides (whole elements; docs/mask-stream.md section 12 says
        what each row computes); ``target`` and ``softmax`` (None: not written) are
        C-contiguous, element (i, j, k) the call's C-order element. ``words`` None: no
        dropout (target = softmax); else room for the call's mask words, drawn here.
        """

    def softmax_dropout_backward(self, grad: Array, softmax: Array, target: Array,
                                 words: Array | None, scale: float, threads: int) -> None:
        """target = s * (g - sum(g * s)) along axis 1, g = dropout_backward(grad).

        C-contiguous (outer, length, inner) arrays of one type (target may be grad or
        softmax); ``words`` None: g is grad.
        """

    def gaussian(self, source: Array, target: Array, params: NoiseParams,
                 threads: int) -> None:
        """target = source * (1 + sigma * z), z from the Gaussian noise stream."""

    def gaussian_runs(self, source: Array, target: Array, params: NoiseParams,
                      runs: BlockRuns, threads: int) -> None:
        """`gaussian` for a block of a larger array: global indices from ``runs``."""

    def dropout_plain(self, x: Array, inplace: bool, scale: float, params: MaskParams,
                      threads: int) -> tuple[Array, Array]:
        """The usual forward call in one step: ``(y, words)``.

        x is an ndarray of any shape, C-contiguous, aligned, native (writeable in
        place); the words and, out of place, y are allocated here.
        """
