"""The examples of the Concepts pages run (small settings) and show what they claim.

Each example checks its own property when it runs; these tests check the same
properties again from the returned numbers, with the tolerances stated here, some
against quantities recomputed independently of the example's code. One test per
example, a test that no example goes untested, and tests that the checks can fail.
"""
import copy
import functools
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastdrop
from fastdrop.nn import suggest_dropout
from tests.util import require

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
# Subprocesses import the same fastdrop as this test run.
PACKAGE_ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(Path(fastdrop.__file__).parent.parent), os.environ.get("PYTHONPATH", "")]))
USES_DIGITS = {"where_and_how_much", "cost_jitter", "ensemble_view", "when_not_to_use"}
NEEDS = {"dask_zarr_noise": ("fastdrop.dask", "zarr")}  # the dask extra


def load(name):
    """Import ``examples/<name>.py`` (the folder is not a package)."""
    if str(EXAMPLES) not in sys.path:  # the examples import examples/example_command.py
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@functools.cache
def _quick_run(name):
    module = load(name)  # BLAS on one thread: tests/conftest.py
    return module, module.main(["--quick"])


def quick_run(name):
    """(module, result) of ``main(["--quick"])``, run once per test session."""
    if name in USES_DIGITS:
        require("sklearn", "train")  # the digits examples
    for module in NEEDS.get(name, ()):
        require(module, "dask")
    module, result = _quick_run(name)
    return module, copy.deepcopy(result)


def test_inverted_dropout_keeps_the_mean_and_is_off_at_test_time():
    _, result = quick_run("inverted_dropout")
    x, masks = np.array(result["x"]), result["masks"]
    assert [run["p"] for run in result["runs"]] == [0.1, 0.5, 0.9]
    for run in result["runs"]:
        p = run["p"]
        # standard error of the mean of K draws of x * mask / (1 - p): |x| sqrt(p / ((1 - p) K))
        standard_error = np.abs(x) * np.sqrt(p / ((1 - p) * masks))
        assert np.all(np.abs(np.array(run["mean"]) - x) < 5 * standard_error)
        # without the 1 / (1 - p) the mean is (1 - p) x: far outside those errors for every p
        assert np.all(np.abs(np.array(run["unscaled_mean_over_x"]) * x - x) > 20 * standard_error)
        assert abs(run["kept_fraction"] - (1 - p)) < 5 * np.sqrt(p * (1 - p) / result["elements"])
        assert run["kept_values_exact"]
        assert run["evaluation_returns_input"]


def test_adaptive_l2_sgd_lands_on_the_penalised_minimiser():
    module, result = quick_run("adaptive_l2")
    X, y = module.make_problem(result["rows"], result["seed"])
    p = result["p"]
    gram = X.T @ X  # recomputed here: w* = (X^T X + p/(1-p) diag(X^T X))^-1 X^T y
    w_star = np.linalg.solve(gram + p / (1 - p) * np.diag(np.diag(gram)), X.T @ y)
    w_ls = np.linalg.lstsq(X, y, rcond=None)[0]
    w_sgd = np.array(result["w_sgd"])
    np.testing.assert_allclose(result["w_star"], w_star, rtol=1e-10)
    gap = np.linalg.norm(w_star - w_ls)
    assert gap > 3  # the problem separates the two answers clearly
    assert np.linalg.norm(w_sgd - w_star) < 0.1 * gap
    assert np.linalg.norm(w_sgd - w_star) < np.linalg.norm(w_sgd - w_ls)
    # the identity E||y - X~w||^2 = ||y - Xw||^2 + p/(1-p) sum w_j^2 ||X_j||^2, within 4 s.e.
    formula = (np.sum((y - X @ w_ls) ** 2)
               + p / (1 - p) * np.sum(w_ls ** 2 * np.sum(X ** 2, axis=0)))
    difference = abs(result["expected_loss_monte_carlo"] - formula)
    assert difference < 4 * result["expected_loss_standard_error"]


def test_weight_spreading_input_dropout_moves_weight_off_the_strong_input():
    module, result = quick_run("weight_spreading")
    X, y = module.make_inputs(result["rows"], result["seed"])
    runs = {run["p"]: run for run in result["runs"]}

    def share(weights):  # the measure: |w1| / sum |w_j|
        return abs(weights[0]) / np.sum(np.abs(weights))

    without, with_half = share(runs[0.0]["weights"]), share(runs[0.5]["weights"])
    assert without > 0.7  # least squares leans on the strong input
    assert with_half < without - 0.2  # p = 0.5 spreads the load (theory: about 0.8 -> 0.45)
    assert with_half > 0.3  # but x1 keeps the largest share: it is still the best input
    for p, run in runs.items():
        gram = X.T @ X
        theory = np.linalg.solve(gram + p / (1 - p) * np.diag(np.diag(gram)), X.T @ y)
        assert abs(share(run["weights"]) - share(theory)) < 0.03


