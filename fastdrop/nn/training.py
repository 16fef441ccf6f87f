"""Training and inference: fit, evaluate, predict, Monte Carlo dropout, check_descent."""
import collections
import contextlib
import dataclasses
import sys
import warnings

import numpy as np

from .engine import Tensor, cross_entropy, no_grad
from .optim import Adam


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


MCPrediction = collections.namedtuple("MCPrediction", "probabilities std entropy logits")
MCPrediction.__doc__ = """Result of `predict_mc`, arrays of float64 with one row per input.

probabilities : (n, classes) mean of the softmax probabilities over the masks
std : (n, classes) their standard deviation over the masks
entropy : (n,) predictive entropy of the mean probabilities, in nats
logits : (n, classes) mean of the raw outputs over the masks
"""


def predict_mc(model, X, samples=50, *, rows_per_pass=4096):
    """Monte Carlo dropout: average the model over many dropout masks (Gal and Ghahramani 2016).

    Dropout stays on (every module is in training mode) while the model runs
    ``samples`` times on X; no graph is recorded. Masks come from the model's
    Dropout generators: call ``model.reseed(s)`` first for a reproducible
    result (the masks also depend on ``rows_per_pass``, which decides how the
    samples are stacked).

    Parameters
    ----------
    model : Module
    X : array_like, shape (n, features)
    samples : int, default 50
        Number of dropout masks per input.
    rows_per_pass : int, default 4096
        Several samples run in one forward pass on a stacked copy of X, up to
        this many rows; every row gets its own mask.

    Returns
    -------
    MCPrediction
        ``(probabilities, std, entropy, logits)``: the mean class
        probabilities, their spread (std and predictive entropy) and the mean logits.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    X = _features(model, X)
    n = len(X)
    per_pass = max(1, rows_per_pass // max(n, 1))
    sums = {"logits": 0.0, "probabilities": 0.0, "squares": 0.0}
    done = 0
    with no_grad(), _modes(model, True):
        while done < samples:
            copies = min(per_pass, samples - done)
            logits = model(Tensor(np.tile(X, (copies, 1)))).data.astype(np.float64)
            probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
            probabilities /= probabilities.sum(axis=1, keepdims=True)
            sums["logits"] = sums["logits"] + logits.reshape(copies, n, -1).sum(axis=0)
            probabilities = probabilities.reshape(copies, n, -1)
            sums["probabilities"] = sums["probabilities"] + probabilities.sum(axis=0)
            sums["squares"] = sums["squares"] + (probabilities * probabilities).sum(axis=0)
            done += copies
    mean = sums["probabilities"] / samples
    std = np.sqrt(np.maximum(sums["squares"] / samples - mean * mean, 0.0))
    entropy = -np.sum(mean * np.log(np.where(mean > 0, mean, 1.0)), axis=1)
    return MCPrediction(mean, std, entropy, sums["logits"] / samples)


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
    """Debugging aid: with dropout off, does the full-batch loss fall at every step?

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
