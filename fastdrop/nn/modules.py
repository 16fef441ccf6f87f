"""Modules built from the engine's ops: the Module base, Linear, ReLU, Tanh, Sequential.

Weights are stored as (in_features, out_features), so a layer computes
``x @ weight + bias``. The dropout layers are in `dropout_layers`, the MLP in `mlp`.
"""
import numpy as np

import fastdrop

from .engine import Tensor, as_tensor


class Module:
    """Base class of the layers: parameters, train/eval mode and dropout seeding.

    Attributes
    ----------
    training : bool
        True (the default) in training mode, where Dropout drops; False after `eval`.
    """

    training = True

    def __call__(self, x):
        """The layer's output for input ``x``: ``self.forward(x)``."""
        return self.forward(x)

    def forward(self, x):
        """The layer's output for input ``x`` (a Tensor or an array)."""
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def named_children(self):
        """(name, module) pairs of the modules directly inside this one."""
        return ()

    def children(self):
        """The modules directly inside this one."""
        return [child for _, child in self.named_children()]

    def modules(self):
        """The module itself and every module inside it, depth first."""
        yield self
        for child in self.children():
            yield from child.modules()

    def named_parameters(self):
        """(name, Tensor) pairs of the trainable tensors, names like ``"1.weight"``."""
        for child_name, child in self.named_children():
            for name, parameter in child.named_parameters():
                yield f"{child_name}.{name}", parameter

    def parameters(self):
        """The trainable tensors of this module and the modules inside it."""
        return [parameter for _, parameter in self.named_parameters()]

    def state_dict(self):
        """Copies of the parameter values, by name (see `named_parameters`).

        Returns
        -------
        dict of str to numpy.ndarray
        """
        return {name: parameter.data.copy() for name, parameter in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy values into the parameters, checking names, shapes and dtype casts.

        Parameters
        ----------
        state : mapping of str to array_like
            As returned by `state_dict` (or read by `load`).

        Raises
        ------
        KeyError
            If a parameter is missing from ``state`` or ``state`` has extra names.
        ValueError
            If a shape differs.
        """
        parameters = dict(self.named_parameters())
        missing, extra = sorted(set(parameters) - set(state)), sorted(set(state) - set(parameters))
        if missing or extra:
            raise KeyError(f"state does not match the model: missing {missing}, unexpected {extra}")
        for name, parameter in parameters.items():
            value = np.asarray(state[name])
            if value.shape != parameter.shape:
                raise ValueError(f"{name}: state has shape {value.shape}, "
                                 f"the model has {parameter.shape}")
            np.copyto(parameter.data, value, casting="same_kind")

    def save(self, path):
        """Write the parameters to an ``.npz`` file (one array per `named_parameters` name).

        Parameters
        ----------
        path : str or os.PathLike
        """
        np.savez(path, **self.state_dict())

    def load(self, path):
        """Read parameters written by `save` into this model (same architecture).

        Parameters
        ----------
        path : str or os.PathLike

        Returns
        -------
        Module
            self.
        """
        with np.load(path, allow_pickle=False) as archive:
            self.load_state_dict({name: archive[name] for name in archive.files})
        return self

    def zero_grad(self):
        """Forget the parameters' accumulated gradients (set ``grad`` to None)."""
        for parameter in self.parameters():
            parameter.grad = None

    def train(self, mode=True):
        """Set training mode (``mode=True``) or evaluation mode on every module; returns self."""
        for module in self.modules():
            module.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode: Dropout is the identity. Returns self."""
        return self.train(False)

    def reseed(self, seed):
        """Give every random layer inside a fresh generator derived from ``seed``.

        Parameters
        ----------
        seed : int
            Non-negative. Random layer k (a module whose ``generator`` is a
            `fastdrop.Generator`: Dropout and its variants, DropConnectLinear;
            in `modules` order) gets ``fastdrop.Generator(key)`` with the key
            drawn from ``numpy.random.SeedSequence([seed, k])``, so layers never
            share masks.

        Returns
        -------
        Module
            self.
        """
        layers = [module for module in self.modules()
                  if isinstance(getattr(module, "generator", None), fastdrop.Generator)]
        for index, layer in enumerate(layers):
            key = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
            layer.generator = fastdrop.Generator(int(key))
        return self

    @property
    def dtype(self):
        """dtype of the first parameter (float32 for a module without parameters)."""
        parameters = self.parameters()
        return parameters[0].dtype if parameters else np.dtype(np.float32)


class Linear(Module):
    """Affine layer ``x @ weight + bias``.

    Parameters
    ----------
    in_features, out_features : int
        Input and output widths.
    bias : bool, default True
        Whether to add a bias (initialised to zero).
    init : {"he", "glorot"}, default "he"
        Initial weights, uniform in [-b, b]: He, ``b = sqrt(6 / in_features)``
        (keeps the scale of ReLU activations), or Glorot,
        ``b = sqrt(6 / (in_features + out_features))`` (for tanh).
    dtype : numpy dtype, default numpy.float32
        float32 or float64.
    rng : int or numpy.random.Generator, optional
        Source of the initial weights.

    Attributes
    ----------
    weight : Tensor, shape (in_features, out_features)
        Column j holds the incoming weights of output unit j.
    bias : Tensor, shape (out_features,), or None
    """

    def __init__(self, in_features, out_features, *, bias=True, init="he", dtype=np.float32,
                 rng=None):
        variance = {"he": 2.0 / in_features, "glorot": 2.0 / (in_features + out_features)}
        if init not in variance:
            raise ValueError(f"init must be 'he' or 'glorot', got {init!r}")
        bound = np.sqrt(3.0 * variance[init])  # U(-b, b) has variance b**2 / 3
        weight = np.random.default_rng(rng).uniform(-bound, bound, (in_features, out_features))
        self.weight = Tensor(weight, requires_grad=True, dtype=dtype)
        self.bias = None
        if bias:
            self.bias = Tensor(np.zeros(out_features), requires_grad=True, dtype=dtype)

    def forward(self, x):
        """``x @ weight``, plus ``bias`` if the layer has one (x in the weight's dtype)."""
        out = as_tensor(x, dtype=self.weight.dtype) @ self.weight
        return out if self.bias is None else out + self.bias

    def named_parameters(self):
        """``("weight", weight)``, then ``("bias", bias)`` if the layer has one."""
        yield "weight", self.weight
        if self.bias is not None:
            yield "bias", self.bias

    def __repr__(self):
        return f"Linear({self.weight.shape[0]}, {self.weight.shape[1]}, dtype={self.weight.dtype})"


class ReLU(Module):
    """Elementwise max(x, 0)."""

    def forward(self, x):
        """max(x, 0), elementwise."""
        return as_tensor(x).relu()

    def __repr__(self):
        return "ReLU()"


class Tanh(Module):
    """Elementwise hyperbolic tangent."""

    def forward(self, x):
        """tanh(x), elementwise."""
        return as_tensor(x).tanh()

    def __repr__(self):
        return "Tanh()"


class Sequential(Module):
    """Modules applied one after the other.

    Parameters
    ----------
    *layers : Module
    """

    def __init__(self, *layers):
        self.layers = list(layers)

    def forward(self, x):
        """``x`` through every layer, in order."""
        for layer in self.layers:
            x = layer(x)
        return x

    def named_children(self):
        """``(str(index), layer)`` for each layer, in order."""
        return [(str(index), layer) for index, layer in enumerate(self.layers)]

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        inner = "".join(f"\n  {layer!r}," for layer in self.layers)
        return f"{type(self).__name__}({inner}\n)"
