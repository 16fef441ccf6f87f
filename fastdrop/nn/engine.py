"""Reverse-mode automatic differentiation on NumPy arrays: the Tensor, its ops, gradcheck.

A `Tensor` holds ``data`` (a float32 or float64 ndarray) and, after
``loss.backward()``, ``grad``. Each op computes its result and, right below it,
the ``_backward`` closure that adds the op's share of the gradient to its
inputs' ``grad``. Gradients accumulate with ``+=``, so a tensor used twice gets
both contributions. ``backward()`` runs the closures in reverse topological
order. Derived ops (subtraction, division, mean, log-softmax, cross-entropy)
are built from the primitives and need no backward of their own.

**When dropout overwrites its input.** `dropout` (and `alpha_dropout` and
`gaussian_dropout`, whose backward reads neither input nor output) writes its
result over its input's array only when nothing can tell the difference:

1. the input was made by an op (it is not user data or a parameter);
2. it owns its memory (it is not a view of another tensor's array);
3. no op has read it yet; and
4. the op that made it does not read its own output in backward
   (``tanh`` and ``exp`` do, so their outputs are never overwritten).

ReLU's backward reads the sign of its *input*, so a ReLU's output can be
overwritten. Afterwards the input tensor is marked, and an op that tries to
read it raises a RuntimeError rather than computing with dropped values.

**Fixed row blocks.** Inside `fixed_matmul_rows`, ``a @ b`` multiplies 64 rows
of ``a`` at a time, each row at the place its label gives it, so a row's result
does not depend on which rows are multiplied with it (BLAS rounds by matrix size
and by a row's place in its tile); `predict_mc` relies on it.
"""
import contextlib
import math
import threading

import numpy as np

import fastdrop

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

_grad_mode = threading.local()


def is_grad_enabled():
    """Whether ops record the graph for `Tensor.backward` (False inside `no_grad`)."""
    return getattr(_grad_mode, "enabled", True)


@contextlib.contextmanager
def no_grad():
    """Context manager (or decorator) in which ops record no graph: for inference.

    Results of ops inside it have ``requires_grad=False``, keep no references to
    their inputs, and save nothing for a backward pass. The setting is per thread.

    Examples
    --------
    >>> import numpy as np
    >>> from fastdrop.nn import Tensor, no_grad
    >>> w = Tensor(np.ones(3), requires_grad=True)
    >>> with no_grad():
    ...     y = (w * 2).sum()
    >>> y.requires_grad
    False
    """
    previous = is_grad_enabled()
    _grad_mode.enabled = False
    try:
        yield
    finally:
        _grad_mode.enabled = previous


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
    >>> from fastdrop.nn.engine import Tensor, fixed_matmul_rows
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


def _matmul(a, b, labels=None):
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


def _float_array(data, dtype):
    """data as a float32/float64 ndarray: float arrays keep their dtype, others become float32."""
    if isinstance(data, Tensor):
        data = data.data
    if dtype is not None:
        dtype = np.dtype(dtype)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"Tensor dtype must be float32 or float64, got {dtype}")
        return np.asarray(data, dtype=dtype)
    array = np.asarray(data)
    if array.dtype in FLOAT_DTYPES:
        return array
    if array.dtype.kind not in "biuf":
        raise TypeError(f"Tensor data must be real numbers, got dtype {array.dtype}")
    return array.astype(np.float32)


