"""Training and inference: fit, evaluate, predict, Monte Carlo dropout, check_descent."""
import contextlib
import dataclasses
import sys
import warnings

import numpy as np

import fastdrop

from .engine import Tensor, no_grad
from .functional import cross_entropy
from .mc import RowKeys, fixed_matmul_rows
from .optim import Adam
from .uncertainty import RunningSummary, softmax


@contextlib.contextmanager
def _modes(model, training):
    """Put every module in the given mode for the block, then restore each one's mode."""
    before = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield
    finally:
        for module, mode in before:
            module.training = mode


def _features(model, X):
    X = np.asarray(X, dtype=model.dtype)
    if X.ndim != 2:
        raise ValueError(f"X must be a 2-D array (samples, features), got shape {X.shape}")
    return X


def check_labels(y, n):
    """Class labels as int64, shape (n,): integer or bool dtype, or whole-number floats.

    Raises
    ------
    ValueError
        If y does not have shape (n,).
    TypeError
        If a label is not a whole number.
    """
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"y must hold one label per sample, shape ({n},), got shape {y.shape}")
    if y.dtype.kind not in "biu":
        wrong = (~(np.isfinite(y) & (y == np.round(y))) if y.dtype.kind == "f"
                 else np.ones(y.shape, dtype=bool))
        if wrong.any():
            raise TypeError(f"labels must be integers, got dtype {y.dtype} "
                            f"with values such as {y[wrong][:3].tolist()}")
    return y.astype(np.int64)


def predict(model, X, *, batch_size=1024):
    """The model's outputs (logits) in evaluation mode, without recording a graph.

    Parameters
    ----------
    model : Module
    X : array_like, shape (n, features)
    batch_size : int, default 1024
        Rows per forward pass.

    Returns
    -------
    numpy.ndarray, shape (n, outputs)
    """
    X = _features(model, X)
    with no_grad(), _modes(model, False):
        parts = [model(Tensor(X[start:start + batch_size])).data
                 for start in range(0, len(X), batch_size)]
    return np.concatenate(parts) if parts else np.empty((0, 0), dtype=model.dtype)


def evaluate(model, X, y, *, batch_size=1024):
    """Cross-entropy loss and accuracy of the model in evaluation mode (no graph recorded).

    Parameters
    ----------
    model : Module
    X : array_like, shape (n, features)
    y : array_like of int, shape (n,)
    batch_size : int, default 1024

    Returns
    -------
    loss : float
        Mean cross-entropy.
    accuracy : float
        Fraction of samples whose largest logit is the label.
    """
    X = _features(model, X)
    y = check_labels(y, len(X))
    logits = predict(model, X, batch_size=batch_size)
    with no_grad():
        loss = cross_entropy(Tensor(logits), y).item()
    return loss, float(np.mean(np.argmax(logits, axis=1) == y))


def accuracy(model, X, y, *, batch_size=1024):
    """Fraction of samples whose largest logit (evaluation mode) is the label.

    Parameters
    ----------
    model : Module
    X : array_like, shape (n, features)
    y : array_like of int, shape (n,)
    batch_size : int, default 1024

    Returns
    -------
    float
    """
    return evaluate(model, X, y, batch_size=batch_size)[1]


def _progress_bar(iterable, progress):
    """A tqdm bar over iterable, or None: off, no tqdm, or (auto) stderr is not a terminal."""
    if progress is False or (progress is None and not sys.stderr.isatty()):
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(iterable, desc="training", unit="epoch")


