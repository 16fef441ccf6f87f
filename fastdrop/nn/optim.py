"""Optimisers: SGD with momentum and Adam, both with the max-norm constraint.

Max-norm (Srivastava et al. 2014, section 5.1) is the constraint the dropout
paper pairs with dropout: after each step, every unit's vector of incoming
weights (a column of a Linear weight, which is stored (in, out)) is scaled back
onto the ball of radius ``max_norm`` if it left it. Biases are not constrained.
"""
import math

import numpy as np


class Optimizer:
    """Base class: holds the parameters and applies max-norm after each update.

    Parameters
    ----------
    parameters : iterable of Tensor
        Usually ``model.parameters()``.
    lr : float
        Learning rate, > 0.
    max_norm : float, optional
        Radius for the incoming weights of each unit (2-D parameters only);
        None for no constraint. The dropout paper used 3 to 4.
    """

    def __init__(self, parameters, lr, max_norm=None, **settings):
        self.parameters = list(parameters)
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"max_norm must be > 0 or None, got {max_norm!r}")
        self.lr = float(lr)
        self.max_norm = max_norm
        self.settings = dict(lr=lr, max_norm=max_norm, **settings)

    def fresh(self, parameters=None):
        """A new optimiser of the same kind and settings, with no state (momentum, moments).

        Parameters
        ----------
        parameters : iterable of Tensor, optional
            Default: the same parameters.
        """
        return type(self)(self.parameters if parameters is None else parameters, **self.settings)

    def zero_grad(self):
        """Set every parameter's ``grad`` to None."""
        for parameter in self.parameters:
            parameter.grad = None

    def step(self):
        """Update each parameter that has a gradient, then apply max-norm."""
        for index, parameter in enumerate(self.parameters):
            if parameter.grad is not None:
                self._update(index, parameter)
        if self.max_norm is not None:
            for parameter in self.parameters:
                if parameter.ndim == 2:
                    apply_max_norm(parameter.data, self.max_norm)

    def _update(self, index, parameter):
        raise NotImplementedError(f"{type(self).__name__} must define _update()")


BLOCK_ELEMENTS = 1 << 15  # 128 KiB of float32 per array: a block stays in cache between passes


def _blocks(*arrays):
    """Matching flat slices of same-shaped arrays, BLOCK_ELEMENTS at a time (None passes through).

    An update makes several passes over its arrays (scale, add, subtract); made
    block by block, each array is read from memory once instead of once a pass.
    """
    present = [array for array in arrays if array is not None]
    if not all(array.flags.c_contiguous for array in present):
        yield arrays  # reshape(-1) would copy: update the whole arrays at once
        return
    flat = [None if array is None else array.reshape(-1) for array in arrays]
    for start in range(0, present[0].size, BLOCK_ELEMENTS):
        yield [None if array is None else array[start:start + BLOCK_ELEMENTS] for array in flat]


def apply_max_norm(weight, max_norm):
    """Scale in place each column of ``weight`` whose L2 norm exceeds ``max_norm`` down to it.

    Parameters
    ----------
    weight : numpy.ndarray, shape (in_features, out_features)
        Column j holds the incoming weights of unit j.
    max_norm : float
        Radius, > 0.
    """
    norms = np.sqrt(np.einsum("ij,ij->j", weight, weight))
    weight *= np.minimum(1.0, max_norm / np.maximum(norms, np.finfo(weight.dtype).tiny))


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum and weight decay.

    ``g = grad + weight_decay * parameter; velocity = momentum * velocity + g;
    parameter -= lr * velocity``, as in ``torch.optim.SGD`` without dampening.

    Parameters
    ----------
    parameters : iterable of Tensor
    lr : float, default 0.01
    momentum : float, default 0.0
        In [0, 1).
    weight_decay : float, default 0.0
        L2 penalty coefficient, applied to every parameter.
    max_norm : float, optional
        See `Optimizer`.
    """

    def __init__(self, parameters, lr=0.01, momentum=0.0, weight_decay=0.0, max_norm=None):
        super().__init__(parameters, lr, max_norm, momentum=momentum, weight_decay=weight_decay)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum!r}")
        if not weight_decay >= 0.0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.velocities = [np.zeros_like(p.data) if momentum else None for p in self.parameters]

    def _update(self, index, parameter):
        for data, grad, velocity in _blocks(parameter.data, parameter.grad,
                                            self.velocities[index]):
            step = grad + self.weight_decay * data if self.weight_decay else grad
            if velocity is not None:
                velocity *= self.momentum
                velocity += step
                step = velocity
            data -= self.lr * step


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015) with bias correction, as in ``torch.optim.Adam``.

    Parameters
    ----------
    parameters : iterable of Tensor
    lr : float, default 1e-3
    betas : (float, float), default (0.9, 0.999)
        Decay rates of the first and second moment estimates.
    eps : float, default 1e-8
        Added to the root of the second moment.
    max_norm : float, optional
        See `Optimizer`.
    """

    def __init__(self, parameters, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, max_norm=None):
        super().__init__(parameters, lr, max_norm, betas=betas, eps=eps)
        self.betas = tuple(float(beta) for beta in betas)
        if not all(0.0 <= beta < 1.0 for beta in self.betas):
            raise ValueError(f"betas must lie in [0, 1), got {betas!r}")
        self.eps = float(eps)
        self.first_moments = [np.zeros_like(p.data) for p in self.parameters]
        self.second_moments = [np.zeros_like(p.data) for p in self.parameters]
        self.steps = [0] * len(self.parameters)

    def _update(self, index, parameter):
        beta1, beta2 = self.betas
        self.steps[index] += 1
        step_size = self.lr / (1 - beta1 ** self.steps[index])
        root_correction2 = math.sqrt(1 - beta2 ** self.steps[index])  # Python floats keep the dtype
        for data, grad, first, second in _blocks(parameter.data, parameter.grad,
                                                 self.first_moments[index],
                                                 self.second_moments[index]):
            first *= beta1
            first += (1 - beta1) * grad
            second *= beta2
            second += (1 - beta2) * grad * grad
            data -= step_size * first / (np.sqrt(second) / root_correction2 + self.eps)
