"""Summaries of Monte Carlo predictions, in NumPy alone: mean, spread, entropies, BALD.

This module knows nothing of models or frameworks. It turns per-sample class
probabilities into the statistics of Monte Carlo dropout:

- `RunningSummary` takes one sample at a time for a block of rows (memory
  O(rows x classes), whatever the number of samples) and gives an
  `MCPrediction`; `fastdrop.nn.predict_mc` feeds it, and a model of another
  framework run with dropout on can feed it the same way;
- `summarize` does the same from raw samples laid out ``[rows, classes,
  samples]`` (Baal's layout);
- `softmax` and `entropy` are the two formulas underneath.

Logarithms are natural: entropies and mutual information are in nats. With
``p[i, :, k]`` the class probabilities of row i in sample k (T samples):

- predictive entropy ``H(mean_k p) = -sum_c pbar_c log pbar_c``;
- expected entropy ``mean_k H(p_k)``;
- mutual information (BALD, Houlsby et al. 2011; Gal et al. 2017)
  ``H(mean_k p) - mean_k H(p_k)``, >= 0 by Jensen's inequality (to rounding);
- variation ratio ``1 - f / T``, f the number of samples whose most likely
  class is the most frequent one (Freeman 1965; Gal 2016, section 3.3.1).

Every sum over classes runs in class order and every mean over samples in
sample order, so a row's statistics do not depend on how many other rows are
computed with it: the same samples give the same bits.
"""
import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class MCPrediction:
    """Monte Carlo summary of a classifier's predictions: one row per input, float64 arrays.

    Attributes
    ----------
    probabilities : numpy.ndarray, shape (rows, classes)
        Mean over the samples of the softmax probabilities.
    std : numpy.ndarray, shape (rows, classes)
        Their standard deviation over the samples (population, ddof = 0).
    predictive_entropy : numpy.ndarray, shape (rows,)
        Entropy of the mean probabilities, in nats: total uncertainty.
    expected_entropy : numpy.ndarray, shape (rows,)
        Mean over the samples of each sample's entropy, in nats: the part
        every thinned network shares (aleatoric).
    mutual_information : numpy.ndarray, shape (rows,)
        ``predictive_entropy - expected_entropy``: BALD, the disagreement
        between samples (epistemic), in nats; >= 0 up to rounding.
    variation_ratio : numpy.ndarray, shape (rows,)
        ``1 - f / samples``, f the number of samples that vote for the most
        voted class (each sample votes for its most likely class, the lowest
        index on ties).
    logits : numpy.ndarray of shape (rows, classes), or None
        Mean over the samples of the model's outputs; None when only
        probabilities were given.
    samples : int
        Samples per row.
    sample_probabilities : numpy.ndarray of shape (rows, classes, samples), or None
        The per-sample probabilities in Baal's layout, when they were asked for.
    """

    probabilities: np.ndarray
    std: np.ndarray
    predictive_entropy: np.ndarray
    expected_entropy: np.ndarray
    mutual_information: np.ndarray
    variation_ratio: np.ndarray
    logits: np.ndarray
    samples: int
    sample_probabilities: np.ndarray = None

    @property
    def entropy(self):
        """The predictive entropy (the attribute's name in earlier versions)."""
        return self.predictive_entropy


def _sum_last(values):
    """Sum over the last axis in index order (NumPy's order depends on the array's layout)."""
    total = values[..., 0].copy()
    for index in range(1, values.shape[-1]):
        total += values[..., index]
    return total


def softmax(logits):
    """Class probabilities ``exp(z) / sum(exp(z))`` over the last axis, in float64.

    Parameters
    ----------
    logits : array_like, shape (..., classes)

    Returns
    -------
    numpy.ndarray
        Same shape, float64; each row is shifted by its maximum first, so large
        logits do not overflow.
    """
    logits = np.asarray(logits, dtype=np.float64)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / _sum_last(shifted)[..., None]


