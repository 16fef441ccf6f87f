"""The ensemble view: averaging stochastic forward passes approaches the evaluation-mode network.

A network trained with dropout is a large family of thinned networks that share weights,
one per mask. Its prediction at test time could be the average over masks (Monte Carlo,
``fastdrop.nn.predict_mc``); evaluation mode instead runs the full network once with
dropout off, which inverted dropout has already scaled (the "weight scaling rule",
Srivastava et al. 2014, §7.5). How close are the two?

- **Exactly, for the part after the last nonlinearity.** If dropout feeds only linear
  layers, the logits are linear in the mask, so the mean logits over masks equal the
  evaluation-mode logits; with K masks the error is pure sampling noise and shrinks like
  1 / sqrt(K). Its size is known: logit k has variance p / (1 - p) * sum_j h_j^2 W_jk^2
  over masks (h is the dropped layer's input), and the script compares the measured error
  with that prediction.
- **Approximately, for the whole network.** With dropout before a ReLU the average over
  masks is not the evaluation-mode output: the error stops shrinking at a bias. The
  predictions still agree: Srivastava et al. found about 50 samples match the weight-scaled
  network's accuracy on MNIST, and the script measures the same on digits.
- **Uncertainty.** The spread of the stochastic passes says how sure the network is. On
  ambiguous digits, made by blending two test digits of different classes, the predictive
  entropy is much higher than on the digits themselves. The mutual information between
  label and mask (BALD) isolates the part that comes from the thinned networks
  disagreeing; the script measures it on test digits, blends and images of pure noise.
- **Active learning.** Starting from 20 labelled digits, label 20 more per round, chosen by
  BALD or at random, retrain from scratch, and measure test accuracy after each round,
  over several seeds.

Run: ``python examples/ensemble_view.py [--quick] [--plot PATH.png] [--json PATH]``
"""

import numpy as np

import fastdrop.nn as nn
from fastdrop.nn import acquisition

import example_command  # examples/example_command.py: the shared command line

LAST_LAYER_DROPOUT = [0.0, 0.0, 0.5]  # dropout only on the input of the last (linear) layer
WHOLE_NETWORK_DROPOUT = [0.2, 0.5, 0.5]  # the classic rates, dropout before every ReLU too
ACTIVE_LEARNING_DROPOUT = [0.1, 0.5, 0.5]
# seeds, rounds of acquisition, rows labelled per round, first labels per class, hidden width,
# optimiser steps per training, Monte Carlo samples for BALD
ACTIVE_LEARNING = {
    "full": {"seeds": 5, "rounds": 15, "per_round": 20, "initial_per_class": 2, "hidden": 128,
             "steps": 1000, "samples": 20},
    "quick": {"seeds": 2, "rounds": 4, "per_round": 20, "initial_per_class": 2, "hidden": 64,
              "steps": 400, "samples": 10},
}


def load_split_digits(seed, test_fraction=0.3):
    """Digits split at random into train and test; pixels standardised with the train statistics.

    Returns
    -------
    (X_train, y_train), (X_test, y_test), raw_test, standardise
        ``raw_test`` holds the unstandardised test pixels (for blending);
        ``standardise`` applies the train statistics to more pixels.
    """
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(X))
    test, train = order[:int(len(X) * test_fraction)], order[int(len(X) * test_fraction):]
    mean, std = X[train].mean(axis=0), np.where(X[train].std(axis=0) > 0, X[train].std(axis=0), 1)

    def standardise(pixels):
        return ((pixels - mean) / std).astype(np.float32)

    return (standardise(X[train]), y[train]), (standardise(X[test]), y[test]), X[test], standardise


def predicted_logit_error(model, X, samples):
    """RMS error of the mean logits over ``samples`` masks, for dropout only before the last Linear.

    logits = (h * mask / (1 - p)) @ W + b, so each logit's variance over masks is
    p / (1 - p) * sum_j h_j^2 W_jk^2, and the mean of K passes has that variance / K.
    """
    *hidden_layers, dropout_layer, last_linear = model.layers
    hidden = nn.predict(nn.Sequential(*hidden_layers), X).astype(np.float64)
    p = dropout_layer.p
    variance = p / (1 - p) * (hidden ** 2) @ (last_linear.weight.data.astype(np.float64) ** 2)
    return float(np.sqrt(variance.mean() / samples))