class Tensor:
    """A float array that records the ops applied to it, for reverse-mode gradients.

    Parameters
    ----------
    data : array_like
        The values. float32 and float64 arrays are used as they are (no copy);
        anything else (integers, bools, float16, lists) becomes float32.
    requires_grad : bool, default False
        Whether `backward` computes ``grad`` for this tensor (True for parameters).
    dtype : {None, numpy.float32, numpy.float64}, optional
        Convert the data to this dtype.

    Attributes
    ----------
    data : numpy.ndarray
        The values.
    grad : numpy.ndarray or None
        After ``output.backward()``: d(output)/d(this tensor), same shape and
        dtype as ``data``. Leaves accumulate over backward calls; set it to None
        (``Module.zero_grad``) to start again.
    requires_grad : bool
        Whether gradients flow to this tensor.

    Notes
    -----
    Operators ``+ - * / ** @`` and unary ``-`` work between tensors and with
    scalars or arrays, which take the tensor's dtype. Broadcasting follows NumPy.

    Examples
    --------
    >>> import numpy as np
    >>> from fastdrop.nn import Tensor
    >>> x = Tensor(np.array([1.0, -2.0, 3.0]), requires_grad=True)
    >>> y = (x * x).sum()
    >>> y.backward()
    >>> x.grad.tolist()
    [2.0, -4.0, 6.0]
    """

    # ndarray <op> Tensor returns NotImplemented, so Python calls Tensor's reflected op.
    __array_ufunc__ = None

    def __init__(self, data, requires_grad=False, dtype=None):
        self.data = _float_array(data, dtype)
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self._parents = ()
        self._backward = None
        self._op = ""  # the op that made this tensor; "" for a leaf
        self._consumers = 0  # ops that have read this tensor
        self._output_read = False  # the op that made this tensor reads it in backward
        self._overwritten = False  # dropout wrote its output over self.data

    # -- plumbing ---------------------------------------------------------------

    @property
    def shape(self):
        """Shape of ``data``."""
        return self.data.shape

    @property
    def dtype(self):
        """dtype of ``data`` (float32 or float64)."""
        return self.data.dtype

    @property
    def ndim(self):
        """Number of dimensions of ``data``."""
        return self.data.ndim

    @property
    def size(self):
        """Number of elements of ``data``."""
        return self.data.size

    def numpy(self):
        """The values as an ndarray (``data`` itself, not a copy)."""
        return self.data

    def item(self):
        """The value of a one-element tensor as a Python float."""
        return self.data.item()

    def __len__(self):
        return len(self.data)

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        made_by = f", op={self._op!r}" if self._op else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}{grad}{made_by})"

    def _with_backward(self, backward):
        """Attach an op's backward closure (only when a gradient will flow)."""
        if self.requires_grad:
            self._backward = backward
        return self

    def _accumulate(self, grad, owned=False):
        """``self.grad += grad``; an array the op may give away (owned) is kept without a copy.

        An op owns the arrays it has just made and, in its backward, ``out.grad``
        (nothing reads it afterwards), unless it passes it to two inputs.
        """
        if self.grad is None:
            self.grad = grad.astype(self.data.dtype, copy=not owned)
        else:
            self.grad += grad

    def backward(self, grad=None):
        """Compute ``grad`` of every tensor this one depends on that requires grad.

        Parameters
        ----------
        grad : array_like, optional
            d(final objective)/d(self). Default 1, allowed only for a
            one-element tensor (a loss).

        Raises
        ------
        RuntimeError
            If this tensor does not require grad (no input requires grad, or it
            was made under `no_grad`), or ``grad`` is omitted for a tensor with
            more than one element.
        ValueError
            If ``grad`` has the wrong shape.

        Notes
        -----
        Leaves (tensors not made by an op, such as parameters) accumulate into
        ``grad`` across calls. An intermediate tensor's ``grad`` is dropped as
        soon as its op's backward has used it (its array may be handed on to
        an input), so after ``backward()`` only leaves hold a gradient.
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: nothing it "
                               "depends on has requires_grad=True, or it was made under no_grad()")
        if grad is None:
            if self.size != 1:
                raise RuntimeError(f"backward() without a gradient needs a one-element tensor, "
                                   f"got shape {self.shape}")
            grad = np.ones_like(self.data)
        grad = np.asarray(grad, dtype=self.dtype)
        if grad.shape != self.shape:
            raise ValueError(f"gradient has shape {grad.shape}, expected {self.shape}")
        order = self._topological_order()
        for tensor in order:
            if tensor._parents:
                tensor.grad = None  # left over if an earlier backward() raised
        self._accumulate(grad)
        for tensor in reversed(order):
            if tensor._backward is not None and tensor.grad is not None:
                tensor._backward()
            if tensor._parents:
                tensor.grad = None

    def _topological_order(self):
        """Tensors of the graph ending here, each after all its parents (iterative DFS)."""
        order, visited = [], set()
        stack = [(self, False)]
        while stack:
            tensor, parents_done = stack.pop()
            if parents_done:
                order.append(tensor)
            elif id(tensor) not in visited:
                visited.add(id(tensor))
                stack.append((tensor, True))
                stack.extend((parent, False) for parent in tensor._parents
                             if id(parent) not in visited)
        return order

    # -- primitive ops: forward, then backward ----------------------------------

    def __add__(self, other):
        other = _lift(other, self)
        out = _result(self.data + other.data, (self, other), "+")

        def _backward():
            if self.requires_grad:
                self._accumulate(_unbroadcast(out.grad, self.shape))
            if other.requires_grad:
                other._accumulate(_unbroadcast(out.grad, other.shape))
        return out._with_backward(_backward)

    def __mul__(self, other):
        other = _lift(other, self)
        out = _result(self.data * other.data, (self, other), "*")

        def _backward():
            if self.requires_grad:
                self._accumulate(_unbroadcast(out.grad * other.data, self.shape), owned=True)
            if other.requires_grad:
                other._accumulate(_unbroadcast(out.grad * self.data, other.shape), owned=True)
        return out._with_backward(_backward)

    def __pow__(self, exponent):
        if isinstance(exponent, Tensor) or not np.isscalar(exponent):
            raise TypeError("Tensor ** supports a scalar exponent only")
        exponent = float(exponent)  # a Python float keeps the tensor's dtype
        out = _result(self.data ** exponent, (self,), "**")

        def _backward():
            if self.requires_grad:
                self._accumulate(out.grad * exponent * self.data ** (exponent - 1), owned=True)
        return out._with_backward(_backward)

    def __matmul__(self, other):
        other = _lift(other, self)
        if self.ndim != 2 or other.ndim != 2:
            raise ValueError(f"@ needs two 2-D tensors, got shapes {self.shape} and {other.shape}")
        out = _result(_matmul(self.data, other.data), (self, other), "@")

        def _backward():
            if self.requires_grad:
                self._accumulate(out.grad @ other.data.T, owned=True)
            if other.requires_grad:
                other._accumulate(self.data.T @ out.grad, owned=True)
        return out._with_backward(_backward)

    def sum(self, axis=None, keepdims=False):
        """Sum over ``axis`` (int, tuple, or None for all), like `numpy.sum`."""
        out = _result(np.sum(self.data, axis=axis, keepdims=keepdims), (self,), "sum")

        def _backward():
            grad = out.grad if keepdims or axis is None else np.expand_dims(out.grad, axis)
            if self.requires_grad:
                self._accumulate(np.broadcast_to(grad, self.shape))
        return out._with_backward(_backward)

    def exp(self):
        """Elementwise e**x."""
        out = _result(np.exp(self.data), (self,), "exp", backward_reads_output=True)

        def _backward():
            if self.requires_grad:
                self._accumulate(out.grad * out.data, owned=True)
        return out._with_backward(_backward)

    def log(self):
        """Elementwise natural logarithm."""
        out = _result(np.log(self.data), (self,), "log")

        def _backward():
            if self.requires_grad:
                self._accumulate(out.grad / self.data, owned=True)
        return out._with_backward(_backward)

    def relu(self):
        """Elementwise max(x, 0); the gradient at 0 is taken as 0."""
        out = _result(np.maximum(self.data, 0), (self,), "relu")

        def _backward():
            if self.requires_grad:  # the sign of the input, so the output may be overwritten
                out.grad *= self.data > 0
                self._accumulate(out.grad, owned=True)
        return out._with_backward(_backward)

    def tanh(self):
        """Elementwise hyperbolic tangent."""
        out = _result(np.tanh(self.data), (self,), "tanh", backward_reads_output=True)

        def _backward():
            if self.requires_grad:
                self._accumulate(out.grad * (1 - out.data * out.data), owned=True)
        return out._with_backward(_backward)

    def reshape(self, *shape):
        """The same values in a new shape (a view, like `numpy.reshape`)."""
        out = _result(self.data.reshape(*shape), (self,), "reshape")

        def _backward():
            if self.requires_grad:
                self._accumulate(out.grad.reshape(self.shape))
        return out._with_backward(_backward)

    @property
    def T(self):
        """The transpose (reversed axes, a view)."""
        out = _result(self.data.T, (self,), "T")

        def _backward():
            if self.requires_grad:
                self._accumulate(out.grad.T)
        return out._with_backward(_backward)

    def __getitem__(self, index):
        out = _result(self.data[index], (self,), "[]")

        def _backward():
            if self.requires_grad:
                grad = np.zeros_like(self.data)
                np.add.at(grad, index, out.grad)  # repeated indices add up
                self._accumulate(grad, owned=True)
        return out._with_backward(_backward)

    # -- derived ops: built from the primitives ---------------------------------

    def __radd__(self, other):
        return self + other

    def __neg__(self):
        return self * -1

    def __sub__(self, other):
        return self + (-_lift(other, self))

    def __rsub__(self, other):
        return _lift(other, self) + (-self)

    def __rmul__(self, other):
        return self * other

    def __truediv__(self, other):
        return self * _lift(other, self) ** -1

    def __rtruediv__(self, other):
        return _lift(other, self) * self ** -1

    def __rmatmul__(self, other):
        return _lift(other, self) @ self

    def mean(self, axis=None, keepdims=False):
        """Mean over ``axis``, like `numpy.mean`."""
        count = self.size if axis is None else np.prod(
            [self.shape[a] for a in np.atleast_1d(axis)], dtype=np.int64)
        return self.sum(axis=axis, keepdims=keepdims) * (1.0 / count)


def as_tensor(value, dtype=None):
    """``value`` itself if it is a Tensor, else a new leaf Tensor of it.

    Parameters
    ----------
    value : Tensor or array_like
    dtype : {None, numpy.float32, numpy.float64}, optional
        dtype for a new Tensor. A Tensor passes through unchanged (converting it
        would cut it off from its graph); mixed dtypes promote like NumPy's.

    Returns
    -------
    Tensor
    """
    return value if isinstance(value, Tensor) else Tensor(value, dtype=dtype)


def _lift(value, like):
    """A constant operand as a Tensor of ``like``'s dtype (tensors pass through)."""
    return as_tensor(value, dtype=like.dtype)


