"""Monte Carlo dropout: keyed masks, modes, errors, the summary maths, acquisition scores.

The property users rely on first: `predict_mc`'s result does not depend on how the
work is cut (rows per pass, calls over parts of a data set), bit for bit.
"""
import dataclasses
import gc
import tracemalloc

import numpy as np
import pytest

import fastdrop
import fastdrop.nn as nn
from fastdrop.nn import acquisition, predict_mc, uncertainty
from fastdrop.nn.mc import MC_STREAM_BASE

FIELDS = [field.name for field in dataclasses.fields(nn.MCPrediction)]


def data(rows=23, features=12, seed=0):
    return np.random.default_rng(seed).standard_normal((rows, features)).astype(np.float32)


class Reshape(nn.Module):
    """Rows stay on axis 0; the rest is reshaped (for channel and variational dropout)."""

    def __init__(self, *shape):
        self.shape = shape

    def forward(self, x):
        x = nn.as_tensor(x)
        return x.reshape(x.shape[0], *self.shape)


class SumOverTime(nn.Module):
    def forward(self, x):
        return x.sum(axis=1)


def models():
    """Models covering every kind of random layer predict_mc keys."""
    return {
        "mlp float32": nn.MLP([12, 32, 32, 4], dropout=[0.2, 0.5, 0.5], seed=0),
        "mlp float64 tanh": nn.MLP([12, 16, 4], dropout=0.3, activation="tanh",
                                   dtype=np.float64, seed=1),
        "gaussian, dropconnect, alpha": nn.Sequential(
            nn.Linear(12, 32, rng=0), nn.ReLU(), nn.GaussianDropout(0.3),
            nn.DropConnectLinear(32, 16, 0.4, rng=1), nn.Tanh(), nn.AlphaDropout(0.2),
            nn.Linear(16, 4, rng=2)),
        "channel, variational": nn.Sequential(
            Reshape(3, 4), nn.Dropout1d(0.3), nn.ChannelDropout(0.2, channel_axis=-1),
            nn.VariationalDropout(0.4), nn.FeatureAlphaDropout(0.1), Reshape(12),
            nn.Linear(12, 4, rng=3)),
    }


def assert_same(first, second):
    for name in FIELDS:
        a, b = getattr(first, name), getattr(second, name)
        if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
            assert a.shape == b.shape and a.tobytes() == b.tobytes(), name
        else:
            assert a == b, name


def concatenate(parts):
    """One MCPrediction from row-wise parts (for comparing split calls with one call)."""
    fields = {}
    for name in FIELDS:
        values = [getattr(part, name) for part in parts]
        fields[name] = (np.concatenate(values) if isinstance(values[0], np.ndarray)
                        else values[0])
    return nn.MCPrediction(**fields)


# -- the result does not depend on how the work is cut -------------------------------------


@pytest.mark.parametrize("consistent", [False, True])
@pytest.mark.parametrize("name", sorted(models()))
def test_bit_identical_for_every_rows_per_pass_and_split(name, consistent):
    model, X = models()[name], data()
    run = dict(samples=5, seed=7, consistent=consistent, return_samples=True)
    reference = predict_mc(model, X, rows_per_pass=len(X), **run)
    for rows_per_pass in (1, 7, 4096):
        assert_same(predict_mc(model, X, rows_per_pass=rows_per_pass, **run), reference)
    cuts = [0, 5, 16, len(X)]  # three calls of 5, 11 and 7 rows
    parts = [predict_mc(model, X[a:b], first_row=a, rows_per_pass=6, **run)
             for a, b in zip(cuts, cuts[1:])]
    assert_same(concatenate(parts), reference)
    assert np.any(reference.std > 0)  # the masks do vary


