"""The cost function jitters with dropout: check that J falls with dropout off, then turn it on.

Gradient descent on the whole training set with a small enough step makes the cost
J(w) fall at every step. With dropout on, each step's cost is measured through a new
random mask, J(w; mask), so it jumps up and down even when training goes well: a curve
that no longer says whether the learning rate is right. The debugging recipe:

1. turn dropout off (evaluation mode) and check that the full-batch J falls at every
   step (``fastdrop.nn.check_descent``); if it rises, lower the learning rate;
2. turn dropout on and train; judge progress by the evaluation-mode cost, not by the
   per-step cost.

This script trains an MLP on scikit-learn's digits (all 1797 images, standardised) with
full-batch gradient descent, so the mask is the only source of noise: once with dropout
off (J falls at every step), once with dropout on (J rises at many steps while the
evaluation-mode J still falls), and runs the check at a good and at a too-large
learning rate (the jittering curve looks much the same at both).

Run: ``python examples/cost_jitter.py [--quick] [--plot PATH.png] [--json PATH]``
"""

import numpy as np

import fastdrop.nn as nn

import example_command  # examples/example_command.py: the shared command line

DROPOUT_RATES = [0.1, 0.5, 0.5]  # light on the input, 0.5 on each hidden layer
GOOD_LR = 0.3
TOO_LARGE_LR = 1.5


