"""The multi-layer perceptron and `suggest_dropout`, the rule for its drop rates."""
import numpy as np

from .._internal import check_p
from .dropout_layers import Dropout
from .modules import Linear, ReLU, Sequential, Tanh

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
