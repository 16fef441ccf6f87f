"""When not to use dropout: a model that does not overfit, and a training set too small to help.

Dropout fights overfitting by adding noise. Two situations where that buys little:

1. **Small structured data without overfitting.** A small network on a tabular problem
   with a few informative features and enough rows fits the training set about as well as
   the test set: there is no gap to close. Dropout then only adds noise, the network
   underfits, and test accuracy goes down, the more so the heavier the rates. The data
   are synthetic: 6 standard normal features, class 1 when x1 + x2 * x3 - 0.5 x4 > 0
   (x5 and x6 are irrelevant), a 6-32-32-2 MLP.
2. **Very small training sets.** With 3 images per digit (30 in all) a 64-256-256-10 MLP
   memorises the training set with dropout as well as without: training accuracy stays
   at 1 and the train-test gap stays large. Dropout cannot stand in for data.

Each configuration runs over several seeds (data split, weights, masks); the script
prints every run and the means.

Run: ``python examples/when_not_to_use.py [--quick] [--plot PATH.png] [--json PATH]``
"""

import numpy as np

import fastdrop.nn as nn

import example_command  # examples/example_command.py: the shared command line

TABULAR_SIZES = [6, 32, 32, 2]
TABULAR_RATES = {"none": [0.0, 0.0, 0.0], "suggest_dropout": nn.suggest_dropout(TABULAR_SIZES),
                 "classic 0.2/0.5/0.5": [0.2, 0.5, 0.5]}
SMALL_SET_SIZES = [64, 256, 256, 10]
SMALL_SET_RATES = {"none": [0.0, 0.0, 0.0], "suggest_dropout": nn.suggest_dropout(SMALL_SET_SIZES)}
IMAGES_PER_CLASS = 3


