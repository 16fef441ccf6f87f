"""fastdrop.nn training: fit, reproducibility, check_descent, MC dropout, `fastdrop train`."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest

import fastdrop
from fastdrop.cli import main
from fastdrop.nn import (
    MLP,
    SGD,
    Adam,
    Dropout,
    Linear,
    ReLU,
    Sequential,
    accuracy,
    check_descent,
    evaluate,
    fit,
    predict,
    predict_mc,
)
from tests.util import require


def blobs(n=240, features=8, classes=3, seed=0):
    """Gaussian clusters: a small classification problem that needs no download."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, features)) * 2
    y = rng.integers(0, classes, n)
    return (centres[y] + rng.standard_normal((n, features))).astype(np.float32), y


def test_fit_on_digits_reaches_95_percent():
    datasets = require("sklearn.datasets", "train")
    digits = datasets.load_digits()
    X, y = digits.data / 16.0, digits.target
    order = np.random.default_rng(0).permutation(len(X))
    train, test = order[:1300], order[1300:]
    model = MLP([64, 128, 10], dropout="auto", seed=0)
    history = fit(model, X[train], y[train], epochs=10, batch_size=32, seed=0,
                  optimizer=Adam(model.parameters(), lr=3e-3), validation_data=(X[test], y[test]))
    assert accuracy(model, X[test], y[test]) >= 0.95
    assert history["validation_accuracy"][-1] == accuracy(model, X[test], y[test])
    assert not model.training  # fit leaves the model in evaluation mode


def test_fit_history_and_reproducibility():
    X, y = blobs()
    runs = []
    for _ in range(2):
        model = MLP([8, 32, 3], dropout=[0.1, 0.5], seed=3)
        history = fit(model, X, y, epochs=3, batch_size=50, seed=11, validation_data=(X, y))
        runs.append((history, model.state_dict()))
    (first, weights), (second, weights_again) = runs
    assert first == second
    assert all(np.array_equal(weights[name], weights_again[name]) for name in weights)
    assert len(first["batch_loss"]) == 3 * 5  # ceil(240 / 50) steps per epoch
    assert set(first) == {"batch_loss", "train_loss", "train_accuracy", "validation_loss",
                          "validation_accuracy"}
    assert first["train_loss"][-1] == pytest.approx(evaluate(model, X, y)[0])
    other = fit(MLP([8, 32, 3], dropout=[0.1, 0.5], seed=3), X, y, epochs=3, batch_size=50,
                seed=12)
    assert other["batch_loss"] != first["batch_loss"]  # another seed: other batches and masks


def test_fit_callback_and_progress_without_terminal():
    X, y = blobs(60)
    seen = []
    fit(MLP([8, 4, 3], seed=0), X, y, epochs=2, progress=None,
        callback=lambda epoch, history: seen.append((epoch, len(history["train_loss"]))))
    assert seen == [(1, 1), (2, 2)]


def test_check_descent_passes_a_sane_learning_rate():
    X, y = blobs()
    model = MLP([8, 32, 3], dropout=0.5, seed=0)
    before = model.state_dict()
    report = check_descent(model, X, y, optimizer=SGD(model.parameters(), lr=0.1), steps=15)
    assert report.ok and report.rising_steps == [] and len(report.losses) == 16
    assert all(later < earlier for earlier, later in zip(report.losses, report.losses[1:]))
    after = model.state_dict()
    assert all(np.array_equal(before[name], after[name]) for name in before)  # restored
    assert model.training and all(parameter.grad is None for parameter in model.parameters())
    assert check_descent(model, X, y).ok  # the default: fit's Adam(lr=1e-3)


@pytest.mark.parametrize("optimizer, lr", [(SGD, 20.0), (Adam, 3.0)])
def test_check_descent_detects_a_too_large_learning_rate(optimizer, lr):
    X, y = blobs()
    model = MLP([8, 32, 3], seed=0)
    report = check_descent(model, X, y, optimizer=optimizer(model.parameters(), lr=lr), steps=15)
    assert not report.ok and report.rising_steps
    for step in report.rising_steps:
        assert not np.isfinite(report.losses[step]) or report.losses[step] > report.losses[step - 1]
    assert "rose at step" in str(report)


def test_fit_runs_check_descent_first():
    X, y = blobs(120)
    model = MLP([8, 16, 3], dropout=0.5, seed=0)
    with pytest.warns(RuntimeWarning, match="check_descent"):
        history = fit(model, X, y, epochs=1, optimizer=SGD(model.parameters(), lr=20.0),
                      check_descent=True)
    assert not history["descent_check"].ok
    sane = MLP([8, 16, 3], dropout=0.5, seed=0)
    assert fit(sane, X, y, epochs=1, check_descent=True)["descent_check"].ok


def test_mc_dropout_mean_approaches_eval_logits_like_one_over_sqrt_samples():
    # Dropout followed only by linear layers: E[MC logits] equals the eval-mode logits exactly.
    model = Sequential(Linear(8, 64, dtype=np.float64, rng=0), ReLU(), Dropout(0.5),
                       Linear(64, 32, dtype=np.float64, rng=1),
                       Linear(32, 4, dtype=np.float64, rng=2))
    model.eval()
    X = blobs(256)[0]
    exact = predict(model, X)
    errors = {}
    for samples, seed in ((100, 1), (1600, 2)):
        model.reseed(seed)
        logits = predict_mc(model, X, samples=samples).logits
        errors[samples] = np.sqrt(np.mean((logits - exact) ** 2))
    assert errors[100] / errors[1600] == pytest.approx(4.0, rel=0.25)  # sqrt(1600 / 100)
    assert not any(module.training for module in model.modules())  # modes restored