def _result(data, parents, op, backward_reads_output=False):
    """The output tensor of an op, linked to its parents when a gradient will flow.

    Reading the parents makes each of them a consumer, so `dropout` will not
    overwrite them; ``backward_reads_output`` protects the output the same way.
    """
    for parent in parents:
        if parent._overwritten:
            raise RuntimeError(
                "this tensor's values were overwritten by dropout (made in place because "
                "nothing else had used it); build a Dropout with inplace=False to reuse its input")
        parent._consumers += 1
    out = Tensor(data)
    out._op = op
    if is_grad_enabled() and any(parent.requires_grad for parent in parents):
        out.requires_grad = True
        out._parents = parents
        out._output_read = backward_reads_output
    return out


def _unbroadcast(grad, shape):
    """Sum ``grad`` over the axes that broadcasting added or stretched to reach ``shape``'s."""
    if grad.shape == shape:
        return grad
    grad = grad.sum(axis=tuple(range(grad.ndim - len(shape))))
    stretched = tuple(axis for axis, length in enumerate(shape)
                      if length == 1 and grad.shape[axis] != 1)
    return grad.sum(axis=stretched, keepdims=True) if stretched else grad


def _free_to_overwrite(tensor):
    """Whether an op may write over ``tensor.data``: the rule in this module's docstring."""
    return (tensor._op != "" and tensor.data.flags.owndata and tensor.data.flags.writeable
            and tensor._consumers == 0 and not tensor._output_read)


