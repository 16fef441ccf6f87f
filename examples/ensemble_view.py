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
  entropy is much higher than on the digits themselves.

Run: ``python examples/ensemble_view.py [--quick] [--plot PATH.png] [--json PATH]``
"""

import numpy as np

import fastdrop.nn as nn

import example_command  # examples/example_command.py: the shared command line

LAST_LAYER_DROPOUT = [0.0, 0.0, 0.5]  # dropout only on the input of the last (linear) layer
WHOLE_NETWORK_DROPOUT = [0.2, 0.5, 0.5]  # the classic rates, dropout before every ReLU too


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
    model.reseed(seed + 2)
    clean = nn.predict_mc(model, X_test, samples=uncertainty_samples)
    blended = nn.predict_mc(model, blended_digits(raw_test, y_test, standardise, seed + 3),
                            samples=uncertainty_samples)
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


def plot(result, plt):
    """The figure of the Concepts page, drawn with pyplot ``plt`` (saved by example_command)."""
    counts = np.array(result["sample_counts"])
    last, whole = result["last_layer"], result["whole_network"]
    figure, (left, middle, right) = plt.subplots(1, 3, figsize=(15, 4))
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
    return figure


def main(argv=None):
    """Command line: demonstrate, print, save, check the property; returns the result dict."""
    return example_command.run(__doc__, demonstrate, report, plot, check, argv)


if __name__ == "__main__":
    main()
