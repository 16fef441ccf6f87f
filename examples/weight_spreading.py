"""Dropout spreads the weights: a linear neuron with one strong input and three weaker ones.

The four inputs all measure one hidden signal s, which is also the target:

    x1 = s + 0.3 * noise        (the strong input: little noise)
    x2, x3, x4 = s + 1.0 * noise (weaker inputs, correlated with x1 and each other through s)
    y = s

Without dropout, least squares leans on x1: weighting each input by the inverse of its
noise variance puts about 80% of the total |w| on it. With input dropout the neuron cannot
count on x1 being there, and the expected loss adds p / (1 - p) * sum_j w_j^2 ||x_j||^2
(see adaptive_l2.py), which favours sharing the load: the weights spread over all four
inputs.

The measure of spread is the *strong input's share* |w1| / sum_j |w_j| (1 when x1 does
all the work, 0.25 when the load is shared evenly), with the effective number of inputs
(sum_j |w_j|)^2 / sum_j w_j^2 (1 to 4) alongside. The neuron is a ``fastdrop.nn``
``Dropout -> Linear(4, 1)`` trained by mini-batch SGD on the squared error (decaying
step, weights averaged over the second half); the closed-form minimiser of the expected
loss is printed next to it.

Run: ``python examples/weight_spreading.py [--quick] [--plot PATH.png] [--json PATH]``
"""
import itertools

import numpy as np

import fastdrop.nn as nn

import example_command  # examples/example_command.py: the shared command line

STRONG_NOISE = 0.3
WEAK_NOISE = 1.0
DROP_RATES = [0.0, 0.2, 0.5]


def make_inputs(rows, seed):
    """(X, y): four noisy copies of a hidden signal, the first far less noisy, and the signal."""
    rng = np.random.default_rng(seed)
    signal = rng.standard_normal(rows)
    noise_levels = np.array([STRONG_NOISE, WEAK_NOISE, WEAK_NOISE, WEAK_NOISE])
    X = signal[:, None] + noise_levels * rng.standard_normal((rows, 4))
    return X, signal


def expected_loss_minimiser(X, y, p):
    """Minimiser of E||y - X~ w||^2 over the masks: (X^T X + p/(1-p) diag(X^T X))^-1 X^T y."""
    gram = X.T @ X
    return np.linalg.solve(gram + p / (1 - p) * np.diag(np.diag(gram)), X.T @ y)


def strong_share(weights):
    """|w1| / sum |w_j|: the fraction of the neuron's total weight on the strong input."""
    weights = np.abs(np.asarray(weights))
    return float(weights[0] / weights.sum())


def effective_inputs(weights):
    """(sum |w_j|)^2 / sum w_j^2: 1 when one input carries everything, 4 when all carry the same."""
    weights = np.abs(np.asarray(weights))
    return float(weights.sum() ** 2 / np.sum(weights ** 2))