def test_cost_jitter_falls_monotonically_without_dropout_and_jitters_with_it():
    _, result = quick_run("cost_jitter")
    steps = result["steps"]
    assert len(result["dropout_off"]) == len(result["dropout_on"]) == steps
    assert np.all(np.diff(result["dropout_off"]) < 0)  # full-batch GD, small step: J falls
    assert result["check_good"]["ok"] and result["check_good"]["rising_steps"] == []
    assert np.sum(np.diff(result["dropout_on"]) > 0) >= 0.1 * steps  # through a new mask each step
    assert result["dropout_on_evaluation"][-1] < 0.5 * result["dropout_on_evaluation"][0]  # learns
    assert not result["check_too_large"]["ok"] and result["check_too_large"]["rising_steps"]


def test_ensemble_view_mc_mean_converges_to_evaluation_mode():
    _, result = quick_run("ensemble_view")
    counts = np.array(result["sample_counts"])
    last = result["last_layer"]
    measured, predicted = np.array(last["logit_error"]), np.array(last["predicted_logit_error"])
    # dropout feeds only the last Linear: MC mean logits -> eval logits, error ~ 1/sqrt(K)
    np.testing.assert_allclose(predicted * np.sqrt(counts), predicted[0], rtol=1e-9)
    assert np.all(np.abs(measured ** 2 - predicted ** 2)
                  < 4 * np.array(last["squared_error_standard_error"]))
    assert measured[-1] < measured[0] / 10  # K = 256 vs K = 1: 16x less in theory
    slope = np.polyfit(np.log(counts), np.log(measured), 1)[0]
    assert abs(slope + 0.5) < 0.05
    whole = result["whole_network"]
    errors = dict(zip(counts.tolist(), whole["logit_error"]))
    ratio = errors[256] / errors[16]
    assert ratio > 0.35  # noise alone: 0.25; a bias remains before a nonlinearity
    accuracies = dict(zip(counts.tolist(), whole["mc_accuracy"]))
    assert abs(accuracies[64] - whole["evaluation_accuracy"]) <= 0.03
    uncertainty = result["uncertainty"]
    assert np.mean(uncertainty["entropy_blended"]) > 1.2 * np.mean(uncertainty["entropy_clean"])
    assert uncertainty["auc_blended_vs_clean"] > 0.75


def test_ensemble_view_bald_flags_noise_and_active_learning_runs():
    _, result = quick_run("ensemble_view")
    uncertainty = result["uncertainty"]
    bald = {name: np.array(uncertainty[f"bald_{name}"]) for name in ("clean", "blended", "noise")}
    for values in bald.values():
        assert values.min() >= -1e-12  # mutual information, up to rounding

    def auc(higher, lower):  # recomputed: the share of pairs ranked the right way
        order = np.argsort(np.concatenate([lower, higher]), kind="stable")
        ranks = np.empty(len(order))
        ranks[order] = np.arange(1, len(order) + 1)
        return (ranks[len(lower):].sum() - len(higher) * (len(higher) + 1) / 2) / (
            len(higher) * len(lower))

    assert auc(bald["noise"], bald["clean"]) == pytest.approx(
        uncertainty["auc_bald_noise_vs_clean"], abs=0.01)  # ties aside
    assert uncertainty["auc_bald_noise_vs_clean"] > 0.9
    assert bald["noise"].mean() > 2 * bald["clean"].mean()
    # the networks are each sure of themselves on noise: low expected entropy, high BALD
    assert uncertainty["mean_expected_entropy_noise"] < uncertainty["mean_expected_entropy_clean"]
    learning = result["active_learning"]
    settings = learning["settings"]
    assert learning["labels"] == [20 + 20 * index for index in range(settings["rounds"] + 1)]
    by_bald, at_random = (np.array(learning[name]["accuracy"]) for name in ("bald", "random"))
    assert by_bald.shape == at_random.shape == (settings["seeds"], settings["rounds"] + 1)
    assert settings["seeds"] >= 2
    assert np.array_equal(by_bald[:, 0], at_random[:, 0])  # same first set, same seeds
    np.testing.assert_allclose(learning["mean_gain_per_seed"],
                               (by_bald[:, 1:] - at_random[:, 1:]).mean(axis=1), rtol=1e-12)
    for runs in (by_bald, at_random):
        assert runs.mean(axis=0)[-1] > runs.mean(axis=0)[0] + 0.03  # more labels, better
    chosen = np.array(learning["bald"]["acquired_bald"])
    assert np.all(chosen.mean(axis=0) > np.array(learning["random"]["acquired_bald"]).mean(axis=0))


def test_where_and_how_much_rule_and_heavy_input_dropout():
    _, result = quick_run("where_and_how_much")
    rule = result["rates"]["suggest_dropout"]
    assert rule == suggest_dropout(result["sizes"])
    assert rule[0] < min(rule[1:]) and rule[-1] >= max(rule[1:])
    mean = result["mean"]
    for name, scores in mean.items():
        assert 0.5 < scores["test_accuracy"] <= 1.0, name
    # dropping half of the 64 pixels costs accuracy: 0.15 measured here, 0.02 with 512 units
    assert mean["uniform 0.5"]["test_accuracy"] < mean["suggest_dropout"]["test_accuracy"] - 0.01