def test_masks_are_the_documented_keys():
    # A model that is only a Dropout layer: its mean "logits" over one sample are the dropped X.
    p, features, first_row, seed = 0.5, 16, 1000, 3
    model = nn.Sequential(nn.Dropout(p))
    X = np.ones((9, features), np.float32)
    key = int(np.random.SeedSequence([seed, 0]).generate_state(1, np.uint64)[0])
    one_row = np.tile(fastdrop.dropout(X[:1], p, seed=key, stream=MC_STREAM_BASE)[0],
                      (len(X), 1))  # one row's mask at offset 0, for every row
    own_rows = fastdrop.dropout(X, p, seed=key, stream=MC_STREAM_BASE,
                                offset=first_row * features)[0]
    shares_rows = nn.Sequential(nn.Dropout(p, broadcast_dims=0))  # shares a mask in training too
    for consistent, rows_per_pass in [(False, 1), (False, 4), (True, 1), (True, 4)]:
        run = dict(samples=1, seed=seed, first_row=first_row, consistent=consistent,
                   rows_per_pass=rows_per_pass)
        got = predict_mc(model, X, **run).logits
        assert np.array_equal(got, one_row if consistent else own_rows)
        assert np.array_equal(predict_mc(shares_rows, X, **run).logits, one_row)


def test_seed_argument_is_reseed_and_no_stream_is_taken():
    model, X = models()["mlp float32"], data()
    given = predict_mc(model, X, samples=4, seed=11)
    model.reseed(11)
    states = [layer.generator.state for layer in model if isinstance(layer, nn.Dropout)]
    assert_same(predict_mc(model, X, samples=4), given)
    assert_same(predict_mc(model, X, samples=4), given)  # a pure function: same call, same masks
    assert states == [layer.generator.state for layer in model if isinstance(layer, nn.Dropout)]
    assert not np.array_equal(predict_mc(model, X, samples=4, seed=12).probabilities,
                              given.probabilities)


def row_spread(sample_probabilities):
    """The largest difference of any row's samples from row 0's."""
    return np.abs(sample_probabilities - sample_probabilities[:1]).max()


def test_consistent_masks_are_shared_by_every_row():
    # equal rows get equal results up to BLAS rounding, which depends on a row's place in
    # its block (fixed_matmul_rows); masks of their own make them differ by far more
    X = np.tile(data(1), (10, 1))  # ten equal rows
    for name, model in models().items():
        shared = predict_mc(model, X, samples=4, seed=0, consistent=True, return_samples=True)
        assert row_spread(shared.sample_probabilities) < 1e-5, name
        moved = predict_mc(model, X, samples=4, seed=0, consistent=True, first_row=640)
        assert np.array_equal(moved.probabilities, shared.probabilities), name
        own = predict_mc(model, X, samples=4, seed=0, return_samples=True).sample_probabilities
        assert row_spread(own) > 1e-2, name  # without it, rows get masks of their own
    # DropConnect draws one weight mask per sample, for all its rows, consistent or not
    dropconnect = nn.Sequential(nn.DropConnectLinear(12, 16, 0.5, rng=0), nn.ReLU(),
                                nn.Linear(16, 3, rng=1))
    own = predict_mc(dropconnect, X, samples=4, seed=0, return_samples=True).sample_probabilities
    assert row_spread(own) < 1e-5 and np.abs(own - own[:, :, :1]).max() > 1e-2


def test_variational_steps_get_the_whole_sequence_mask():
    class StepByStep(nn.Module):
        def __init__(self, drop):
            self.drop = drop

        def named_children(self):
            return [("drop", self.drop)]

        def forward(self, x):
            self.drop.start_sequence()
            total = self.drop.step(x[:, 0])
            for t in range(1, x.shape[1]):
                total = total + self.drop.step(x[:, t])
            return total

    readout = nn.Linear(4, 3, rng=0)
    whole = nn.Sequential(Reshape(3, 4), nn.VariationalDropout(0.5), SumOverTime(), readout)
    steps = nn.Sequential(Reshape(3, 4), StepByStep(nn.VariationalDropout(0.5)), readout)
    X = data()
    first = predict_mc(whole, X, samples=6, seed=2)
    second = predict_mc(steps, X, samples=6, seed=2)
    np.testing.assert_allclose(second.logits, first.logits, rtol=1e-5, atol=1e-6)
    assert steps[1].drop.generator.state["stream"] == 0  # start_sequence took no stream