def train_neuron(X, y, p, *, epochs, batch_size, seed):
    """Train ``Dropout(p) -> Linear(4, 1, bias=False)`` with SGD; returns the averaged weights."""
    neuron = nn.Sequential(nn.Dropout(p), nn.Linear(4, 1, bias=False, dtype=np.float64, rng=seed))
    neuron.reseed(seed)
    optimizer = nn.SGD(neuron.parameters(), lr=0.05)
    first_lr = optimizer.lr
    rng = np.random.default_rng(seed)
    rows = len(X)
    total_steps = epochs * (rows // batch_size)
    averaged, averaged_count, step = np.zeros(4), 0, 0
    for _ in range(epochs):
        order = rng.permutation(rows)
        for start in range(0, rows - batch_size + 1, batch_size):
            batch = order[start:start + batch_size]
            optimizer.zero_grad()
            error = neuron(nn.Tensor(X[batch])) - y[batch, None]
            (error * error).mean().backward()
            optimizer.lr = first_lr / np.sqrt(1 + step / (total_steps / 10))  # decaying step
            optimizer.step()
            step += 1
            if step > total_steps // 2:  # Polyak averaging removes most of the SGD noise
                averaged_count += 1
                averaged += (neuron[1].weight.data[:, 0] - averaged) / averaged_count
    return averaged


def demonstrate(*, quick=False, seed=0):
    """Train the neuron at each rate in ``DROP_RATES``; returns weights and spread measures."""
    rows, epochs = (1000, 40) if quick else (4000, 100)
    X, y = make_inputs(rows, seed)
    runs = []
    for p in DROP_RATES:
        trained = train_neuron(X, y, p, epochs=epochs, batch_size=20, seed=seed + 1)
        theory = expected_loss_minimiser(X, y, p)
        runs.append({
            "p": p, "weights": trained.tolist(), "closed_form": theory.tolist(),
            "strong_share": strong_share(trained), "closed_form_share": strong_share(theory),
            "effective_inputs": effective_inputs(trained),
        })
    dense_rates = np.linspace(0.0, 0.9, 46)
    return {
        "rows": rows, "epochs": epochs, "seed": seed, "runs": runs,
        "share_curve_p": dense_rates.tolist(),
        "share_curve": [strong_share(expected_loss_minimiser(X, y, p)) for p in dense_rates],
    }


def check(result):
    """The weights spread with dropout as the closed form predicts; raises AssertionError if not."""
    runs = {run["p"]: run for run in result["runs"]}
    without, with_half = runs[0.0], runs[0.5]
    if not with_half["strong_share"] < without["strong_share"] - 0.2:  # theory: about 0.8 -> 0.45
        raise AssertionError(f"strong-input share {without['strong_share']:.3f} without dropout, "
                             f"{with_half['strong_share']:.3f} with p = 0.5: no clear spreading")
    if not with_half["effective_inputs"] > without["effective_inputs"] + 1:
        raise AssertionError("the effective number of inputs did not grow by at least 1")
    shares = [run["strong_share"] for run in result["runs"]]
    if not all(later < earlier for earlier, later in itertools.pairwise(shares)):
        raise AssertionError(f"share does not fall as p grows: {shares}")
    for run in result["runs"]:  # SGD agrees with the minimiser of the expected loss
        if abs(run["strong_share"] - run["closed_form_share"]) > 0.03:
            raise AssertionError(f"p = {run['p']}: SGD share {run['strong_share']:.3f}, "
                                 f"closed form {run['closed_form_share']:.3f}")


def report(result):
    print(f"linear neuron, 4 inputs (x1 noise {STRONG_NOISE}, x2..x4 noise {WEAK_NOISE}), "
          f"{result['rows']} rows, {result['epochs']} epochs of SGD")
    print("   p   w1      w2      w3      w4      share of x1 (closed form)  effective inputs")
    for run in result["runs"]:
        weights = "".join(f"{value:8.4f}" for value in run["weights"])
        print(f"{run['p']:4.1f} {weights}   {run['strong_share']:.3f} "
              f"({run['closed_form_share']:.3f})"
              f"{run['effective_inputs']:20.2f}")


def plot(result, plt):
    """The figure of the Concepts page, drawn with pyplot ``plt`` (saved by example_command)."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    positions = np.arange(4)
    width = 0.8 / len(result["runs"])
    for index, run in enumerate(result["runs"]):
        left.bar(positions + (index - 1) * width, run["weights"], width=width,
                 label=f"p = {run['p']}")
    left.set_xticks(positions, ["x1 (strong)", "x2", "x3", "x4"])
    left.set_ylabel("trained weight")
    left.set_title("weights of the neuron, input dropout rate p")
    left.legend()
    right.plot(result["share_curve_p"], result["share_curve"], color="grey",
               label="closed form (expected-loss minimiser)")
    right.plot([run["p"] for run in result["runs"]],
               [run["strong_share"] for run in result["runs"]],
               "o", color="C3", label="trained with fastdrop.nn")
    right.axhline(0.25, color="grey", linestyle=":", label="even split")
    right.set_xlabel("input drop probability p")
    right.set_ylabel("|w1| / sum |w|")
    right.set_title("share of the weight on the strong input")
    right.legend()
    return figure


def main(argv=None):
    """Command line: demonstrate, print, save, check the property; returns the result dict."""
    return example_command.run(__doc__, demonstrate, report, plot, check, argv)


if __name__ == "__main__":
    main()