def dropout(x, p, *, seed, stream, offset=0, training=True, recompute=False, inplace=True,
            noise_shape=None, backend="auto"):
    """Dropout as a graph op: `fastdrop.dropout` forward, its packed mask backward.

    Parameters
    ----------
    x : Tensor
        Input.
    p : float
        Drop probability in [0, 1].
    seed, stream : int
        Mask-stream coordinates (see `fastdrop.dropout`); a `fastdrop.Generator`
        hands out a fresh pair per call with ``reserve_stream()``.
    offset : int, default 0
        Global index of x's first element.
    training : bool, default True
        If False, return ``(x, None)`` with x as a Tensor: dropout is the identity.
    recompute : bool, default False
        Keep no mask: backward regenerates the bits from (seed, stream, offset)
        with `fastdrop.dropout_backward_recompute`. Same gradients, bit for bit,
        and no 1-bit-per-element mask held between forward and backward.
    inplace : bool, default True
        Write the result over ``x.data`` when that is safe (rule in the module
        docstring); otherwise, or if False, write a new array.
    noise_shape : tuple of int, optional
        Shape of the mask, broadcast over x (see `fastdrop.dropout`): one keep
        bit is shared along every axis where it is 1, e.g. ``(N, C, 1, 1)``
        drops whole channels of an ``(N, C, H, W)`` input.
    backend : str, default "auto"
        Passed to fastdrop.

    Returns
    -------
    y : Tensor
        ``x * keep / (1 - p)``.
    mask : fastdrop.DropoutMask or None
        The packed mask the backward uses (``mask.shape`` is the noise shape);
        None with ``recompute=True`` or ``training=False``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastdrop.nn import Tensor, dropout
    >>> x = Tensor(np.ones((2, 64), np.float32), requires_grad=True)
    >>> y, mask = dropout(x, 0.5, seed=1, stream=0)
    >>> y.sum().backward()
    >>> bool(np.array_equal(x.grad, y.data))
    True
    """
    x = as_tensor(x)
    if not training:  # the identity, on a Tensor like the other ops' results
        return x, None
    overwrite = inplace and _free_to_overwrite(x)
    data, mask = fastdrop.dropout(x.data, p, seed=seed, stream=stream, offset=offset,
                                  inplace=overwrite, noise_shape=noise_shape, backend=backend)
    out = _result(data, (x,), "dropout")
    x._overwritten = overwrite
    kept = None if recompute else mask
    mask_shape = mask.shape

    def _backward():
        if not x.requires_grad:
            return
        if kept is not None:
            grad = fastdrop.dropout_backward(out.grad, kept, inplace=True, backend=backend)
        else:
            grad = fastdrop.dropout_backward_recompute(out.grad, p, seed=seed, stream=stream,
                                                       offset=offset, noise_shape=mask_shape,
                                                       inplace=True, backend=backend)
        x._accumulate(grad, owned=True)
    return out._with_backward(_backward), kept


