"""Modules built from the engine's ops: Linear, activations, Dropout, Sequential, MLP.

Weights are stored as (in_features, out_features), so a layer computes
``x @ weight + bias``. Each Dropout layer draws its masks from its own
`fastdrop.Generator`; ``Module.reseed(seed)`` derives all of them from one
seed, so training with a given seed is reproducible.
"""
import numpy as np

import fastdrop
from fastdrop._validate import check_p

from .engine import Tensor, as_tensor, dropout


class Module:
    """Base class of the layers: parameters, train/eval mode and dropout seeding.

    Attributes
    ----------
    training : bool
        True (the default) in training mode, where Dropout drops; False after `eval`.
    """

    training = True

    def __call__(self, x):
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
        """This module and every module inside it, depth first."""
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
        """Give every Dropout layer inside a fresh generator derived from ``seed``.

        Parameters
        ----------
        seed : int
            Non-negative. Dropout layer k (in `modules` order) gets
            ``fastdrop.Generator(key)`` with the key drawn from
            ``numpy.random.SeedSequence([seed, k])``, so layers never share masks.

        Returns
        -------
        Module
            self.
        """
        layers = [module for module in self.modules() if isinstance(module, Dropout)]
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
        out = as_tensor(x, dtype=self.weight.dtype) @ self.weight
        return out if self.bias is None else out + self.bias

    def named_parameters(self):
        yield "weight", self.weight
        if self.bias is not None:
            yield "bias", self.bias

    def __repr__(self):
        return f"Linear({self.weight.shape[0]}, {self.weight.shape[1]}, dtype={self.weight.dtype})"


class ReLU(Module):
    """Elementwise max(x, 0)."""

    def forward(self, x):
        return as_tensor(x).relu()

    def __repr__(self):
        return "ReLU()"


class Tanh(Module):
    """Elementwise hyperbolic tangent."""

    def forward(self, x):
        return as_tensor(x).tanh()

    def __repr__(self):
        return "Tanh()"


class Dropout(Module):
    """Inverted dropout in training mode, the identity in evaluation mode.

    Each training-mode call takes the next stream of ``generator`` and runs
    `fastdrop.nn.dropout`: each element is dropped with probability ``p`` and
    the rest are scaled by ``1 / (1 - p)``.

    Parameters
    ----------
    p : float, default 0.5
        Drop probability in [0, 1].
    recompute : bool, default False
        Store no mask between forward and backward; backward regenerates the
        bits from (seed, stream). Same gradients, bit for bit.
    inplace : bool, default True
        Overwrite the input's array when nothing else needs it (the rule is in
        `fastdrop.nn.engine`); the input tensor then cannot be used again.
    seed : int, optional
        Seed of this layer's generator; None draws one from the OS (use
        `Module.reseed` to seed a whole model).
    backend : str, default "auto"
        fastdrop backend for the kernels.

    Attributes
    ----------
    generator : fastdrop.Generator
        Where the (seed, stream) of each call comes from.
    last_mask : fastdrop.DropoutMask or None
        The packed mask of the last training-mode call, which the backward pass
        uses; None with ``recompute=True``, where no mask is stored.
    """

    def __init__(self, p=0.5, *, recompute=False, inplace=True, seed=None, backend="auto"):
        self.p = check_p(p)
        self.backend = backend
        self.recompute = bool(recompute)
        self.inplace = bool(inplace)
        self.generator = fastdrop.Generator(seed)
        self.last_mask = None

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return as_tensor(x)
        seed, stream = self.generator.reserve_stream()
        out, self.last_mask = dropout(as_tensor(x), self.p, seed=seed, stream=stream,
                                      recompute=self.recompute, inplace=self.inplace,
                                      backend=self.backend)
        return out

    def __repr__(self):
        extra = ", recompute=True" if self.recompute else ""
        return f"Dropout(p={self.p}{extra})"


