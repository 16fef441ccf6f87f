"""The finite-difference gradient check that every op of `fastdrop.nn` passes."""
import numpy as np

from .engine import Tensor, no_grad


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