def tabular_problem(rows, seed):
    """Six standard normal features; class 1 iff x1 + x2 * x3 - 0.5 * x4 > 0."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((rows, 6)).astype(np.float32)
    return X, (X[:, 0] + X[:, 1] * X[:, 2] - 0.5 * X[:, 3] > 0).astype(np.int64)


def train_and_score(sizes, rates, train, test, *, epochs, batch_size, seed):
    """Train an MLP; returns (train accuracy, test accuracy) in evaluation mode."""
    model = nn.MLP(sizes, dropout=rates, seed=seed)
    nn.fit(model, *train, epochs=epochs, batch_size=batch_size, seed=seed, progress=False)
    return nn.accuracy(model, *train), nn.accuracy(model, *test)


def small_digits_split(images_per_class, seed):
    """``images_per_class`` training digits per class and 500 test digits, standardised."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    order = np.random.default_rng(seed).permutation(len(X))
    test, rest = order[:500], order[500:]
    train = np.concatenate([rest[y[rest] == label][:images_per_class] for label in range(10)])
    std = X[train].std(axis=0)
    X = ((X - X[train].mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32)
    return (X[train], y[train]), (X[test], y[test])


def summarise(runs):
    """Per configuration: mean train and test accuracy and mean gap over the seeds."""
    summary = {}
    for name in runs[0]["scores"]:
        train = np.mean([run["scores"][name][0] for run in runs])
        test = np.mean([run["scores"][name][1] for run in runs])
        summary[name] = {"train_accuracy": float(train), "test_accuracy": float(test),
                         "gap": float(train - test)}
    return summary


def demonstrate(*, quick=False, seed=0):
    """Both experiments over several seeds; returns every run and the means."""
    seeds = range(seed, seed + (2 if quick else 5))
    tabular_rows, tabular_epochs = (1000, 20) if quick else (2000, 30)
    small_set_steps = 150 if quick else 400
    tabular_runs, small_set_runs = [], []
    for run_seed in seeds:
        X, y = tabular_problem(tabular_rows + 1000, run_seed)
        train, test = (X[:tabular_rows], y[:tabular_rows]), (X[tabular_rows:], y[tabular_rows:])
        tabular_runs.append({"seed": run_seed, "scores": {
            name: train_and_score(TABULAR_SIZES, rates, train, test, epochs=tabular_epochs,
                                  batch_size=64, seed=run_seed)
            for name, rates in TABULAR_RATES.items()}})
        train, test = small_digits_split(IMAGES_PER_CLASS, run_seed)
        small_set_runs.append({"seed": run_seed, "scores": {  # one full batch per epoch
            name: train_and_score(SMALL_SET_SIZES, rates, train, test, epochs=small_set_steps,
                                  batch_size=len(train[1]), seed=run_seed)
            for name, rates in SMALL_SET_RATES.items()}})
    return {
        "seeds": list(seeds),
        "tabular": {"sizes": TABULAR_SIZES, "rates": TABULAR_RATES, "rows": tabular_rows,
                    "epochs": tabular_epochs, "runs": tabular_runs,
                    "mean": summarise(tabular_runs)},
        "small_set": {"sizes": SMALL_SET_SIZES, "rates": SMALL_SET_RATES,
                      "training_images": 10 * IMAGES_PER_CLASS, "steps": small_set_steps,
                      "runs": small_set_runs, "mean": summarise(small_set_runs)},
    }


def check(result):
    """Tabular: no gap, worse with dropout; 30 images: memorised, large gap. Else AssertionError."""
    tabular = result["tabular"]["mean"]
    if not tabular["none"]["gap"] < 0.05:
        raise AssertionError(f"the tabular model overfits (gap {tabular['none']['gap']:.3f})")
    without = tabular["none"]["test_accuracy"]
    if not tabular["classic 0.2/0.5/0.5"]["test_accuracy"] < without - 0.02:
        raise AssertionError("heavy dropout did not lower test accuracy on the tabular data")
    if not tabular["suggest_dropout"]["test_accuracy"] <= tabular["none"]["test_accuracy"] + 0.005:
        raise AssertionError("suggest_dropout's rates improved test accuracy on the tabular data")
    small = result["small_set"]["mean"]
    for name, scores in small.items():
        if not scores["train_accuracy"] >= 0.99:
            raise AssertionError(f"{name}: the network did not memorise the 30 images")
        if not scores["gap"] > 0.2:
            raise AssertionError(f"{name}: train-test gap {scores['gap']:.3f} on 30 images")


def _print_experiment(title, experiment):
    print(title)
    names = list(experiment["mean"])
    print("  seed  " + "".join(f"{name:>28s}" for name in names) + "   (train / test accuracy)")
    for run in experiment["runs"]:
        print(f"  {run['seed']:4d}  " + "".join(f"{run['scores'][name][0]:19.3f} / "
                                                 f"{run['scores'][name][1]:.3f}" for name in names))
    print("  mean  " + "".join(f"{experiment['mean'][name]['train_accuracy']:19.3f} / "
                               f"{experiment['mean'][name]['test_accuracy']:.3f}"
                               for name in names))
    print("  gap   " + "".join(f"{experiment['mean'][name]['gap']:28.3f}" for name in names))


def report(result):
    tabular, small = result["tabular"], result["small_set"]
    _print_experiment(f"1. tabular, {tabular['rows']} training rows, MLP "
                      f"{'-'.join(map(str, tabular['sizes']))}, rates {tabular['rates']}", tabular)
    _print_experiment(f"2. digits, {small['training_images']} training images, MLP "
                      f"{'-'.join(map(str, small['sizes']))}, rates {small['rates']}", small)


def plot(result, plt):
    """The figure of the Concepts page, drawn with pyplot ``plt`` (saved by example_command)."""
    figure, axes = plt.subplots(1, 2, figsize=(11, 4))
    titles = {"tabular": "small tabular problem, no overfitting",
              "small_set": f"{result['small_set']['training_images']} training digits"}
    for axis, key in zip(axes, ("tabular", "small_set")):
        experiment = result[key]
        names = list(experiment["mean"])
        positions = np.arange(len(names))
        for shift, (label, index) in zip((-0.2, 0.2), (("train", 0), ("test", 1))):
            means = [experiment["mean"][name][f"{label}_accuracy"] for name in names]
            axis.bar(positions + shift, means, width=0.4, label=f"{label} (mean)")
            for offset, name in enumerate(names):  # one dot per seed
                values = [run["scores"][name][index] for run in experiment["runs"]]
                axis.plot(np.full(len(values), offset + shift), values, "k.", markersize=4)
        axis.set_xticks(positions, names)
        axis.set_ylim(0.5, 1.02)
        axis.set_ylabel("accuracy")
        axis.set_title(titles[key])
        axis.legend(loc="lower left")
    return figure


def main(argv=None):
    """Command line: demonstrate, print, save, check the property; returns the result dict."""
    return example_command.run(__doc__, demonstrate, report, plot, check, argv)


if __name__ == "__main__":
    main()