def load_standardised_digits():
    """scikit-learn's bundled digits (no download), each pixel standardised, as float32."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    std = X.std(axis=0)
    return ((X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)).astype(np.float32), y


def full_batch_descent(model, X, y, lr, steps, *, dropout):
    """Full-batch SGD steps; returns (each step's cost, the evaluation-mode cost after it)."""
    model.train(dropout)  # training mode draws masks; evaluation mode is dropout off
    optimizer = nn.SGD(model.parameters(), lr=lr)
    step_costs, evaluation_costs = [], []
    for _ in range(steps):
        optimizer.zero_grad()
        cost = nn.cross_entropy(model(nn.Tensor(X)), y)
        cost.backward()
        optimizer.step()
        step_costs.append(cost.item())
        evaluation_costs.append(nn.evaluate(model, X, y)[0])
    return step_costs, evaluation_costs


def rises(costs):
    """Number of steps whose cost is higher than the step before."""
    return int(np.sum(np.diff(costs) > 0))


def demonstrate(*, quick=False, seed=0):
    """Both training runs and the two checks; returns the cost curves and counts."""
    hidden, steps = (64, 60) if quick else (256, 200)
    X, y = load_standardised_digits()
    sizes = [X.shape[1], hidden, hidden, y.max() + 1]

    def fresh_model():  # same seed: same initial weights and masks for every run
        return nn.MLP(sizes, dropout=DROPOUT_RATES, seed=seed)

    model = fresh_model()
    good_check = nn.check_descent(model, X, y, optimizer=nn.SGD(model.parameters(), lr=GOOD_LR),
                                  steps=steps)
    bad_check = nn.check_descent(model, X, y,
                                 optimizer=nn.SGD(model.parameters(), lr=TOO_LARGE_LR), steps=steps)
    off_costs, _ = full_batch_descent(fresh_model(), X, y, GOOD_LR, steps, dropout=False)
    on_costs, on_evaluation = full_batch_descent(fresh_model(), X, y, GOOD_LR, steps, dropout=True)
    bad_on_costs, bad_on_evaluation = full_batch_descent(fresh_model(), X, y, TOO_LARGE_LR, steps,
                                                         dropout=True)
    return {
        "sizes": sizes, "dropout_rates": DROPOUT_RATES, "steps": steps, "seed": seed,
        "good_lr": GOOD_LR, "too_large_lr": TOO_LARGE_LR,
        "dropout_off": off_costs, "dropout_on": on_costs, "dropout_on_evaluation": on_evaluation,
        "too_large_dropout_on": bad_on_costs, "too_large_dropout_on_evaluation": bad_on_evaluation,
        "rises_dropout_off": rises(off_costs), "rises_dropout_on": rises(on_costs),
        "rises_dropout_on_evaluation": rises(on_evaluation),
        "rises_too_large_dropout_on": rises(bad_on_costs),
        "check_good": {"ok": good_check.ok, "rising_steps": good_check.rising_steps,
                       "losses": good_check.losses},
        "check_too_large": {"ok": bad_check.ok, "rising_steps": bad_check.rising_steps,
                            "losses": bad_check.losses},
    }


def check(result):
    """J falls at every step with dropout off, jitters with it on; the check catches the bad lr."""
    if not result["check_good"]["ok"] or result["rises_dropout_off"]:
        raise AssertionError(f"with dropout off at lr {result['good_lr']} the cost rose at steps "
                             f"{result['check_good']['rising_steps']}")
    if not result["rises_dropout_on"] >= 0.1 * result["steps"]:  # measured: about 25-45%
        raise AssertionError(f"with dropout on the cost rose at only {result['rises_dropout_on']} "
                             f"of {result['steps']} steps")
    if result["check_too_large"]["ok"]:
        raise AssertionError(f"check_descent did not flag lr {result['too_large_lr']}")


def report(result):
    steps = result["steps"]
    print(f"digits, MLP {'-'.join(map(str, result['sizes']))}, dropout {result['dropout_rates']}, "
          f"full-batch SGD, {steps} steps")
    print(f"lr {result['good_lr']}: cost rose at {result['rises_dropout_off']} of {steps} steps "
          f"with dropout off ({result['dropout_off'][0]:.4f} -> {result['dropout_off'][-1]:.4f})")
    print(f"lr {result['good_lr']}: cost rose at {result['rises_dropout_on']} of {steps} steps "
          f"with dropout on ({result['dropout_on'][0]:.4f} -> {result['dropout_on'][-1]:.4f}); "
          f"its evaluation-mode cost rose at {result['rises_dropout_on_evaluation']} "
          f"({result['dropout_on_evaluation'][-1]:.4f} at the end)")
    print(f"lr {result['too_large_lr']}: cost rose at {result['rises_too_large_dropout_on']} of "
          f"{steps} steps with dropout on: the jitter looks alike at both rates")
    for name, lr in (("check_good", result["good_lr"]),
                     ("check_too_large", result["too_large_lr"])):
        check_result = result[name]
        print(f"check_descent at lr {lr} (dropout off): ok = {check_result['ok']}, rising steps "
              f"{check_result['rising_steps'][:10]}"
              f"{' ...' if len(check_result['rising_steps']) > 10 else ''}")


def plot(result, plt):
    """The figure of the Concepts page, drawn with pyplot ``plt`` (saved by example_command)."""
    steps = np.arange(1, result["steps"] + 1)
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(steps, result["dropout_on"], color="C1", linewidth=0.8,
              label="dropout on: cost of each step")
    left.plot(steps, result["dropout_on_evaluation"], color="C3",
              label="dropout on: evaluation-mode cost")
    left.plot(steps, result["dropout_off"], color="C0", label="dropout off")
    left.set_ylim(0, 1.2)  # linear scale: the jitter is visible
    left.set_xlabel("full-batch step")
    left.set_ylabel("cross-entropy J")
    left.set_title(f"digits, lr {result['good_lr']}: J jitters with dropout")
    left.legend()
    for name, color in (("check_good", "C0"), ("check_too_large", "C3")):
        lr = result["good_lr"] if name == "check_good" else result["too_large_lr"]
        losses = result[name]["losses"]
        right.plot(np.arange(len(losses)), losses, color=color,
                   label=f"lr {lr}: {len(result[name]['rising_steps'])} rising steps")
    right.set_yscale("log")
    right.set_xlabel("step")
    right.set_ylabel("J with dropout off")
    right.set_title("recipe step 1: check_descent with dropout off")
    right.legend()
    return figure


def main(argv=None):
    """Command line: demonstrate, print, save, check the property; returns the result dict."""
    return example_command.run(__doc__, demonstrate, report, plot, check, argv)


if __name__ == "__main__":
    main()