# -- modes and errors ----------------------------------------------------------------------


class ModeProbe(nn.Module):
    """Records its own mode at each call, as a normalisation layer would use it."""

    def __init__(self, fail=False):
        self.seen, self.fail = [], fail

    def forward(self, x):
        self.seen.append(self.training)
        if self.fail:
            raise RuntimeError("probe failed")
        return x


@pytest.mark.parametrize("training", [False, True])
def test_only_dropout_layers_train_and_modes_are_restored(training):
    probe = ModeProbe()
    drop = nn.Dropout(0.5)
    model = nn.Sequential(nn.Linear(12, 8, rng=0), probe, drop, nn.Linear(8, 3, rng=1))
    model.train(training)
    drop.training = not training  # a mixed state to restore
    before = [module.training for module in model.modules()]
    predict_mc(model, data(), samples=3, rows_per_pass=30)
    assert probe.seen == [False, False, False]  # 69 rows, 30 per pass: 3 passes, all in eval
    assert [module.training for module in model.modules()] == before
    assert drop.mask_keys is None


def test_modes_and_keys_are_restored_after_an_error():
    probe = ModeProbe(fail=True)
    drop = nn.Dropout(0.5)
    model = nn.Sequential(drop, probe, nn.Linear(12, 3, rng=0))
    with pytest.raises(RuntimeError, match="probe failed"):
        predict_mc(model, data(), samples=2)
    assert all(module.training for module in model.modules()) and drop.mask_keys is None
    x = np.ones((4, 12), np.float32)
    assert np.array_equal(drop(x).data, fastdrop.dropout(x, 0.5, seed=drop.generator.seed,
                                                         stream=0)[0])  # training as before


class OtherRandomLayer(nn.Module):
    def __init__(self):
        self.generator, self.p = fastdrop.Generator(0), 0.5

    def forward(self, x):
        return x


@pytest.mark.parametrize("model, arguments, error, message", [
    (nn.MLP([12, 8, 3], seed=0), {}, ValueError, "no dropout layer"),
    (nn.Sequential(nn.Dropout(0.0), nn.Linear(12, 3, rng=0), nn.GaussianDropout(0.0)), {},
     ValueError, "every dropout rate in the model is 0"),
    (nn.Sequential(OtherRandomLayer(), nn.Linear(12, 3, rng=0)), {}, ValueError,
     "cannot key the masks of OtherRandomLayer"),
    (nn.Sequential(Reshape(3, 4), nn.VariationalDropout(0.5, batch_first=False), Reshape(12),
                   nn.Linear(12, 3, rng=0)), {}, ValueError, "rows of X on axis 0"),
    (nn.MLP([12, 8, 3], dropout=0.5, seed=0), {"samples": 0}, ValueError, "samples must be >= 1"),
    (nn.MLP([12, 8, 3], dropout=0.5, seed=0), {"samples": 2.0}, TypeError, "samples must be an"),
    (nn.MLP([12, 8, 3], dropout=0.5, seed=0), {"rows_per_pass": 0}, ValueError, "rows_per_pass"),
    (nn.MLP([12, 8, 3], dropout=0.5, seed=0), {"first_row": -1}, ValueError, "first_row"),
])
def test_predict_mc_errors(model, arguments, error, message):
    with pytest.raises(error, match=message):
        predict_mc(model, data(), **arguments)
    assert all(module.training for module in model.modules())


def test_empty_input():
    result = predict_mc(nn.MLP([12, 8, 3], dropout=0.5, seed=0), data(0), samples=3,
                        return_samples=True)
    assert result.probabilities.shape == (0, 3) and result.mutual_information.shape == (0,)
    assert result.sample_probabilities.shape == (0, 3, 3)


# -- the summary maths ---------------------------------------------------------------------


def xlogx(p):
    return np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0.0)