def test_predict_mc_outputs():
    X, y = blobs(40)
    model = MLP([8, 32, 3], dropout=[0.2, 0.5], seed=0)
    fit(model, X, y, epochs=2)
    model.reseed(0)
    first = predict_mc(model, X, samples=30, rows_per_pass=100)  # 2.5 samples per pass
    model.reseed(0)
    second = predict_mc(model, X, samples=30, rows_per_pass=100)
    assert np.array_equal(first.probabilities, second.probabilities)  # reproducible by seed
    assert np.allclose(first.probabilities.sum(axis=1), 1.0)
    assert np.all(first.std >= 0) and np.any(first.std > 0)
    for entropy in (first.predictive_entropy, first.expected_entropy):
        assert np.all((entropy >= 0) & (entropy <= np.log(3) + 1e-12))
    assert first.entropy is first.predictive_entropy
    assert np.all((first.variation_ratio >= 0) & (first.variation_ratio <= 2 / 3))
    assert first.samples == 30 and first.sample_probabilities is None
    assert first.logits.shape == (40, 3) and not model.training


# -- fastdrop train ------------------------------------------------------------------------


def run_train(*arguments):
    return main(["train", "--quiet", "--epochs", "2", "--hidden", "16", *map(str, arguments)])


def test_train_on_digits_writes_plot_and_json(tmp_path):
    require("sklearn", "train")
    require("matplotlib", "train")
    plot, metrics = tmp_path / "curves.png", tmp_path / "metrics.json"
    assert run_train("--plot", plot, "--json", metrics, "--check-descent") == 0
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(metrics.read_text())
    assert report["data"]["samples"] == 1797 and report["model"]["sizes"] == [64, 16, 10]
    assert report["command"].startswith("fastdrop train ") and "--epochs 2" in report["command"]
    runs = report["runs"]
    assert runs["without dropout"]["dropout_rates"] == [0.0, 0.0]
    assert runs["with dropout"]["dropout_rates"] == [0.1, 0.3]
    for result in runs.values():
        assert result["gap"] == pytest.approx(result["train_accuracy"] - result["test_accuracy"])
        assert len(result["history"]["test_accuracy"]) == 2
        assert result["descent_check"]["ok"] in (True, False)


def test_train_on_npz_data(tmp_path, capsys):
    X, y = blobs(90)
    path = tmp_path / "blobs.npz"
    np.savez(path, X=X, y=y.astype(np.float64) + 5)  # whole-number float labels are accepted
    metrics = tmp_path / "metrics.json"
    threads = fastdrop.get_num_threads()
    assert run_train("--data", path, "--dropout", "0.2", "--json", metrics, "--threads", 1) == 0
    assert fastdrop.get_num_threads() == threads  # --threads applies to the command only
    report = json.loads(metrics.read_text())
    assert report["data"]["classes"] == [5, 6, 7]
    assert report["data"]["test"] == 27  # 30% of each class, stratified
    assert report["runs"]["with dropout"]["dropout_rates"] == [0.0, 0.2]
    assert report["machine"]["threads"] == 1 and "--threads 1" in report["command"]
    assert "with dropout" in capsys.readouterr().out


def train_error(capsys, *arguments):
    """What `fastdrop train` prints on stderr when it refuses ``arguments`` (exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        run_train(*arguments)
    assert exit_info.value.code == 2
    output = capsys.readouterr()
    assert output.out == ""  # nothing trained
    return output.err


@pytest.mark.parametrize("arrays, message", [
    ({"features": np.ones((4, 2)), "y": np.arange(4)}, "no array named 'X'"),
    ({"X": np.ones(10), "y": np.arange(10)}, "X must be 2-D"),
    ({"X": np.ones((10, 2)), "y": np.arange(9)}, r"one label per sample, shape \(10,\)"),
    ({"X": np.ones((10, 2)), "y": np.linspace(0, 1, 10)}, "labels must be integers"),
    ({"X": np.ones((10, 2)), "y": np.array(list("ababababab"))}, "labels must be integers"),
    ({"X": np.ones((10, 2)), "y": np.zeros(10, int)}, "single class"),
])
def test_train_rejects_bad_data(tmp_path, capsys, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    assert re.search(message, train_error(capsys, "--data", path))


def test_train_rejects_bad_settings(tmp_path, capsys):
    assert "does not exist" in train_error(capsys, "--data", tmp_path / "missing.npz")
    np.save(tmp_path / "single.npy", np.ones(3))
    assert "single array" in train_error(capsys, "--data", tmp_path / "single.npy")
    assert "--dropout" in train_error(capsys, "--dropout", "lots")
    assert "3 rates" in train_error(capsys, "--dropout", "0.1,0.2,0.3")
    assert "--test-size" in train_error(capsys, "--test-size", "1.5")
    assert re.search("folder .* does not exist",
                     train_error(capsys, "--json", tmp_path / "no such folder" / "metrics.json"))


def test_train_error_exit_status_and_stderr(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fastdrop", "train", "--data", str(tmp_path / "missing.npz")],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.startswith("fastdrop train: error:") and "does not exist" in result.stderr
    assert result.stdout == ""
