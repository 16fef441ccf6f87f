"""Acquisition scores for active learning with Monte Carlo dropout: which rows to label next.

Each score takes either the `MCPrediction` of `fastdrop.nn.predict_mc` or raw
per-sample probabilities laid out ``[rows, classes, samples]`` (Baal's
``predict_on_batch`` layout), and returns one float64 score per row; a higher
score means a row more worth labelling. `select` picks the rows.

- `predictive_entropy`: ``H(mean_k p)``, total uncertainty (Baal's ``Entropy``);
- `bald`: ``H(mean_k p) - mean_k H(p_k)``, the mutual information between
  the label and the weights, high where the thinned networks disagree
  (Houlsby et al. 2011; Gal, Islam and Ghahramani 2017; Baal's ``BALD``);
- `variation_ratio`: ``1 - f / T``, the share of the T samples that do not
  vote for the modal class (Gal et al. 2017).

Entropies are in nats. The formulas are those of `fastdrop.nn.uncertainty`,
which computes them once, in `predict_mc`; from raw samples they are
recomputed with `fastdrop.nn.uncertainty.summarize`.
"""
import numpy as np

from .uncertainty import MCPrediction, summarize


def _summary(prediction):
    return prediction if isinstance(prediction, MCPrediction) else summarize(prediction)


def predictive_entropy(prediction):
    """Entropy of the mean class probabilities, in nats: high for any kind of uncertainty.

    Parameters
    ----------
    prediction : MCPrediction or array_like of shape (rows, classes, samples)

    Returns
    -------
    numpy.ndarray, shape (rows,)
        Between 0 and log(classes).
    """
    return _summary(prediction).predictive_entropy


def bald(prediction):
    """BALD: mutual information between a row's label and the model, in nats.

    ``H(mean_k p) - mean_k H(p_k)``: near 0 where every sample gives the same
    answer (even an unsure one), large where confident samples disagree.

    Parameters
    ----------
    prediction : MCPrediction or array_like of shape (rows, classes, samples)

    Returns
    -------
    numpy.ndarray, shape (rows,)
        Between 0 (to rounding) and log(classes).

    Examples
    --------
    >>> import numpy as np
    >>> from fastdrop.nn.acquisition import bald
    >>> agree = [[0.5, 0.5], [0.5, 0.5]]       # [classes, samples]: unsure, both samples
    >>> disagree = [[1.0, 0.0], [0.0, 1.0]]    # sure, but the two samples differ
    >>> bald(np.array([agree, disagree])).round(4).tolist()
    [0.0, 0.6931]
    """
    return _summary(prediction).mutual_information


def variation_ratio(prediction):
    """Share of the samples that do not vote for the most voted class.

    Parameters
    ----------
    prediction : MCPrediction or array_like of shape (rows, classes, samples)

    Returns
    -------
    numpy.ndarray, shape (rows,)
        In ``[0, 1 - 1/classes]``; 0 when every sample picks the same class.
    """
    return _summary(prediction).variation_ratio


SCORES = {"predictive_entropy": predictive_entropy, "bald": bald,
          "variation_ratio": variation_ratio}


def select(scores, count):
    """Indices of the ``count`` highest scores, highest first (ties: the lower index first).

    Parameters
    ----------
    scores : array_like, shape (rows,)
    count : int
        How many rows to pick, in ``[0, rows]``.

    Returns
    -------
    numpy.ndarray of int64, shape (count,)

    Raises
    ------
    ValueError
        scores is not 1-D or holds NaN, or count is out of range.

    Examples
    --------
    >>> from fastdrop.nn.acquisition import select
    >>> select([0.1, 0.7, 0.3, 0.7], 3).tolist()
    [1, 3, 2]
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 1 or np.isnan(scores).any():
        raise ValueError(f"scores must be a 1-D array without NaN, got shape {scores.shape}")
    if not 0 <= count <= len(scores):
        raise ValueError(f"count must be in [0, {len(scores)}], got {count}")
    return np.argsort(-scores, kind="stable")[:count].astype(np.int64)