def fit(model, X, y, *, epochs=20, batch_size=64, optimizer=None, seed=0, validation_data=None,
        check_descent=False, progress=None, callback=None):
    """Train a classifier with shuffled mini-batch steps on the cross-entropy loss.

    Parameters
    ----------
    model : Module
        Maps (batch, features) to (batch, classes) logits.
    X : array_like, shape (n, features)
        Converted to the model's dtype.
    y : array_like of int, shape (n,)
        Class labels in [0, classes).
    epochs : int, default 20
        Passes over the data.
    batch_size : int, default 64
    optimizer : Optimizer, optional
        Default ``Adam(model.parameters(), lr=1e-3)``.
    seed : int, default 0
        Seeds the shuffling and (through ``model.reseed``) every Dropout layer,
        so the same model, data and seed give the same training run.
    validation_data : (X_val, y_val), optional
        Evaluated after each epoch.
    check_descent : bool, default False
        First run `check_descent` with the optimiser's settings (dropout off,
        full batch, model restored afterwards); its report is stored under
        ``"descent_check"``, and a RuntimeWarning is issued if it fails.
    progress : bool or None, default None
        Progress bar over epochs with tqdm: None shows it when tqdm is
        installed and stderr is a terminal; True whenever tqdm is installed.
    callback : callable, optional
        ``callback(epoch, history)`` after each epoch (epoch counts from 1).

    Returns
    -------
    dict
        ``"batch_loss"``: the loss of every mini-batch step, dropout on (the
        curve that jitters); per epoch, in evaluation mode: ``"train_loss"``,
        ``"train_accuracy"`` and, with validation data, ``"validation_loss"``
        and ``"validation_accuracy"``.

    Raises
    ------
    ValueError
        X is not 2-D or empty, y does not match it, or epochs or batch_size < 1.
    TypeError
        A label is not a whole number.

    Notes
    -----
    The model is left in evaluation mode.
    """
    X = _features(model, X)
    y = check_labels(y, len(X))
    evaluated = {"train": (X, y)}  # data sets scored after each epoch
    if validation_data is not None:
        X_val = _features(model, validation_data[0])
        evaluated["validation"] = (X_val, check_labels(validation_data[1], len(X_val)))
    if epochs < 1 or batch_size < 1 or len(X) == 0:
        raise ValueError(f"fit needs epochs >= 1, batch_size >= 1 and at least one sample, "
                         f"got {epochs}, {batch_size} and {len(X)}")
    optimizer = optimizer if optimizer is not None else Adam(model.parameters(), lr=1e-3)
    history = {"batch_loss": []}
    for name in evaluated:
        history.update({f"{name}_loss": [], f"{name}_accuracy": []})
    if check_descent:
        report = _check_descent(model, X, y, optimizer=optimizer)
        history["descent_check"] = report
        if not report.ok:
            warnings.warn(f"check_descent before training: {report}", RuntimeWarning, stacklevel=2)
    rng = np.random.default_rng(seed)
    model.reseed(seed)
    bar = _progress_bar(range(epochs), progress)
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(len(X))
        for start in range(0, len(X), batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad()
            loss = cross_entropy(model(Tensor(X[batch])), y[batch])
            loss.backward()
            optimizer.step()
            history["batch_loss"].append(loss.item())
        for name, (features, labels) in evaluated.items():
            loss, correct = evaluate(model, features, labels)
            history[f"{name}_loss"].append(loss)
            history[f"{name}_accuracy"].append(correct)
        if bar is not None:
            bar.update()
            bar.set_postfix(loss=f"{history['train_loss'][-1]:.4f}")
        if callback is not None:
            callback(epoch, history)
    if bar is not None:
        bar.close()
    model.eval()
    return history


def _random_layers(model):
    """The modules that draw masks (Dropout, its variants, DropConnectLinear), in `reseed` order."""
    return [module for module in model.modules()
            if isinstance(getattr(module, "generator", None), fastdrop.Generator)]


def _count(value, name, least):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < least:
        raise ValueError(f"{name} must be >= {least}, got {value}")
    return int(value)


def _passes(rows, samples, rows_per_pass):
    """The blocks ``(sample, first_row, rows)`` of each forward pass.

    They are cut from the (sample, row) grid. The grid is read sample by sample, so
    every row meets its samples in order.
    """
    total = rows * samples
    for start in range(0, total, rows_per_pass):
        end = min(start + rows_per_pass, total)
        blocks = []
        for sample in range(start // rows, (end - 1) // rows + 1):
            first = max(start - sample * rows, 0)
            blocks.append((sample, first, min(end - sample * rows, rows) - first))
        yield tuple(blocks)


def predict_mc(model, X, samples=50, *, seed=None, consistent=False, first_row=0,
               rows_per_pass=4096, return_samples=False):
    """Monte Carlo dropout (Gal and Ghahramani 2016): the model's predictions over many masks.

    The model runs ``samples`` times on X with its dropout layers in training
    mode and every other module in evaluation mode (torch-uncertainty's
    ``mc_dropout``), without recording a graph; every module's mode is
    restored afterwards, also on error. The masks are keyed by (sample, row):
    the mask a dropout layer applies to X's row i in sample k depends on the
    layer, k, the row's global index ``first_row + i`` and the seed only, so
    the result is the same, bit for bit, for every ``rows_per_pass`` and
    every way of splitting a data set into calls (see Notes).

    Parameters
    ----------
    model : Module
        Maps (rows, features) to (rows, classes) logits, treating rows
        independently, with at least one dropout layer of rate > 0.
    X : array_like, shape (n, features)
        Converted to the model's dtype.
    samples : int, default 50
        Number of masks (Monte Carlo samples) per row, >= 1.
    seed : int, optional
        Key of the masks: dropout layer l (in `Module.reseed` order) uses the
        key drawn from ``numpy.random.SeedSequence([seed, l])``, the one
        ``model.reseed(seed)`` would give it. None: each layer's own
        ``generator.seed``. No stream is taken from the generators, so the
        same call gives the same masks again.
    consistent : bool, default False
        One mask per sample, shared by every row (Baal's ConsistentDropout)
        instead of one per (sample, row).
    first_row : int, default 0
        Global index of X's first row. ``predict_mc(model, X[a:b], first_row=a)``
        gives exactly rows a to b of ``predict_mc(model, X)``.
    rows_per_pass : int, default 4096
        Rows per forward pass: the (sample, row) grid is read sample by sample
        and cut into passes of this many rows. Larger passes cost fewer Python
        calls and more memory; the result does not depend on it.
    return_samples : bool, default False
        Also return every sample's probabilities, ``(n, classes, samples)``
        float64 (Baal's ``[batch, classes, iterations]`` layout). Without it,
        only running statistics are kept: memory O(n x classes), whatever the
        number of samples.

    Returns
    -------
    MCPrediction
        float64, one row per input: mean probabilities and their standard
        deviation, predictive entropy, expected entropy, mutual information
        (BALD, ``predictive_entropy - expected_entropy``), variation ratio,
        mean logits, ``samples`` and, with ``return_samples``,
        ``sample_probabilities``. Entropies are in nats (natural logarithm).

    Raises
    ------
    ValueError
        The model has no dropout layer or every rate is 0; a dropout layer
        cannot key its masks (a random layer of another kind, or rows not on
        axis 0 of its input); X is not 2-D; samples or rows_per_pass < 1, or
        first_row < 0; the model's output is not (rows, classes).
    TypeError
        samples, rows_per_pass or first_row is not an integer.

    Notes
    -----
    Mask of dropout layer l for X's row i in sample k: key ``s_l`` (see
    ``seed``), stream ``2**63 + k`` (training draws streams from 0 upwards, so
    they never meet), offset ``(first_row + i) * w_l`` in the layer's mask
    elements, ``w_l`` of them per row (the features, or one per channel for
    channel dropout); with ``consistent=True`` offset 0 for every row. A
    `DropConnectLinear` draws one weight mask per sample (stream ``2**63 + k``,
    offset 0) for all rows. Gaussian dropout keys its noise the same way.

    Bit-identical results need more than identical masks: BLAS rounds a row
    of ``x @ W`` differently with the number of rows (a one-row product is a
    matrix-vector product, and a row's place in a block matters too), so inside
    `predict_mc` the engine multiplies in blocks of 64 rows, data row r at place
    r % 64 (`fastdrop.nn.mc.fixed_matmul_rows`). A custom
    module that multiplies NumPy arrays itself, or mixes rows (batch
    statistics), loses the guarantee.

    Examples
    --------
    >>> import numpy as np
    >>> from fastdrop.nn import MLP, predict_mc
    >>> X = np.random.default_rng(0).standard_normal((10, 4))
    >>> model = MLP([4, 16, 3], dropout=0.5, seed=0)
    >>> whole = predict_mc(model, X, samples=20, seed=1)
    >>> part = predict_mc(model, X[6:], samples=20, seed=1, first_row=6, rows_per_pass=7)
    >>> bool(np.array_equal(whole.mutual_information[6:], part.mutual_information))
    True
    """
    samples = _count(samples, "samples", 1)
    rows_per_pass = _count(rows_per_pass, "rows_per_pass", 1)
    first_row = _count(first_row, "first_row", 0)
    X = _features(model, X)
    layers = _random_layers(model)
    if not layers:
        raise ValueError(f"predict_mc needs a model with dropout: {type(model).__name__} has no "
                         "dropout layer (Dropout, its variants or DropConnectLinear)")
    others = [type(layer).__name__ for layer in layers if not hasattr(type(layer), "mask_keys")]
    if others:
        raise ValueError(f"predict_mc cannot key the masks of {', '.join(others)}: only "
                         "fastdrop.nn's dropout layers take mask_keys")
    if all(layer.p == 0 for layer in layers):
        raise ValueError("predict_mc needs dropout: every dropout rate in the model is 0, so all "
                         "samples would be the evaluation-mode prediction")
    keys = [layer.generator.seed if seed is None else
            int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0])
            for index, layer in enumerate(layers)]
    summary = None
    before = [(module, module.training, getattr(module, "mask_keys", None))
              for module in model.modules()]
    try:
        for module, _, _ in before:
            module.training = False
        for layer in layers:
            layer.training = True
        with no_grad():
            for blocks in _passes(len(X), samples, rows_per_pass) if len(X) else [()]:
                global_blocks = tuple((sample, first_row + first, rows)
                                      for sample, first, rows in blocks)
                for layer, key in zip(layers, keys):
                    layer.mask_keys = RowKeys(key, global_blocks, bool(consistent))
                inputs = np.concatenate([X[first:first + rows] for _, first, rows in blocks]
                                        or [X[:0]])
                labels = [np.arange(first, first + rows) for _, first, rows in global_blocks]
                with fixed_matmul_rows(MC_MATMUL_ROWS, np.concatenate(labels or [[]])):
                    logits = model(Tensor(inputs)).data
                if logits.ndim != 2 or len(logits) != len(inputs):
                    raise ValueError(f"predict_mc needs (rows, classes) outputs, got shape "
                                     f"{logits.shape} for {len(inputs)} rows")
                if summary is None:
                    summary = RunningSummary(len(X), logits.shape[1], samples, with_logits=True,
                                             keep_samples=return_samples)
                logits = logits.astype(np.float64)
                probabilities = softmax(logits)
                start = 0
                for sample, first, rows in blocks:
                    part = slice(start, start + rows)
                    summary.add(sample, first, probabilities[part], logits[part])
                    start += rows
    finally:
        for module, mode, mask_keys in before:
            module.training = mode
            if hasattr(type(module), "mask_keys"):
                module.mask_keys = mask_keys
    return summary.result()