def alpha_dropout(x, p, *, seed, stream, offset=0, training=True, noise_shape=None,
                  recompute=False, inplace=True, backend="auto"):
    """Alpha dropout (SELU networks) as a graph op: `fastdrop.alpha_dropout` forward.

    Kept elements become ``a * x + b`` and dropped ones the constant
    ``a * alpha' + b`` (Klambauer et al. 2017), so the gradient is ``a`` where
    kept and 0 where dropped: `fastdrop.alpha_dropout_backward` with the mask.

    Parameters
    ----------
    x : Tensor
    p : float
        Drop probability in [0, 1]; p = 0 is the identity.
    seed, stream, offset, training, recompute, inplace, noise_shape, backend
        As in `dropout`. With ``recompute=True`` backward regenerates the keep
        bits with `fastdrop.bernoulli_mask` (the same bits, so the same gradients).

    Returns
    -------
    y : Tensor
    mask : fastdrop.DropoutMask or None
        None with ``recompute=True`` or ``training=False``.
    """
    if not training:
        return as_tensor(x), None
    x = as_tensor(x)
    overwrite = inplace and _free_to_overwrite(x)  # backward reads neither x nor y
    data, mask = fastdrop.alpha_dropout(x.data, p, seed=seed, stream=stream, offset=offset,
                                        inplace=overwrite, noise_shape=noise_shape,
                                        backend=backend)
    out = _result(data, (x,), "alpha_dropout")
    x._overwritten = overwrite
    kept = None if recompute else mask
    mask_shape, p = mask.shape, mask.p

    def _backward():
        if not x.requires_grad:
            return
        used = kept
        if used is None:  # the same bits, from (seed, stream, offset)
            words = fastdrop.bernoulli_mask(math.prod(mask_shape), p, seed=seed, stream=stream,
                                            offset=offset, backend=backend)
            used = fastdrop.DropoutMask(words, shape=mask_shape, p=p, seed=seed, stream=stream,
                                        offset=offset)
        grad = fastdrop.alpha_dropout_backward(out.grad, used, inplace=True, backend=backend)
        x._accumulate(grad, owned=True)
    return out._with_backward(_backward), kept