def mc_convergence(model, X, y, sample_counts, seed):
    """Mean logits over K masks against the evaluation-mode logits, for each K.

    Returns
    -------
    errors : list of float
        RMS(mean logits over K masks - evaluation logits) over all rows and classes.
    squared_error_standard_errors : list of float
        Standard error of the mean squared error (from its spread over the rows).
    accuracies : list of float
        Accuracy of the MC average (the class of the largest mean probability).
    evaluation_accuracy : float
    """
    evaluation_logits = nn.predict(model, X).astype(np.float64)
    errors, standard_errors, accuracies = [], [], []
    for index, samples in enumerate(sample_counts):
        model.reseed(seed + index)
        prediction = nn.predict_mc(model, X, samples=samples)
        row_squared_errors = np.mean((prediction.logits - evaluation_logits) ** 2, axis=1)
        errors.append(float(np.sqrt(row_squared_errors.mean())))
        standard_errors.append(float(row_squared_errors.std(ddof=1) / np.sqrt(len(X))))
        accuracies.append(float(np.mean(prediction.probabilities.argmax(axis=1) == y)))
    evaluation_accuracy = float(np.mean(evaluation_logits.argmax(axis=1) == y))
    return errors, standard_errors, accuracies, evaluation_accuracy


def blended_digits(raw_test, y_test, standardise, seed):
    """Each test digit averaged with a random one of another class: ambiguous by construction."""
    rng = np.random.default_rng(seed)
    partners = rng.permutation(len(y_test))
    same = y_test[partners] == y_test
    while same.any():  # redraw partners of the same class
        partners[same] = rng.integers(0, len(y_test), same.sum())
        same = y_test[partners] == y_test
    return standardise(0.5 * (raw_test + raw_test[partners]))


def noise_images(rows, standardise, seed):
    """Images of pure noise: every pixel uniform on the digits' range [0, 16]."""
    return standardise(np.random.default_rng(seed).uniform(0, 16, (rows, 64)))