class Sequential(Module):
    """Modules applied one after the other.

    Parameters
    ----------
    *layers : Module
    """

    def __init__(self, *layers):
        self.layers = list(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def named_children(self):
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


# activation -> (module, weight initialisation suited to it)
ACTIVATIONS = {"relu": (ReLU, "he"), "tanh": (Tanh, "glorot")}


class MLP(Sequential):
    """Multi-layer perceptron: [Dropout] Linear, activation, [Dropout] Linear, ..., Linear.

    Parameters
    ----------
    sizes : sequence of int
        Widths from input to output, e.g. ``[784, 1024, 1024, 10]``.
    dropout : float, sequence of float or "auto", default 0.0
        A float is the drop rate of every hidden layer (none on the input). A
        sequence gives one rate per Linear layer, for that layer's input (so
        entry 0 is the input dropout). "auto" uses ``suggest_dropout(sizes)``.
        Rate 0 adds no Dropout layer. The output is never dropped.
    activation : {"relu", "tanh"}, default "relu"
        With He initialisation for ReLU and Glorot for tanh.
    recompute : bool, default False
        Passed to every Dropout layer.
    dtype : numpy dtype, default numpy.float32
    seed : int, optional
        Seeds the initial weights and (via `Module.reseed`) the dropout masks.

    Attributes
    ----------
    sizes : list of int
    dropout_rates : list of float
        One per Linear layer: the rate applied to its input.

    Examples
    --------
    >>> from fastdrop.nn import MLP
    >>> model = MLP([64, 32, 10], dropout=[0.1, 0.5], seed=0)
    >>> [type(layer).__name__ for layer in model]
    ['Dropout', 'Linear', 'ReLU', 'Dropout', 'Linear']
    """

    def __init__(self, sizes, *, dropout=0.0, activation="relu", recompute=False,
                 dtype=np.float32, seed=None):
        self.sizes = _check_sizes(sizes)
        linear_count = len(self.sizes) - 1
        if isinstance(dropout, str):
            if dropout != "auto":
                raise ValueError(f"dropout must be a rate, a list of rates or 'auto', "
                                 f"got {dropout!r}")
            rates = suggest_dropout(self.sizes)
        elif np.ndim(dropout) == 0:
            rates = [0.0] + [dropout] * (linear_count - 1)
        else:
            rates = list(dropout)
            if len(rates) != linear_count:
                raise ValueError(f"{linear_count} Linear layers need {linear_count} dropout rates "
                                 f"(one per layer input), got {len(rates)}")
        self.dropout_rates = [check_p(rate) for rate in rates]
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        activation_class, init = ACTIVATIONS[activation]
        rng = np.random.default_rng(seed)
        layers = []
        for index, rate in enumerate(self.dropout_rates):
            if rate > 0:
                layers.append(Dropout(rate, recompute=recompute))
            layers.append(Linear(self.sizes[index], self.sizes[index + 1], init=init, dtype=dtype,
                                 rng=rng))
            if index < linear_count - 1:
                layers.append(activation_class())
        super().__init__(*layers)
        if seed is not None:
            self.reseed(seed)


def _check_sizes(sizes):
    sizes = [int(size) for size in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least an input and an output width, all >= 1, "
                         f"got {sizes}")
    return sizes


def _nearest_twentieth(rate):
    return round(float(rate) * 20) / 20


def suggest_dropout(sizes):
    """Starting drop rates for an MLP, one per Linear layer's input (docs/nn.md).

    The rule, each rate rounded to the nearest 0.05:

    - input, ``n`` features: rises with log10(n) from 0 at 10 features to 0.2
      at 1000 or more (none for a handful of features, light for pixels);
    - a hidden layer fed by ``w`` weights (``w = width_before * width``): rises
      with log10(w) from 0.3 at 1e4 weights or fewer to 0.5 at 1e6 or more;
    - the last hidden layer continues to rise above 1e6 weights, up to 0.7 at
      1e7 or more;
    - the output layer is never dropped.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths from input to output.

    Returns
    -------
    list of float
        ``len(sizes) - 1`` rates, suitable for ``MLP(sizes, dropout=rates)``.

    Notes
    -----
    Guidelines, not results: validate on your data. Sources: Hinton et al.
    (2012, arXiv:1207.0580) drop 20% of inputs and 50% of hidden units;
    Srivastava et al. (2014, JMLR 15, appendix A) recommend retaining 0.8 of
    real-valued inputs and 0.5-0.8 of hidden units, more units when dropping
    more; Krizhevsky et al. (2012) drop 0.5 on AlexNet's 4096-unit layers.
    Ours: scaling with log10 of the incoming weight count (smaller layers
    overfit less and keep more units) and the 0.7 ceiling for a very large last
    hidden layer. Limits: fully connected layers only; tabular inputs with a
    few informative features may need no input dropout; small data sets may
    want more, very large ones less. docs/nn.md has the details.

    Examples
    --------
    >>> from fastdrop.nn import suggest_dropout
    >>> suggest_dropout([784, 1024, 1024, 10])
    [0.2, 0.5, 0.5]
    >>> suggest_dropout([64, 512, 512, 10])
    [0.1, 0.35, 0.45]
    """
    sizes = _check_sizes(sizes)
    rates = [np.interp(np.log10(sizes[0]), [1, 3], [0.0, 0.2])]
    for layer in range(1, len(sizes) - 1):
        weights_in = np.log10(sizes[layer - 1] * sizes[layer])
        if layer == len(sizes) - 2:
            rates.append(np.interp(weights_in, [4, 6, 7], [0.3, 0.5, 0.7]))
        else:
            rates.append(np.interp(weights_in, [4, 6], [0.3, 0.5]))
    return [_nearest_twentieth(rate) for rate in rates]
