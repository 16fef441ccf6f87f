"""Reverse-mode automatic differentiation on NumPy arrays: the Tensor and its ops.

A `Tensor` holds ``data`` (a float32 or float64 ndarray) and, after
``loss.backward()``, ``grad``. Each op computes its result and, right below it,
the ``_backward`` closure that adds the op's share of the gradient to its
inputs' ``grad``. Gradients accumulate with ``+=``, so a tensor used twice gets
both contributions. ``backward()`` runs the closures in reverse topological
order. Derived ops (subtraction, division, mean) are built from the primitives
and need no backward of their own; so are the losses in `functional`.

`_result` links an op's output to its inputs and counts each input's readers:
`functional`'s in-place rule for dropout reads that count. ``@`` multiplies with
`mc.matmul`, which inside `mc.fixed_matmul_rows` gives each row fixed places in
BLAS's blocks (for `predict_mc`) and is plain ``a @ b`` elsewhere.
"""
import contextlib
import threading

import numpy as np

from .mc import matmul

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
        out = _result(matmul(self.data, other.data), (self, other), "@")

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