def entropy(probabilities, axis=-1):
    """Shannon entropy ``-sum p log p`` along ``axis``, in nats, with ``0 log 0 = 0``.

    Parameters
    ----------
    probabilities : array_like
        Non-negative; each slice along ``axis`` should sum to 1.
    axis : int, default -1
        The classes axis.

    Returns
    -------
    numpy.ndarray
        float64, ``axis`` removed.

    Examples
    --------
    >>> from fastdrop.nn.uncertainty import entropy
    >>> float(entropy([0.5, 0.5]))  # log 2
    0.6931471805599453
    """
    p = np.moveaxis(np.asarray(probabilities, dtype=np.float64), axis, -1)
    positive = p > 0
    return _sum_last(np.where(positive, -p * np.log(np.where(positive, p, 1.0)), 0.0))


class RunningSummary:
    """Statistics of Monte Carlo samples accumulated one sample at a time.

    Holds running means (Welford's update) of the probabilities, their squared
    deviations, the per-sample entropy and the logits, and each class's votes:
    memory O(rows x classes) whatever the number of samples, plus the raw
    samples if ``keep_samples``. Samples of a row must come in order 0, 1, 2,
    ...: that fixes the order of every sum, so the same samples give the same
    bits however the rows were cut into blocks.

    Parameters
    ----------
    rows, classes : int
    samples : int
        Samples each row will get; `result` checks that they all came.
    with_logits : bool, default False
        Every `add` also gives the model's outputs, averaged into
        ``MCPrediction.logits``.
    keep_samples : bool, default False
        Also store every sample's probabilities, ``(rows, classes, samples)``.

    Examples
    --------
    >>> import numpy as np
    >>> from fastdrop.nn.uncertainty import RunningSummary
    >>> summary = RunningSummary(rows=1, classes=2, samples=2)
    >>> summary.add(0, 0, np.array([[1.0, 0.0]]))
    >>> summary.add(1, 0, np.array([[0.0, 1.0]]))
    >>> result = summary.result()  # two confident samples that disagree
    >>> result.probabilities.tolist(), result.mutual_information.tolist()
    ([[0.5, 0.5]], [0.6931471805599453])
    """

    def __init__(self, rows, classes, samples, *, with_logits=False, keep_samples=False):
        rows, classes, samples = int(rows), int(classes), int(samples)
        if rows < 0 or classes < 1 or samples < 1:
            raise ValueError(f"RunningSummary needs rows >= 0, classes >= 1 and samples >= 1, "
                             f"got {rows}, {classes} and {samples}")
        self.rows, self.classes, self.samples = rows, classes, samples
        self.count = np.zeros(rows, dtype=np.int64)
        self.mean = np.zeros((rows, classes))
        self.squared_deviations = np.zeros((rows, classes))
        self.mean_entropy = np.zeros(rows)
        self.mean_logits = np.zeros((rows, classes)) if with_logits else None
        self.votes = np.zeros((rows, classes), dtype=np.int64)
        self.kept = np.empty((rows, classes, samples)) if keep_samples else None

    def add(self, sample, first_row, probabilities, logits=None):
        """Add sample ``sample`` of rows ``first_row ... first_row + len(probabilities) - 1``.

        Parameters
        ----------
        sample : int
            The sample's index, counting from 0; each row must receive its
            samples in order.
        first_row : int
            Index of the block's first row.
        probabilities : array_like, shape (block rows, classes)
            Class probabilities of this sample (rows summing to 1).
        logits : array_like, shape (block rows, classes), optional
            The model's outputs: required with ``with_logits=True``, refused
            without.

        Raises
        ------
        ValueError
            A shape does not match, the rows fall outside ``[0, rows)``, a row
            gets a sample out of order, or logits are missing or unexpected.
        """
        probabilities = np.asarray(probabilities, dtype=np.float64)
        block = len(probabilities)
        rows = slice(first_row, first_row + block)
        if (probabilities.shape != (block, self.classes) or first_row < 0
                or first_row + block > self.rows):
            raise ValueError(f"probabilities must have shape (rows, {self.classes}) for rows in "
                             f"[0, {self.rows}), got shape {probabilities.shape} from row "
                             f"{first_row}")
        if not 0 <= sample < self.samples or np.any(self.count[rows] != sample):
            raise ValueError(f"sample {sample} of rows {first_row}..{first_row + block - 1} "
                             f"out of order: each row takes samples 0, 1, ... "
                             f"{self.samples - 1} in turn")
        if (logits is None) != (self.mean_logits is None):
            raise ValueError("logits are required with with_logits=True and refused without")
        if logits is not None:
            logits = np.asarray(logits, dtype=np.float64)
            if logits.shape != probabilities.shape:
                raise ValueError(f"logits must have the shape of the probabilities, "
                                 f"{probabilities.shape}, got {logits.shape}")
        count = sample + 1  # Welford: identical samples leave every mean exactly unchanged
        deviation = probabilities - self.mean[rows]
        self.mean[rows] += deviation / count
        self.squared_deviations[rows] += deviation * (probabilities - self.mean[rows])
        self.mean_entropy[rows] += (entropy(probabilities) - self.mean_entropy[rows]) / count
        if logits is not None:
            self.mean_logits[rows] += (logits - self.mean_logits[rows]) / count
        self.votes[np.arange(first_row, first_row + block), probabilities.argmax(axis=1)] += 1
        if self.kept is not None:
            self.kept[rows, :, sample] = probabilities
        self.count[rows] = count

    def result(self):
        """The `MCPrediction` of the samples added so far (all of them, for every row).

        Raises
        ------
        ValueError
            Some row has not received all its samples.
        """
        if np.any(self.count != self.samples):
            short = np.flatnonzero(self.count != self.samples)
            raise ValueError(f"{short.size} rows (the first: {short[0]}) have "
                             f"{self.count[short[0]]} of their {self.samples} samples")
        predictive = entropy(self.mean)
        return MCPrediction(
            probabilities=self.mean.copy(),
            std=np.sqrt(self.squared_deviations / self.samples),
            predictive_entropy=predictive,
            expected_entropy=self.mean_entropy.copy(),
            mutual_information=predictive - self.mean_entropy,
            variation_ratio=1.0 - self.votes.max(axis=1) / self.samples,
            logits=None if self.mean_logits is None else self.mean_logits.copy(),
            samples=self.samples,
            sample_probabilities=None if self.kept is None else self.kept.copy())