def gaussian_dropout(x, p, *, seed, stream, offset=0, training=True, inplace=True,
                     backend="auto"):
    """Gaussian dropout as a graph op: multiply by N(1, p / (1 - p)) noise.

    The forward is `fastdrop.gaussian_dropout`; the backward multiplies the
    gradient by the same noise, regenerated from (seed, stream, offset) with
    `fastdrop.gaussian_dropout_backward`: nothing of x's size is kept.

    Parameters
    ----------
    x : Tensor
    p : float
        Rate in [0, 1): the noise variance is p / (1 - p).
    seed, stream, offset, training, inplace, backend
        As in `dropout`.

    Returns
    -------
    y : Tensor
        ``x * (1 + sigma * z)``, sigma = sqrt(p / (1 - p)).
    noise : fastdrop.GaussianNoise or None
        The coordinates that regenerate the noise; None with ``training=False``.
    """
    if not training:
        return as_tensor(x), None
    x = as_tensor(x)
    overwrite = inplace and _free_to_overwrite(x)  # backward reads neither x nor y
    data, noise = fastdrop.gaussian_dropout(x.data, p, seed=seed, stream=stream, offset=offset,
                                            inplace=overwrite, backend=backend)
    out = _result(data, (x,), "gaussian_dropout")
    x._overwritten = overwrite

    def _backward():
        if x.requires_grad:
            x._accumulate(fastdrop.gaussian_dropout_backward(out.grad, noise, inplace=True,
                                                             backend=backend), owned=True)
    return out._with_backward(_backward), noise