def test_statistics_match_a_direct_numpy_computation():
    model, X = models()["mlp float64 tanh"], data(200)
    result = predict_mc(model, X, samples=40, seed=0, return_samples=True)
    samples = result.sample_probabilities  # [rows, classes, samples]
    assert samples.shape == (200, 4, 40) and samples.dtype == np.float64
    mean = samples.mean(axis=2)
    predictive = -xlogx(mean).sum(axis=1)
    expected = -xlogx(samples).sum(axis=1).mean(axis=1)
    np.testing.assert_allclose(result.probabilities, mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.std, samples.std(axis=2), rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.predictive_entropy, predictive, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.expected_entropy, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.mutual_information, predictive - expected, rtol=0,
                               atol=1e-12)
    votes = np.stack([(samples.argmax(axis=1) == c).sum(axis=1) for c in range(4)], axis=1)
    np.testing.assert_array_equal(result.variation_ratio, 1 - votes.max(axis=1) / 40)
    assert np.ptp(result.mutual_information) > 0.01  # a spread of values was checked
    # the raw samples summarised again give the same record, bit for bit
    again = uncertainty.summarize(samples)
    for name in ("probabilities", "std", "predictive_entropy", "expected_entropy",
                 "mutual_information", "variation_ratio"):
        assert np.array_equal(getattr(again, name), getattr(result, name)), name


# Baal's definition (baal.active.heuristics.BALD) on [batch, classes, iterations] arrays
def baal_bald(predictions):
    expected_entropy = -np.mean(np.sum(xlogx(predictions), axis=1), axis=-1)
    expected_p = np.mean(predictions, axis=-1)
    return -np.sum(xlogx(expected_p), axis=1) - expected_entropy


# Two classes, two samples per row, laid out [rows, classes, samples]:
HAND_MADE = np.array([
    [[0.9, 0.1], [0.1, 0.9]],  # confident samples that disagree: mean (0.5, 0.5)
    [[0.5, 0.5], [0.5, 0.5]],  # unsure and agreeing
    [[1.0, 1.0], [0.0, 0.0]],  # certain and agreeing
    [[0.8, 0.6], [0.2, 0.4]],  # both vote class 0
])
# By hand: H(0.5, 0.5) = ln 2 = 0.6931472; H(0.9, 0.1) = 0.3250830; H(0.8, 0.2) = 0.5004024;
# H(0.6, 0.4) = 0.6730117; H(0.7, 0.3) = 0.6108643.
HAND_PREDICTIVE = [0.6931472, 0.6931472, 0.0, 0.6108643]
HAND_EXPECTED = [0.3250830, 0.6931472, 0.0, (0.5004024 + 0.6730117) / 2]
HAND_BALD = [0.3680642, 0.0, 0.0, 0.6108643 - 0.5867071]
HAND_VARIATION_RATIO = [0.5, 0.0, 0.0, 0.0]  # row 1: ties vote for class 0


def test_hand_made_two_class_example():
    result = uncertainty.summarize(HAND_MADE)
    np.testing.assert_allclose(result.predictive_entropy, HAND_PREDICTIVE, atol=1e-7)
    np.testing.assert_allclose(result.expected_entropy, HAND_EXPECTED, atol=1e-7)
    np.testing.assert_allclose(result.mutual_information, HAND_BALD, atol=1e-7)
    np.testing.assert_allclose(result.mutual_information, baal_bald(HAND_MADE), atol=1e-15)
    np.testing.assert_array_equal(result.variation_ratio, HAND_VARIATION_RATIO)
    np.testing.assert_allclose(result.std, [[0.4, 0.4], [0, 0], [0, 0], [0.1, 0.1]], atol=1e-15)


