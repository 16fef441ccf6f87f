"""Inverted dropout: y = x * mask / (1 - p) keeps E[y] = x, so nothing changes at test time.

Each element is kept with probability 1 - p (mask = 1) and dropped otherwise (mask = 0).
Scaling the kept elements by 1 / (1 - p) during training makes the expected output equal
to the input,

    E[y] = x * E[mask] / (1 - p) = x * (1 - p) / (1 - p) = x,

so at test time dropout is simply switched off: y = x, with no scaling. (The original
formulation multiplied by the mask only, so E[y] = (1 - p) x during training, and had to
scale the weights by 1 - p at test time instead.)

This script checks with ``fastdrop.dropout``, for several p:

- the fraction of kept elements is 1 - p (within binomial error);
- a kept element is exactly x / (1 - p), a dropped one exactly 0;
- averaged over many masks, y approaches x for every element, with the standard error
  |x| sqrt(p / ((1 - p) K)) after K masks; without the 1 / (1 - p) it approaches (1 - p) x;
- with ``training=False`` the input comes back untouched.

Run: ``python examples/inverted_dropout.py [--quick] [--plot PATH.png] [--json PATH]``
"""

import numpy as np

import fastdrop

import example_command  # examples/example_command.py: the shared command line

INPUT = np.array([1.0, -0.5, 2.0, 0.25, -3.0, 1.5, -1.0, 0.75], dtype=np.float32)
DROP_RATES = [0.1, 0.5, 0.9]


def kept_fraction(p, elements, seed):
    """Fraction of kept elements among ``elements`` ones, and its z-score against 1 - p."""
    _, mask = fastdrop.dropout(np.ones(elements, np.float32), p, seed=seed)
    kept = int(mask.unpack().sum())
    z = (kept - elements * (1 - p)) / np.sqrt(elements * p * (1 - p))
    return kept / elements, float(z)


def mask_draws(x, p, masks, seed):
    """``masks`` dropout outputs of x (one row each) and their keep masks, from one generator.

    Stacking the copies into one (masks, n) array gives every copy its own mask bits
    (element indices differ), the same as ``masks`` separate calls with fresh streams.
    """
    stacked = np.tile(x, (masks, 1))
    y, mask = fastdrop.dropout(stacked, p, seed=fastdrop.Generator(seed))
    return y, mask.unpack()


def running_mean(draws, points=200):
    """Mean of the first K rows of ``draws`` at about ``points`` log-spaced values of K."""
    counts = np.unique(np.geomspace(1, len(draws), points).astype(int))
    sums = np.cumsum(draws, axis=0, dtype=np.float64)[counts - 1]
    return {"masks": counts.tolist(), "mean": (sums / counts[:, None]).tolist()}


def demonstrate(*, quick=False, seed=0):
    """The checks above for each p in ``DROP_RATES``; returns the numbers."""
    masks, elements = (20_000, 100_000) if quick else (200_000, 10_000_000)
    runs = []
    for index, p in enumerate(DROP_RATES):
        fraction, fraction_z = kept_fraction(p, elements, seed + index)
        y, keep = mask_draws(INPUT, p, masks, seed + 100 + index)
        scale = np.float32(1 / (1 - p))
        exact_values = bool(np.array_equal(y[keep], (np.broadcast_to(INPUT, y.shape) * scale)[keep])
                            and np.all(y[~keep] == 0))
        mean = y.astype(np.float64).mean(axis=0)
        standard_error = np.abs(INPUT) * np.sqrt(p / ((1 - p) * masks))
        unscaled_mean = (INPUT * keep).astype(np.float64).mean(axis=0)  # the 2012 formulation
        unscaled_error = np.sqrt(p * (1 - p) / masks)  # standard error of mean(x * mask) / x
        evaluation, none = fastdrop.dropout(INPUT, p, seed=seed, training=False)
        runs.append({
            "p": p,
            "kept_fraction": fraction, "kept_fraction_z": fraction_z,
            "kept_values_exact": exact_values,
            "mean": mean.tolist(), "standard_error": standard_error.tolist(),
            "mean_z": ((mean - INPUT) / standard_error).tolist(),
            "unscaled_mean_over_x": (unscaled_mean / INPUT).tolist(),
            "unscaled_z": ((unscaled_mean / INPUT - (1 - p)) / unscaled_error).tolist(),
            "evaluation_returns_input": bool(evaluation is INPUT and none is None),
            "running_mean": running_mean(y[:, :3]) if p == 0.5 else None,
        })
    return {"x": INPUT.tolist(), "masks": masks, "elements": elements, "seed": seed, "runs": runs}


