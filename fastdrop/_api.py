"""Public API: validate arguments, lay arrays out for the kernels, dispatch to a backend.

Nothing here computes a mask; the kernels do, and `fastdrop.reference` is what
they must agree with bit for bit.
"""
import numpy as np

from . import _validate, reference
from ._backends import kernels as _kernels
from ._config import get_num_threads
from ._mask import DropoutMask, words_for
from .maskstream.spec import dropout_scale, keep_threshold


def _stream_parameters(p):
    """(threshold, drop_all) of the mask stream for drop probability p."""
    return (0, True) if p == 1.0 else (keep_threshold(p), False)


def _elementwise(x, target, run):
    """Call ``run(source, result)`` on 1-D C-contiguous arrays and deliver the result.

    C-contiguous input and target are used as they are (no copy, in place when they
    are the same array). Other layouts go through a C-ordered copy, so every
    layout gives the values of its C-contiguous copy.
    """
    source = x.reshape(-1) if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(-1)
    if target is not None and target is not x and np.may_share_memory(x, target):
        source = source.copy()  # partial overlap: read from a private copy
    if target is not None and target.flags.c_contiguous:
        run(source, target.reshape(-1))
        return target
    if target is not None and not x.flags.c_contiguous and target is x:
        run(source, source)  # source is already a private C-ordered copy of x
        return _validate.deliver(source, x, target)
    result = np.empty(x.size, dtype=x.dtype)
    run(source, result)
    return _validate.deliver(result, x, target)


def dropout(x, p=0.5, *, seed=None, stream=None, offset=0, training=True, inplace=False,
            out=None, backend="auto"):
    """Inverted dropout with an exact, reproducible, bit-packed mask.

    Each element is dropped (set to +0.0) with probability ``p`` and otherwise
    scaled by ``1 / (1 - p)``, so ``E[y] = x``. The mask is a pure function of
    ``(seed, stream, offset + i, p)`` (docs/mask-stream.md): it does not depend on
    the backend, the thread count or how the array is split.

    Parameters
    ----------
    x : array_like of float16, float32 or float64
        Input, any shape (0-d and empty included), any memory layout.
    p : float, default 0.5
        Drop probability in [0, 1]; exact to 2**-64. ``p = 0`` keeps every
        element, ``p = 1`` drops every element.
    seed : int, Generator or None
        64-bit key in [0, 2**64); or a `Generator`, which supplies its seed and
        its next stream; ``None`` uses the default `Generator` (seeded from OS
        entropy). A stream is taken only once every argument has been checked.
    stream : int, optional
        64-bit call id in [0, 2**64); defaults to 0 when ``seed`` is given. Use a
        new stream for each call that needs a new mask.
    offset : int, default 0
        Global index of x's first element (in C order). Processing a slice
        ``x[a:b]`` of a flat array alone with ``offset=a`` gives exactly the mask
        it has inside the whole array.
    training : bool, default True
        If False, dropout is off: x is returned unchanged (no scaling) and the
        mask is None.
    inplace : bool, default False
        Overwrite x (which must be a writable ndarray; views are written through).
    out : ndarray, optional
        Array of x's shape and dtype to receive the result.
    backend : {"auto", "cython", "numba", "numpy"}, default "auto"
        "numpy" runs `fastdrop.reference`; "auto" picks Cython when it was built
        (no JIT warm-up), else Numba.

    Returns
    -------
    y : ndarray
        The result: x itself when ``inplace``, ``out`` when given, else a new
        C-ordered array.
    mask : DropoutMask or None
        Packed keep bits (1 bit per element: ``mask.words`` holds ceil(n/64)
        uint64 words, bit i of word i // 64 is element i of x in C order) and the
        ``seed``, ``stream``, ``offset``, ``p`` that regenerate them.

    Raises
    ------
    ValueError
        p outside [0, 1] or NaN; seed, stream or offset out of range; ``stream``
        without ``seed``; ``inplace`` on a read-only array; ``out`` of the wrong
        shape or read-only; ``inplace`` together with ``out``; unknown backend.
    TypeError
        x is not float16/32/64 (integer, bool, complex, object); p, seed, stream
        or offset of the wrong type; ``out`` of the wrong dtype.

    Notes
    -----
    Output arithmetic (identical on every backend): a kept element is ``x * s``
    with ``s = 1/(1-p)`` computed in float64 and rounded once to x's dtype, the
    product rounded to x's dtype; a dropped element is +0.0, whatever x holds
    (inf and NaN included). For float16, s rounds to float16 and may overflow to
    inf when p > 1 - 2**-16. On error nothing is written.

    Examples
    --------
    >>> import numpy as np, fastdrop
    >>> y, mask = fastdrop.dropout(np.ones(6, np.float32), 0.5, seed=1)
    >>> sorted(set(y.tolist())) in ([0.0, 2.0], [0.0], [2.0])
    True
    >>> mask.nbytes
    8
    """
    kernels = _kernels(backend)
    if kernels is None:
        return reference.dropout(x, p, seed=seed, stream=stream, offset=offset,
                                 training=training, inplace=inplace, out=out)
    p = _validate.check_p(p)
    x, target = _validate.prepare_target(x, "x", inplace, out)
    _validate.check_seed_stream(seed, stream)
    offset = _validate.check_offset(offset, x.size)
    if not training:
        return (x if target is None else _validate.deliver(x, x, target)), None
    seed, stream = _validate.resolve_seed_stream(seed, stream)
    n = x.size
    words = np.empty(words_for(n), dtype=np.uint64)
    threshold, drop_all = _stream_parameters(p)
    threads = get_num_threads()
    y = _elementwise(x, target, lambda source, result: kernels.scale_by_stream(
        source, result, words, n, dropout_scale(p), threshold, drop_all, seed, stream, offset,
        threads))
    return y, DropoutMask(words, shape=x.shape, p=p, seed=seed, stream=stream, offset=offset)