def test_when_not_to_use_no_gain_without_overfitting_and_memorising_small_sets():
    _, result = quick_run("when_not_to_use")
    assert len(result["seeds"]) >= 2
    tabular = result["tabular"]["mean"]
    assert tabular["none"]["gap"] < 0.05
    assert tabular["classic 0.2/0.5/0.5"]["test_accuracy"] < tabular["none"]["test_accuracy"] - 0.02
    assert tabular["suggest_dropout"]["test_accuracy"] <= tabular["none"]["test_accuracy"] + 0.005
    for name, scores in result["small_set"]["mean"].items():
        assert scores["train_accuracy"] >= 0.99, name
        assert scores["gap"] > 0.2, name


def test_dask_zarr_noise_corrupts_chunk_by_chunk_in_bounded_memory():
    module, result = quick_run("dask_zarr_noise")
    spot = result["spot"]
    assert result["elements"] == 2**24 and result["chunk_bytes"] == 2**20
    assert spot["bit_for_bit"] and result["folder_deleted"]
    # recomputed here: the corner's clean values, and its noise from the stored (seed, stream)
    clean = np.array(spot["clean_crop"], dtype=np.float32)
    assert np.array_equal(clean, module.clean_values(0, 64)[:, :96])
    noise = spot["noise"]
    expected, _ = fastdrop.dropout(clean, noise["p"], seed=noise["seed"], stream=noise["stream"],
                                   offset=noise["offset"], origin=(0, 0),
                                   global_shape=tuple(result["shape"]))
    assert np.array_equal(np.array(spot["noisy_crop"], dtype=np.float32), expected)
    p, count = result["p"], spot["kept_elements_sampled"]
    assert abs(spot["kept_fraction"] - (1 - p)) < 5 * np.sqrt(p * (1 - p) / count)
    corrupt = result["corrupt"]
    held = corrupt["peak_rss"] - corrupt["baseline_rss"]
    assert 0 < held <= module.memory_budget(result) and held < result["array_bytes"]
    assert corrupt["peak_rss"] < result["memory_limit"]


def test_every_example_has_a_test():
    scripts = {path.stem for path in EXAMPLES.glob("*.py")} - {"make_plots", "example_command"}
    tests = [name for name in globals() if name.startswith("test_")]
    untested = [script for script in scripts
                if not any(test.startswith(f"test_{script}_") for test in tests)]
    assert untested == []
    assert scripts == set(BREAK_PROPERTY)
    assert sorted(scripts) == sorted(load("make_plots").EXAMPLES)


# A result changed so that the property no longer holds: each example's check must fail.
BREAK_PROPERTY = {
    "inverted_dropout": lambda result: result["runs"][1].update(kept_values_exact=False),
    "adaptive_l2": lambda result: result.update(relative_error_to_star=1.0),
    "weight_spreading": lambda result: result["runs"][2].update(
        strong_share=result["runs"][0]["strong_share"]),
    "cost_jitter": lambda result: result.update(rises_dropout_on=0),
    "ensemble_view": lambda result: result["last_layer"]["logit_error"].__setitem__(-1, 1.0),
    "where_and_how_much": lambda result: result["mean"]["uniform 0.5"].update(
        test_accuracy=result["mean"]["suggest_dropout"]["test_accuracy"]),
    "when_not_to_use": lambda result: result["small_set"]["mean"]["none"].update(gap=0.0),
    "dask_zarr_noise": lambda result: result["spot"].update(bit_for_bit=False),
}


@pytest.mark.parametrize("name", sorted(BREAK_PROPERTY))
def test_checks_fail_when_the_property_does_not_hold(name):
    module, result = quick_run(name)
    module.check(result)
    BREAK_PROPERTY[name](result)
    with pytest.raises(AssertionError):
        module.check(result)


def test_script_prints_plots_and_saves_json(tmp_path):
    require("matplotlib", "train")
    plot, numbers = tmp_path / "inverted.png", tmp_path / "inverted.json"
    completed = subprocess.run(
        [sys.executable, str(EXAMPLES / "inverted_dropout.py"), "--quick", "--plot", str(plot),
         "--json", str(numbers)], check=False, capture_output=True, text=True, env=PACKAGE_ENV,
        timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert "kept values exactly x / (1 - p): True" in completed.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(numbers.read_text())["masks"] == 20_000


def test_make_plots_writes_one_png_per_example(tmp_path):
    require("matplotlib", "train")
    arguments = ["--only", "adaptive_l2", "--quick", "--output", str(tmp_path)]
    results = load("make_plots").main(arguments)
    assert list(results) == ["adaptive_l2"]
    assert (tmp_path / "adaptive_l2.png").read_bytes()[:4] == b"\x89PNG"