def dropconnect_linear(x, weight, bias, p, *, seed, stream, offset=0, training=True,
                       recompute=False, backend="auto"):
    """DropConnect affine map ``x @ weight_dropped + bias`` as one graph op (Wan et al. 2013).

    ``weight_dropped = fastdrop.dropconnect(weight, p, ...)``: each weight is
    dropped with probability p and the rest scaled by 1/(1-p); one weight mask
    serves the whole batch. Backward, with g the output gradient:
    ``dx = g @ weight_dropped.T``, ``dweight = dropout_backward(x.T @ g, mask)``,
    ``dbias = g.sum(0)``.

    Parameters
    ----------
    x : Tensor, shape (batch, in_features)
    weight : Tensor, shape (in_features, out_features)
        The layout of `Linear`.
    bias : Tensor of shape (out_features,), or None
    p : float
        Probability of dropping each weight.
    seed, stream, offset : int
        Mask-stream coordinates of the weight mask (as in `dropout`).
    training : bool, default True
        If False, return ``(x @ weight + bias, None)``: the full weights, unscaled.
    recompute : bool, default False
        Keep neither the dropped weights nor the mask between forward and
        backward: backward regenerates them from (seed, stream, offset). Same
        gradients, bit for bit.
    backend : str, default "auto"

    Returns
    -------
    y : Tensor, shape (batch, out_features)
    mask : fastdrop.DropoutMask or None
        The weight mask (``mask.shape == weight.shape``); None with
        ``recompute=True`` or ``training=False``.

    Raises
    ------
    ValueError
        If x or weight is not 2-D, or their inner dimensions differ.
    """
    x, weight = as_tensor(x), as_tensor(weight)
    bias = None if bias is None else as_tensor(bias)
    if not training:
        out = x @ weight
        return (out if bias is None else out + bias), None
    if x.ndim != 2 or weight.ndim != 2 or x.shape[1] != weight.shape[0]:
        raise ValueError(f"dropconnect_linear needs x (batch, in) and weight (in, out), "
                         f"got shapes {x.shape} and {weight.shape}")
    dropped, mask = fastdrop.dropconnect(weight.data, p, seed=seed, stream=stream, offset=offset,
                                         backend=backend)
    data = _matmul(x.data, dropped)
    if bias is not None:
        data = data + bias.data
    parents = (x, weight) if bias is None else (x, weight, bias)
    out = _result(data, parents, "dropconnect_linear")
    kept_weight, kept_mask = (None, None) if recompute else (dropped, mask)
    p = mask.p

    def _backward():
        grad = out.grad
        if bias is not None and bias.requires_grad:
            bias._accumulate(grad.sum(axis=0), owned=True)
        if x.requires_grad:
            used = kept_weight
            if used is None:  # the same arithmetic on the same bits: the forward's array
                used = fastdrop.dropconnect(weight.data, p, seed=seed, stream=stream,
                                            offset=offset, backend=backend)[0]
            x._accumulate(grad @ used.T, owned=True)
        if weight.requires_grad:
            grad_weight = x.data.T @ grad
            if kept_mask is not None:
                grad_weight = fastdrop.dropout_backward(grad_weight, kept_mask, inplace=True,
                                                        backend=backend)
            else:
                grad_weight = fastdrop.dropout_backward_recompute(
                    grad_weight, p, seed=seed, stream=stream, offset=offset, inplace=True,
                    backend=backend)
            weight._accumulate(grad_weight, owned=True)
    return out._with_backward(_backward), kept_mask


def log_softmax(x, axis=-1):
    """log(softmax(x)) along ``axis``, computed stably.

    Parameters
    ----------
    x : Tensor
    axis : int, default -1

    Returns
    -------
    Tensor
        Same shape as x.
    """
    x = as_tensor(x)
    # The shift by the (constant) row maximum cancels in value and gradient; it keeps exp finite.
    shifted = x - x.data.max(axis=axis, keepdims=True)
    return shifted - shifted.exp().sum(axis=axis, keepdims=True).log()


def cross_entropy(logits, labels):
    """Mean cross-entropy of integer class labels under softmax(logits).

    Parameters
    ----------
    logits : Tensor, shape (n, classes)
        Unnormalised scores.
    labels : array_like of int, shape (n,)
        Class indices in [0, classes).

    Returns
    -------
    Tensor
        A scalar: ``-mean(log_softmax(logits)[i, labels[i]])``.

    Raises
    ------
    ValueError
        If the shapes disagree or a label is out of range.
    TypeError
        If the labels are not integers.
    """
    logits = as_tensor(logits)
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"cross_entropy needs logits (n, classes) and labels (n,), "
                         f"got {logits.shape} and {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must lie in [0, {logits.shape[1]}), "
                         f"got values from {labels.min()} to {labels.max()}")
    return -log_softmax(logits)[np.arange(labels.size), labels].mean()