def dropout_backward(grad, mask, *, p=None, inplace=False, out=None, backend="auto"):
    """Gradient of dropout from its packed mask: ``grad * keep / (1 - p)``.

    Parameters
    ----------
    grad : array_like of float16, float32 or float64
        Gradient with respect to dropout's output; ``grad.size`` must equal the
        mask's number of elements (C order lines them up).
    mask : DropoutMask or ndarray of uint64
        The mask returned by `dropout`, or its packed words (then ``p`` is required).
    p : float, optional
        Drop probability. Required with raw words; with a DropoutMask it must
        equal ``mask.p`` if given.
    inplace, out, backend
        As in `dropout`.

    Returns
    -------
    ndarray
        ``grad * s`` where kept, +0.0 where dropped, with the same arithmetic as
        the forward pass.

    Raises
    ------
    ValueError
        The mask is for a different number of elements, has the wrong number of
        words, or its p does not match ``p``; bad ``inplace``/``out`` as in `dropout`.
    TypeError
        grad is not float16/32/64, or the words are not a 1-D uint64 array.
    """
    kernels = _kernels(backend)
    if kernels is None:
        return reference.dropout_backward(grad, mask, p=p, inplace=inplace, out=out)
    grad, target = _validate.prepare_target(grad, "grad", inplace, out)
    words, p = _validate.check_mask(mask, grad.size, p)
    words = np.ascontiguousarray(words)
    threads = get_num_threads()
    return _elementwise(grad, target, lambda source, result: kernels.scale_by_mask(
        source, result, words, dropout_scale(p), threads))


def dropout_backward_recompute(grad, p, *, seed, stream, offset=0, inplace=False, out=None,
                               backend="auto"):
    """Gradient of dropout with the mask regenerated from (seed, stream, offset): no mask stored.

    Bit for bit equal to `dropout_backward` with the mask of
    ``dropout(x, p, seed=seed, stream=stream, offset=offset)``.

    Parameters
    ----------
    grad : array_like of float16, float32 or float64
        Gradient with respect to dropout's output.
    p : float
        Drop probability of the forward pass.
    seed, stream : int
        The forward pass's seed and stream (``mask.seed``, ``mask.stream``).
    offset : int, default 0
        The forward pass's offset.
    inplace, out, backend
        As in `dropout`.

    Returns
    -------
    ndarray
        ``grad * s`` where kept, +0.0 where dropped.

    Raises
    ------
    ValueError, TypeError
        As in `dropout`.
    """
    kernels = _kernels(backend)
    if kernels is None:
        return reference.dropout_backward_recompute(grad, p, seed=seed, stream=stream,
                                                    offset=offset, inplace=inplace, out=out)
    p = _validate.check_p(p)
    grad, target = _validate.prepare_target(grad, "grad", inplace, out)
    seed, stream = _validate.check_seed(seed), _validate.check_stream(stream)
    offset = _validate.check_offset(offset, grad.size)
    n = grad.size
    threshold, drop_all = _stream_parameters(p)
    threads = get_num_threads()
    return _elementwise(grad, target, lambda source, result: kernels.scale_by_stream(
        source, result, None, n, dropout_scale(p), threshold, drop_all, seed, stream, offset,
        threads))


def bernoulli_mask(n, p, *, seed, stream=None, offset=0, backend="auto"):
    """Packed keep bits of ``n`` elements with global indices ``offset .. offset + n - 1``.

    Parameters
    ----------
    n : int
        Number of elements.
    p : float
        Drop probability in [0, 1].
    seed : int or Generator
        64-bit key, or a `Generator` that supplies the seed and its next stream.
    stream : int, optional
        64-bit call id; 0 when omitted with an integer seed.
    offset : int, default 0
        Global index of the first element.
    backend : {"auto", "cython", "numba", "numpy"}, default "auto"

    Returns
    -------
    numpy.ndarray of uint64, shape (ceil(n / 64),)
        Bit i of word i // 64 is 1 iff element i is kept; unused bits are 0. The
        same words `dropout` stores for the same arguments.

    Raises
    ------
    ValueError
        n negative, p outside [0, 1], seed/stream/offset out of range.
    TypeError
        An argument of the wrong type.

    Examples
    --------
    >>> import fastdrop
    >>> words = fastdrop.bernoulli_mask(100, 0.25, seed=7)
    >>> words.shape, fastdrop.unpack_mask(words, 100).shape
    ((2,), (100,))
    """
    kernels = _kernels(backend)
    if kernels is None:
        return reference.bernoulli_mask(n, p, seed=seed, stream=stream, offset=offset)
    n = _validate.check_count(n)
    p = _validate.check_p(p)
    offset = _validate.check_offset(offset, n)
    seed, stream = _validate.resolve_seed_stream(seed, stream)
    words = np.empty(words_for(n), dtype=np.uint64)
    threshold, drop_all = _stream_parameters(p)
    kernels.scale_by_stream(None, None, words, n, 0.0, threshold, drop_all, seed, stream, offset,
                            get_num_threads())
    return words