def check(result):
    """E[y] = x, exact scaling, kept fraction 1 - p, identity at test time, or AssertionError."""
    for run in result["runs"]:
        p = run["p"]
        if abs(run["kept_fraction_z"]) > 5:
            raise AssertionError(f"p = {p}: kept fraction {run['kept_fraction']} is "
                                 f"{run['kept_fraction_z']:.1f} standard errors from {1 - p}")
        if not run["kept_values_exact"]:
            raise AssertionError(f"p = {p}: kept values are not exactly x / (1 - p)")
        worst = max(abs(z) for z in run["mean_z"])
        if worst > 5:  # 5 standard errors: chance below 1e-5 for the 24 elements checked
            raise AssertionError(f"p = {p}: mean of y is {worst:.1f} standard errors from x")
        if max(abs(z) for z in run["unscaled_z"]) > 5:
            raise AssertionError(f"p = {p}: x * mask does not average to (1 - p) x")
        if not run["evaluation_returns_input"]:
            raise AssertionError("training=False did not return the input unchanged")


def report(result):
    print(f"x = {result['x']}")
    print(f"{result['masks']} masks per element; kept fraction over {result['elements']} elements")
    for run in result["runs"]:
        p = run["p"]
        print(f"p = {p}: kept fraction {run['kept_fraction']:.5f} (1 - p = {1 - p:.5f}, "
              f"z = {run['kept_fraction_z']:+.2f}); kept values exactly x / (1 - p): "
              f"{run['kept_values_exact']}")
        print("   mean of y      " + "".join(f"{value:8.4f}" for value in run["mean"]))
        print("   z vs x         " + "".join(f"{value:8.2f}" for value in run["mean_z"]))
        unscaled = "".join(f"{value:8.4f}" for value in run["unscaled_mean_over_x"])
        print("   mean x*mask / x" + unscaled
              + f"   (1 - p = {1 - p:.2f})")
        print(f"   training=False returns x itself: {run['evaluation_returns_input']}")


def plot(result, plt):
    """The figure of the Concepts page, drawn with pyplot ``plt`` (saved by example_command)."""
    half = next(run for run in result["runs"] if run["p"] == 0.5)
    running = np.array(half["running_mean"]["mean"])
    draws = np.array(half["running_mean"]["masks"])
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for column in range(running.shape[1]):
        x = result["x"][column]
        band = 2 * abs(x) / np.sqrt(draws)  # p = 0.5: std of y is |x|
        line, = left.semilogx(draws, running[:, column], label=f"x = {x:g}")
        left.fill_between(draws, x - band, x + band, color=line.get_color(), alpha=0.15)
        left.axhline(x, color=line.get_color(), linestyle=":")
    left.set_ylim(-1.5, 3.0)
    left.set_xlabel("number of masks K")
    left.set_ylabel("mean of y over K masks")
    left.set_title("p = 0.5: the mean of y approaches x (band: 2 standard errors)")
    left.legend(loc="upper right")
    rates = [run["p"] for run in result["runs"]]
    right.plot(rates, [np.mean(run["unscaled_mean_over_x"]) for run in result["runs"]], "o-",
               label="x * mask (no scaling): E = (1 - p) x")
    right.plot(rates, [np.mean(np.array(run["mean"]) / np.array(result["x"]))
                       for run in result["runs"]], "s-", label="x * mask / (1 - p): E = x")
    right.set_xlabel("drop probability p")
    right.set_ylabel("mean over masks / x")
    right.set_title("why the 1 / (1 - p)")
    right.legend(loc="center left")
    return figure


def main(argv=None):
    """Command line: demonstrate, print, save, check the property; returns the result dict."""
    return example_command.run(__doc__, demonstrate, report, plot, check, argv)


if __name__ == "__main__":
    main()