class GradcheckError(AssertionError):
    """Raised by `gradcheck` when backward disagrees with finite differences."""


def gradcheck(f, inputs, *, eps=1e-6, atol=1e-5, rtol=1e-3, seed=0):
    """Check the gradients ``backward`` gives against central differences, in float64.

    Parameters
    ----------
    f : callable
        ``f(*tensors) -> Tensor``. It must be deterministic: give dropout a
        fixed seed and stream, or reset a Dropout's ``generator.state`` inside f.
    inputs : sequence of Tensor or array_like
        The point of the check. Tensors are used as they are, so a model's
        parameters can be passed and reached by f through the model; for the
        check their data is a float64 copy, and their data, grad and
        requires_grad are restored afterwards. Arrays become float64 tensors.
    eps : float, default 1e-6
        Step of the central difference ``(f(x + eps) - f(x - eps)) / (2 eps)``.
    atol, rtol : float
        Every element must satisfy ``|backward - numeric| <= atol + rtol * |numeric|``.
    seed : int, default 0
        Seed of the fixed random weights that reduce a non-scalar output to a
        scalar (so every output element is checked).

    Returns
    -------
    bool
        True.

    Raises
    ------
    GradcheckError
        Naming the input, the worst element and both gradients.

    Notes
    -----
    Tensors that f uses but that are not in ``inputs`` keep their dtype; build a
    model with ``dtype=numpy.float64`` (or pass all its parameters) so that the
    whole computation runs in float64. Parameters f reaches accumulate ``grad``
    from the one analytic backward pass.

    Examples
    --------
    >>> import numpy as np
    >>> from fastdrop.nn import gradcheck
    >>> gradcheck(lambda x: (x * x).tanh().sum(), [np.array([0.3, -1.2])])
    True
    """
    tensors = [value if isinstance(value, Tensor) else Tensor(value, dtype=np.float64)
               for value in inputs]
    saved = [(tensor.data, tensor.grad, tensor.requires_grad) for tensor in tensors]
    try:
        for tensor in tensors:
            tensor.data = np.array(tensor.data, dtype=np.float64)  # private copy, perturbed below
            tensor.grad, tensor.requires_grad = None, True
        output = f(*tensors)
        weights = (np.ones(output.shape) if output.size == 1
                   else np.random.default_rng(seed).standard_normal(output.shape))
        if output.requires_grad:
            (output * Tensor(weights, dtype=output.dtype)).sum().backward()

        def objective():
            with no_grad():
                return float(np.sum(f(*tensors).data * weights))

        for position, tensor in enumerate(tensors):
            analytic = tensor.grad if tensor.grad is not None else np.zeros_like(tensor.data)
            if analytic.shape != tensor.shape:
                raise GradcheckError(f"gradient of input {position} has shape {analytic.shape}, "
                                     f"the input has {tensor.shape}")
            numeric = np.empty_like(tensor.data)
            values = tensor.data.reshape(-1)  # a view: writing it perturbs the input
            for k in range(values.size):
                original = values[k]
                values[k] = original + eps
                above = objective()
                values[k] = original - eps
                below = objective()
                values[k] = original
                numeric.flat[k] = (above - below) / (2 * eps)
            error = np.abs(analytic - numeric)
            if np.any(~(error <= atol + rtol * np.abs(numeric))):
                worst = np.unravel_index(np.argmax(np.where(np.isnan(error), np.inf, error)),
                                         numeric.shape)
                raise GradcheckError(
                    f"gradient of input {position} (shape {tensor.shape}) is wrong at index "
                    f"{tuple(int(i) for i in worst)}: backward gives {analytic[worst]!r}, central "
                    f"differences give {numeric[worst]!r} (eps={eps}, atol={atol}, rtol={rtol})")
    finally:
        for tensor, (data, grad, requires_grad) in zip(tensors, saved):
            tensor.data, tensor.grad, tensor.requires_grad = data, grad, requires_grad
    return True