def check_samples(sample_probabilities):
    """Raw samples as a float64 array ``(rows, classes, samples)``, or ValueError."""
    samples = np.asarray(sample_probabilities, dtype=np.float64)
    if samples.ndim != 3 or samples.shape[1] < 1 or samples.shape[2] < 1:
        raise ValueError(f"sample probabilities must be laid out (rows, classes, samples) with "
                         f"at least one class and one sample, got shape {samples.shape}")
    if not np.all(np.isfinite(samples)) or np.any(samples < 0):
        raise ValueError("sample probabilities must be finite and non-negative")
    return samples


def summarize(sample_probabilities, sample_logits=None):
    """The `MCPrediction` of raw samples: what `predict_mc` returns for them.

    Parameters
    ----------
    sample_probabilities : array_like, shape (rows, classes, samples)
        Baal's layout: ``[i, :, k]`` is row i's class probabilities in sample k.
    sample_logits : array_like, shape (rows, classes, samples), optional
        The matching model outputs, for ``MCPrediction.logits``.

    Returns
    -------
    MCPrediction
        With ``sample_probabilities`` set to the (float64) input.

    Raises
    ------
    ValueError
        Not 3-D, no class or no sample, a negative or non-finite value.
    """
    samples = check_samples(sample_probabilities)
    rows, classes, count = samples.shape
    if sample_logits is not None:
        sample_logits = np.asarray(sample_logits, dtype=np.float64)
        if sample_logits.shape != samples.shape:
            raise ValueError(f"sample_logits must have the shape of the probabilities, "
                             f"{samples.shape}, got {sample_logits.shape}")
    summary = RunningSummary(rows, classes, count, with_logits=sample_logits is not None)
    for sample in range(count):
        summary.add(sample, 0, samples[:, :, sample],
                    None if sample_logits is None else sample_logits[:, :, sample])
    return dataclasses.replace(summary.result(), sample_probabilities=samples)