def train_on(X, y, settings, seed):
    """A fresh network trained on (X, y) for a fixed number of optimiser steps."""
    model = nn.MLP([X.shape[1], settings["hidden"], settings["hidden"], 10],
                   dropout=ACTIVE_LEARNING_DROPOUT, seed=seed)
    batch_size = 32
    steps_per_epoch = -(-len(X) // batch_size)
    nn.fit(model, X, y, epochs=-(-settings["steps"] // steps_per_epoch), batch_size=batch_size,
           seed=seed, progress=False)
    return model


def active_learning_run(strategy, settings, seed):
    """Test accuracy after each round of acquiring ``per_round`` labels by ``strategy``.

    The pool is the training split, the first labelled set ``initial_per_class`` random
    images of each class; each round retrains from scratch (same seeds for both
    strategies) and then labels the pool images of highest BALD ("bald") or random ones.

    Returns
    -------
    accuracies : list of float
        Test accuracy with the labels of round 0 (the first set), 1, ... ``rounds``.
    acquired_bald : list of float
        Mean BALD (nats) of the images acquired in each round, under the model that chose them.
    """
    (X_pool, y_pool), (X_test, y_test), _, _ = load_split_digits(seed)
    rng = np.random.default_rng([seed, 1])  # the first set: the same for both strategies
    labelled = np.concatenate([
        rng.choice(np.flatnonzero(y_pool == label), settings["initial_per_class"], replace=False)
        for label in range(10)])
    picking = np.random.default_rng([seed, 2])
    accuracies, acquired_bald = [], []
    for round_index in range(settings["rounds"] + 1):
        model_seed = 1000 * seed + round_index
        model = train_on(X_pool[labelled], y_pool[labelled], settings, model_seed)
        accuracies.append(nn.accuracy(model, X_test, y_test))
        if round_index == settings["rounds"]:
            break
        pool = np.setdiff1d(np.arange(len(y_pool)), labelled)
        scores = acquisition.bald(nn.predict_mc(model, X_pool[pool], samples=settings["samples"],
                                                seed=model_seed))
        if strategy == "bald":
            chosen = acquisition.select(scores, settings["per_round"])
        else:
            chosen = picking.choice(len(pool), settings["per_round"], replace=False)
        acquired_bald.append(float(scores[chosen].mean()))
        labelled = np.concatenate([labelled, pool[chosen]])
    return accuracies, acquired_bald


def active_learning(settings, first_seed):
    """Both strategies over ``settings["seeds"]`` seeds: accuracy curves and their summary."""
    seeds = list(range(first_seed, first_seed + settings["seeds"]))
    result = {"settings": settings, "seeds": seeds, "dropout_rates": ACTIVE_LEARNING_DROPOUT,
              "labels": [10 * settings["initial_per_class"] + settings["per_round"] * index
                         for index in range(settings["rounds"] + 1)]}
    for strategy in ("bald", "random"):
        runs = [active_learning_run(strategy, settings, seed) for seed in seeds]
        result[strategy] = {"accuracy": [accuracies for accuracies, _ in runs],
                            "acquired_bald": [scores for _, scores in runs]}
    bald, random = (np.array(result[name]["accuracy"]) for name in ("bald", "random"))
    result["mean_accuracy"] = {"bald": bald.mean(axis=0).tolist(),
                               "random": random.mean(axis=0).tolist()}
    # per seed, BALD minus random averaged over the rounds after the first set (same seeds)
    result["mean_gain_per_seed"] = (bald[:, 1:] - random[:, 1:]).mean(axis=1).tolist()
    return result


def area_under_curve(higher, lower):
    """Chance that a random entry of ``higher`` exceeds one of ``lower`` (ties count half)."""
    higher, lower = np.asarray(higher)[:, None], np.asarray(lower)[None, :]
    return float(np.mean(higher > lower) + 0.5 * np.mean(higher == lower))


def demonstrate(*, quick=False, seed=0):
    """Train both networks, measure convergence of the MC average and the entropy on blends."""
    hidden, epochs = (64, 40) if quick else (256, 40)
    sample_counts = [1, 4, 16, 64, 256] if quick else [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
    (X_train, y_train), (X_test, y_test), raw_test, standardise = load_split_digits(seed)
    if quick:
        X_test, y_test, raw_test = X_test[:300], y_test[:300], raw_test[:300]
    sizes = [X_train.shape[1], hidden, hidden, 10]
    result = {"sizes": sizes, "epochs": epochs, "test_rows": len(y_test), "seed": seed,
              "sample_counts": sample_counts}
    for name, rates in (("last_layer", LAST_LAYER_DROPOUT),
                        ("whole_network", WHOLE_NETWORK_DROPOUT)):
        model = nn.MLP(sizes, dropout=rates, seed=seed)
        nn.fit(model, X_train, y_train, epochs=epochs, batch_size=64, seed=seed, progress=False)
        errors, standard_errors, accuracies, evaluation_accuracy = mc_convergence(
            model, X_test, y_test, sample_counts, seed + 1)
        result[name] = {"dropout_rates": rates, "logit_error": errors,
                        "squared_error_standard_error": standard_errors, "mc_accuracy": accuracies,
                        "evaluation_accuracy": evaluation_accuracy}
        if name == "last_layer":
            result[name]["predicted_logit_error"] = [predicted_logit_error(model, X_test, samples)
                                                     for samples in sample_counts]
    # uncertainty from the whole-network model (the usual Monte Carlo dropout setting)
    uncertainty_samples = 64
    inputs = {"clean": X_test, "blended": blended_digits(raw_test, y_test, standardise, seed + 3),
              "noise": noise_images(len(y_test), standardise, seed + 4)}
    mc = {name: nn.predict_mc(model, images, samples=uncertainty_samples, seed=seed + 2)
          for name, images in inputs.items()}
    clean, blended = mc["clean"], mc["blended"]
    wrong = clean.probabilities.argmax(axis=1) != y_test
    result["uncertainty"] = {
        "samples": uncertainty_samples,
        "entropy_clean": clean.entropy.tolist(), "entropy_blended": blended.entropy.tolist(),
        "mean_entropy_clean": float(clean.entropy.mean()),
        "mean_entropy_blended": float(blended.entropy.mean()),
        "mean_entropy_misclassified": float(clean.entropy[wrong].mean()) if wrong.any() else None,
        "mean_entropy_correct": float(clean.entropy[~wrong].mean()),
        "misclassified": int(wrong.sum()),
        "auc_blended_vs_clean": area_under_curve(blended.entropy, clean.entropy),
    }
    for name, prediction in mc.items():
        result["uncertainty"][f"bald_{name}"] = prediction.mutual_information.tolist()
        result["uncertainty"][f"mean_bald_{name}"] = float(prediction.mutual_information.mean())
        result["uncertainty"][f"mean_entropy_{name}"] = float(prediction.entropy.mean())
        result["uncertainty"][f"mean_expected_entropy_{name}"] = float(
            prediction.expected_entropy.mean())
    for name in ("blended", "noise"):
        result["uncertainty"][f"auc_bald_{name}_vs_clean"] = area_under_curve(
            mc[name].mutual_information, clean.mutual_information)
        result["uncertainty"][f"auc_entropy_{name}_vs_clean"] = area_under_curve(
            mc[name].entropy, clean.entropy)
    result["active_learning"] = active_learning(ACTIVE_LEARNING["quick" if quick else "full"],
                                                seed)
    return result


def check(result):
    """Exact convergence at the predicted rate after the last nonlinearity, approximate before."""
    counts = result["sample_counts"]
    last = result["last_layer"]
    for samples, measured, predicted, standard_error in zip(
            counts, last["logit_error"], last["predicted_logit_error"],
            last["squared_error_standard_error"]):
        # the measured mean square is within 4 of its standard errors of the predicted one
        z = (measured ** 2 - predicted ** 2) / standard_error
        if abs(z) > 4:
            raise AssertionError(f"K = {samples}: logit error {measured:.4f}, predicted "
                                 f"{predicted:.4f} from p/(1-p) sum h^2 W^2 / K ({z:+.1f} s.e.)")
    slope = np.polyfit(np.log(counts), np.log(last["logit_error"]), 1)[0]
    if abs(slope + 0.5) > 0.05:
        raise AssertionError(f"last-layer dropout: error falls like K^{slope:.3f}, not K^-0.5")
    whole = result["whole_network"]
    # sampling noise alone makes the error fall 4x from K = 16 to 256 (ratio 0.25, as the
    # last-layer net measures); a bias keeps the whole network's ratio well above that
    ratio = whole["logit_error"][counts.index(256)] / whole["logit_error"][counts.index(16)]
    if not ratio > 0.35:
        raise AssertionError(f"whole network: error ratio K = 256 / K = 16 is {ratio:.3f}, "
                             "no sign of the bias")
    if abs(whole["mc_accuracy"][counts.index(64)] - whole["evaluation_accuracy"]) > 0.03:
        raise AssertionError("whole network: MC accuracy at K = 64 is not within 0.03 of the "
                             "evaluation-mode accuracy")
    uncertainty = result["uncertainty"]
    if not uncertainty["mean_entropy_blended"] > 1.2 * uncertainty["mean_entropy_clean"]:
        raise AssertionError("blended digits are not clearly more uncertain than clean ones")
    if not uncertainty["auc_blended_vs_clean"] > 0.75:
        raise AssertionError(f"entropy separates blended from clean digits with AUC "
                             f"{uncertainty['auc_blended_vs_clean']:.3f} only")
    # noise: each thinned network is sure of itself, they disagree: BALD, not expected entropy
    if not (uncertainty["auc_bald_noise_vs_clean"] > 0.9
            and uncertainty["mean_bald_noise"] > 2 * uncertainty["mean_bald_clean"]
            and uncertainty["mean_expected_entropy_noise"]
            < uncertainty["mean_expected_entropy_clean"]):
        raise AssertionError("BALD does not single out pure noise as disagreement")
    learning = result["active_learning"]
    for strategy in ("bald", "random"):
        curve = learning["mean_accuracy"][strategy]
        if not curve[-1] > curve[0] + 0.03:
            raise AssertionError(f"{strategy}: test accuracy does not rise with the labels "
                                 f"({curve[0]:.3f} -> {curve[-1]:.3f})")
    chosen = np.mean(learning["bald"]["acquired_bald"], axis=0)
    at_random = np.mean(learning["random"]["acquired_bald"], axis=0)
    if not np.all(chosen > at_random):
        raise AssertionError("acquisition by BALD did not pick rows of higher BALD than random")


def report(result):
    print(f"digits, MLP {'-'.join(map(str, result['sizes']))}, {result['epochs']} epochs, "
          f"{result['test_rows']} test images")
    last, whole = result["last_layer"], result["whole_network"]
    print("RMS(mean logits over K masks - evaluation logits); accuracy of the MC average")
    print(f"{'K':>6} {'last layer':>11} {'predicted':>10} {'(s.e.)':>7} {'whole net':>10} "
          f"{'MC acc':>8}")
    for index, samples in enumerate(result["sample_counts"]):
        measured, predicted = last["logit_error"][index], last["predicted_logit_error"][index]
        z = (measured ** 2 - predicted ** 2) / last["squared_error_standard_error"][index]
        print(f"{samples:6d} {measured:11.4f} {predicted:10.4f} {z:+7.1f} "
              f"{whole['logit_error'][index]:10.4f} {whole['mc_accuracy'][index]:8.4f}")
    print(f"evaluation-mode accuracy: last-layer net {last['evaluation_accuracy']:.4f}, "
          f"whole-network net {whole['evaluation_accuracy']:.4f}")
    uncertainty = result["uncertainty"]
    print(f"predictive entropy (nats, {uncertainty['samples']} masks, whole-network net): "
          f"clean digits {uncertainty['mean_entropy_clean']:.3f}, blended pairs "
          f"{uncertainty['mean_entropy_blended']:.3f} "
          f"(AUC {uncertainty['auc_blended_vs_clean']:.3f})")
    if uncertainty["mean_entropy_misclassified"] is not None:
        print(f"  clean digits it gets right {uncertainty['mean_entropy_correct']:.3f}, the "
              f"{uncertainty['misclassified']} it gets wrong "
              f"{uncertainty['mean_entropy_misclassified']:.3f}")
    print(f"{'nats, mean':>26} {'predictive H':>13} {'expected H':>11} {'BALD':>7} "
          f"{'AUC H':>6} {'AUC BALD':>9}")
    for name, label in (("clean", "test digits"), ("blended", "blends of two digits"),
                        ("noise", "pure noise")):
        aucs = ("" if name == "clean" else
                f" {uncertainty[f'auc_entropy_{name}_vs_clean']:6.3f} "
                f"{uncertainty[f'auc_bald_{name}_vs_clean']:9.3f}")
        print(f"{label:>26} {uncertainty[f'mean_entropy_{name}']:13.3f} "
              f"{uncertainty[f'mean_expected_entropy_{name}']:11.3f} "
              f"{uncertainty[f'mean_bald_{name}']:7.3f}{aucs}")
    report_active_learning(result["active_learning"])


def report_active_learning(learning):
    settings = learning["settings"]
    print(f"active learning, {settings['seeds']} seeds: MLP 64-{settings['hidden']}-"
          f"{settings['hidden']}-10, {settings['steps']} steps per training, BALD from "
          f"{settings['samples']} masks; test accuracy (mean over seeds)")
    bald, random = (np.array(learning[name]["accuracy"]) for name in ("bald", "random"))
    print(f"{'labels':>6} {'BALD':>7} {'random':>7} {'BALD-random':>12} {'seeds BALD>random':>18}")
    for index, labels in enumerate(learning["labels"]):
        better = int(np.sum(bald[:, index] > random[:, index]))
        print(f"{labels:6d} {bald[:, index].mean():7.4f} {random[:, index].mean():7.4f} "
              f"{bald[:, index].mean() - random[:, index].mean():+12.4f} "
              f"{better:>11d} of {len(bald)}")
    gains = learning["mean_gain_per_seed"]
    print("mean over the rounds after the first set, BALD - random, per seed: "
          + ", ".join(f"{gain:+.4f}" for gain in gains) + f" (mean {np.mean(gains):+.4f})")


def plot(result, plt):
    """The figure of the Concepts page, drawn with pyplot ``plt`` (saved by example_command)."""
    counts = np.array(result["sample_counts"])
    last, whole = result["last_layer"], result["whole_network"]
    figure, ((left, middle, right), (bald_axes, learning_axes, gain_axes)) = plt.subplots(
        2, 3, figsize=(15, 8))
    left.loglog(counts, last["logit_error"], "o-", label="dropout only before the last Linear")
    left.loglog(counts, last["predicted_logit_error"], "k:",
                label="predicted: sampling noise / sqrt(K)")
    left.loglog(counts, whole["logit_error"], "s-", label="dropout before every layer")
    left.set_xlabel("masks K")
    left.set_ylabel("RMS(MC mean logits - eval logits)")
    left.set_title("MC average vs evaluation mode")
    left.legend(fontsize=8)
    middle.semilogx(counts, whole["mc_accuracy"], "s-", color="C1", label="MC average of K passes")
    middle.axhline(whole["evaluation_accuracy"], color="k", linestyle=":",
                   label="evaluation mode (weight scaling)")
    middle.set_xlabel("masks K")
    middle.set_ylabel("test accuracy")
    middle.set_title("whole network: accuracy")
    middle.legend(fontsize=8)
    uncertainty = result["uncertainty"]
    bins = np.linspace(0, max(max(uncertainty["entropy_blended"]), 0.1), 30)
    right.hist(uncertainty["entropy_clean"], bins=bins, alpha=0.6, label="test digits")
    right.hist(uncertainty["entropy_blended"], bins=bins, alpha=0.6, label="blends of two classes")
    right.set_xlabel("predictive entropy (nats)")
    right.set_ylabel("images")
    right.set_title(f"uncertainty, {uncertainty['samples']} masks")
    right.legend(fontsize=8)
    bins = np.linspace(0, max(max(uncertainty["bald_noise"]), 0.1), 30)
    for name, label in (("clean", "test digits"), ("blended", "blends of two classes"),
                        ("noise", "pure noise")):
        bald_axes.hist(uncertainty[f"bald_{name}"], bins=bins, alpha=0.5, label=label)
    bald_axes.set_xlabel("BALD: mutual information (nats)")
    bald_axes.set_ylabel("images")
    bald_axes.set_title("disagreement between masks")
    bald_axes.legend(fontsize=8)
    learning = result["active_learning"]
    labels = np.array(learning["labels"])
    for name, color in (("bald", "C3"), ("random", "C0")):
        runs = np.array(learning[name]["accuracy"])
        learning_axes.plot(labels, runs.T, color=color, alpha=0.25, linewidth=0.8)
        learning_axes.plot(labels, runs.mean(axis=0), "o-", color=color,
                           label=f"{'BALD' if name == 'bald' else 'random'} "
                                 f"(mean of {len(runs)} seeds)")
    learning_axes.set_xlabel("labelled images")
    learning_axes.set_ylabel("test accuracy")
    learning_axes.set_title("active learning on digits")
    learning_axes.legend(fontsize=8)
    gains = np.array(learning["bald"]["accuracy"]) - np.array(learning["random"]["accuracy"])
    gain_axes.plot(labels, gains.T, color="C3", alpha=0.3, linewidth=0.8)
    gain_axes.plot(labels, gains.mean(axis=0), "o-", color="C3", label="mean over seeds")
    gain_axes.axhline(0, color="k", linestyle=":")
    gain_axes.set_xlabel("labelled images")
    gain_axes.set_ylabel("accuracy, BALD - random")
    gain_axes.set_title("per seed (same first set and seeds)")
    gain_axes.legend(fontsize=8)
    return figure


def main(argv=None):
    """Command line: demonstrate, print, save, check the property; returns the result dict."""
    return example_command.run(__doc__, demonstrate, report, plot, check, argv)


if __name__ == "__main__":
    main()