def test_acquisition_scores_by_hand_and_from_either_input():
    np.testing.assert_allclose(acquisition.bald(HAND_MADE), HAND_BALD, atol=1e-7)
    np.testing.assert_allclose(acquisition.predictive_entropy(HAND_MADE), HAND_PREDICTIVE,
                               atol=1e-7)
    np.testing.assert_array_equal(acquisition.variation_ratio(HAND_MADE), HAND_VARIATION_RATIO)
    three = np.zeros((1, 3, 4))  # four samples vote 0, 0, 1, 2: variation ratio 1 - 2/4
    three[0, [0, 0, 1, 2], [0, 1, 2, 3]] = 1
    assert acquisition.variation_ratio(three).tolist() == [0.5]
    assert acquisition.bald(three)[0] == pytest.approx(-(0.5 * np.log(0.5) + 0.5 * np.log(0.25)))
    result = predict_mc(models()["mlp float32"], data(), samples=6, seed=0, return_samples=True)
    for name, score in acquisition.SCORES.items():
        assert np.array_equal(score(result), score(result.sample_probabilities)), name
    assert acquisition.select(acquisition.bald(HAND_MADE), 2).tolist() == [0, 3]


def test_select_orders_and_checks():
    assert acquisition.select([0.1, 0.7, 0.3, 0.7], 4).tolist() == [1, 3, 2, 0]
    assert acquisition.select([0.1, 0.7], 0).tolist() == []
    with pytest.raises(ValueError, match="count"):
        acquisition.select([0.1, 0.7], 3)
    with pytest.raises(ValueError, match="NaN"):
        acquisition.select([0.1, np.nan], 1)


def test_mutual_information_is_non_negative_and_zero_without_real_dropout():
    for name, model in models().items():
        result = predict_mc(model, data(300, seed=1), samples=30, seed=4)
        assert result.mutual_information.min() >= -1e-12, name
        assert result.mutual_information.max() > 1e-4, name
    tiny = nn.Sequential(nn.Linear(12, 32, rng=0), nn.ReLU(), nn.Dropout(1e-12),
                         nn.DropConnectLinear(32, 16, 1e-12, rng=1), nn.ReLU(),
                         nn.AlphaDropout(1e-12), nn.Linear(16, 4, rng=2))
    result = predict_mc(tiny, data(300), samples=30, seed=4)
    assert np.all(result.mutual_information == 0)  # nothing dropped, identical samples: exactly 0
    assert np.all(result.std == 0) and np.all(result.variation_ratio == 0)
    assert np.all(result.predictive_entropy > 0.01)  # not zero because nothing is uncertain
    # Gaussian dropout at p = 1e-12 still multiplies by noise of std 1e-6: MI of order 1e-13
    gaussian = nn.Sequential(nn.Linear(12, 32, rng=0), nn.ReLU(), nn.GaussianDropout(1e-12),
                             nn.Linear(32, 4, rng=2))
    information = predict_mc(gaussian, data(300), samples=30, seed=4).mutual_information
    assert information.min() >= -1e-15 and information.max() < 1e-11


def test_running_summary_checks_its_input():
    summary = uncertainty.RunningSummary(rows=3, classes=2, samples=2)
    with pytest.raises(ValueError, match="out of order"):
        summary.add(1, 0, np.full((3, 2), 0.5))
    summary.add(0, 0, np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="have 1 of their 2 samples"):
        summary.result()
    with pytest.raises(ValueError, match="shape"):
        summary.add(0, 2, np.full((2, 2), 0.5))  # rows 2 and 3: past the end
    with pytest.raises(ValueError, match="logits"):
        summary.add(0, 2, np.full((1, 2), 0.5), logits=np.zeros((1, 2)))
    with pytest.raises(ValueError, match="laid out"):
        uncertainty.summarize(np.full((3, 2), 0.5))


def test_memory_is_bounded_without_raw_samples():
    model, X = models()["mlp float32"], data(200)

    def peak(**arguments):
        gc.collect()
        tracemalloc.start()
        try:
            predict_mc(model, X, seed=0, rows_per_pass=256, **arguments)
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    raw_size = 200 * 4 * 1000 * 8  # bytes of the raw samples: rows x classes x samples
    few, many = peak(samples=20), peak(samples=1000)
    assert many < few + raw_size / 8  # running statistics: memory does not grow with samples
    assert peak(samples=1000, return_samples=True) > many + 0.9 * raw_size