MC_MATMUL_ROWS = 64  # rows per BLAS call inside predict_mc: same rounding whatever the pass


@dataclasses.dataclass
class DescentReport:
    """What `check_descent` saw.

    Attributes
    ----------
    losses : list of float
        Full-batch loss before step 1 (index 0) and after each step k.
    rising_steps : list of int
        Steps k after which the loss rose (``losses[k] > losses[k - 1]`` beyond
        the tolerance) or stopped being finite.
    ok : bool
        True when no step raised the loss and the last loss is below the first.
    """

    losses: list
    rising_steps: list
    ok: bool

    def __str__(self):
        if self.ok:
            return (f"loss fell at every one of {len(self.losses) - 1} steps: "
                    f"{self.losses[0]:.4g} -> {self.losses[-1]:.4g}")
        if self.rising_steps:
            return (f"loss rose at step(s) {self.rising_steps} "
                    f"({self.losses[0]:.4g} -> {self.losses[-1]:.4g}); lower the learning rate")
        return f"loss did not fall ({self.losses[0]:.4g} -> {self.losses[-1]:.4g})"


def check_descent(model, X, y, *, optimizer=None, steps=20, rtol=1e-4):
    """Debugging aid: report whether, with dropout off, the full-batch loss falls at every step.

    With dropout on, the training loss jitters from batch to batch, which hides
    a learning rate that is too large. This takes ``steps`` optimiser steps on
    the whole of (X, y) with every module in evaluation mode (Dropout off), so
    the loss is a deterministic function of the weights, and reports each step
    that raised it. The model's parameters, gradients and modes are restored
    afterwards, and ``optimizer`` itself is not stepped.

    Parameters
    ----------
    model : Module
    X : array_like, shape (n, features)
    y : array_like of int, shape (n,)
    optimizer : Optimizer, optional
        The kind and settings to check (a `Optimizer.fresh` copy takes the
        steps). Default ``Adam(model.parameters(), lr=1e-3)``, as in `fit`.
    steps : int, default 20
    rtol : float, default 1e-4
        A step counts as rising if the loss grows by more than ``rtol`` times
        its previous value (room for rounding).

    Returns
    -------
    DescentReport

    Examples
    --------
    >>> import numpy as np
    >>> from fastdrop.nn import MLP, SGD, check_descent
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.standard_normal((64, 4)), rng.integers(0, 3, 64)
    >>> model = MLP([4, 16, 3], seed=0)
    >>> check_descent(model, X, y, optimizer=SGD(model.parameters(), lr=0.05)).ok
    True
    """
    X = _features(model, X)
    y = check_labels(y, len(X))
    parameters = model.parameters()
    stepper = (optimizer.fresh(parameters) if optimizer is not None
               else Adam(parameters, lr=1e-3))
    saved = [(parameter.data.copy(), parameter.grad) for parameter in parameters]
    losses = []
    try:
        with _modes(model, False), np.errstate(over="ignore", invalid="ignore"):
            for step in range(steps + 1):  # a diverging loss is reported, not warned about
                stepper.zero_grad()
                loss = cross_entropy(model(Tensor(X)), y)
                losses.append(loss.item())
                if step == steps or not np.isfinite(losses[-1]):
                    break
                loss.backward()
                stepper.step()
    finally:
        for parameter, (data, grad) in zip(parameters, saved):
            np.copyto(parameter.data, data)
            parameter.grad = grad
    rising = [step for step in range(1, len(losses))
              if not np.isfinite(losses[step]) or losses[step] > losses[step - 1] * (1 + rtol)]
    return DescentReport(losses=losses, rising_steps=rising,
                         ok=not rising and len(losses) == steps + 1 and losses[-1] < losses[0])


_check_descent = check_descent  # fit's keyword argument of the same name hides the function
