"""Dropout as adaptive L2: SGD with input dropout lands on the penalised w*, not on least squares.

For linear regression with inverted dropout on the inputs, X~ = X * M / (1 - p) with
M_ij ~ Bernoulli(1 - p), the expected loss over the masks is (Srivastava et al. 2014, §9.1)

    E ||y - X~ w||^2 = ||y - X w||^2 + p / (1 - p) * sum_j w_j^2 ||X_j||^2,

least squares plus an L2 penalty whose weight for column j grows with that column's norm.
Its minimiser is

    w* = (X^T X + p / (1 - p) * diag(X^T X))^-1 X^T y.

This script checks the identity by Monte Carlo at a fixed w, then runs mini-batch SGD on
the dropped-out loss (masks drawn by ``fastdrop.dropout`` on the inputs, a fresh mask for
every row of every epoch) with a decaying step and Polyak averaging of the iterates, and
shows that the average lands on w* and not on the least-squares solution w_ls.

Run: ``python examples/adaptive_l2.py [--quick] [--plot PATH.png] [--json PATH]``
"""

import numpy as np

import fastdrop

import example_command  # examples/example_command.py: the shared command line

FEATURE_SCALES = [4.0, 2.0, 1.0, 0.5, 0.25]  # very different column norms: very different penalties
TRUE_WEIGHTS = [1.0, -1.0, 2.0, 3.0, -4.0]
FEATURE_CORRELATION = 0.5
NOISE_STD = 0.5


def make_problem(rows, seed):
    """Correlated features with column scales ``FEATURE_SCALES`` and a noisy linear target."""
    rng = np.random.default_rng(seed)
    features = len(FEATURE_SCALES)
    correlation = ((1 - FEATURE_CORRELATION) * np.eye(features)
                   + FEATURE_CORRELATION * np.ones((features, features)))
    X = rng.standard_normal((rows, features)) @ np.linalg.cholesky(correlation).T
    X *= FEATURE_SCALES
    y = X @ np.array(TRUE_WEIGHTS) + NOISE_STD * rng.standard_normal(rows)
    return X, y


def closed_form(X, y, p):
    """(w_star, w_ls): the minimiser of the expected dropout loss and of the plain loss."""
    gram = X.T @ X
    penalty = p / (1 - p) * np.diag(np.diag(gram))
    w_star = np.linalg.solve(gram + penalty, X.T @ y)
    w_ls = np.linalg.lstsq(X, y, rcond=None)[0]
    return w_star, w_ls


def check_expected_loss(X, y, w, p, masks, seed):
    """Monte Carlo mean of ||y - X~ w||^2 over ``masks`` masks, its standard error, the formula."""
    generator = fastdrop.Generator(seed)
    losses = np.empty(masks)
    for index in range(masks):
        dropped, _ = generator.dropout(X, p)
        losses[index] = np.sum((y - dropped @ w) ** 2)
    formula = np.sum((y - X @ w) ** 2) + p / (1 - p) * np.sum(w ** 2 * np.sum(X ** 2, axis=0))
    return losses.mean(), losses.std(ddof=1) / np.sqrt(masks), formula


def sgd_with_input_dropout(X, y, p, *, epochs, batch_size, seed):
    """Mini-batch SGD on (1/B) ||y_b - X~_b w||^2, decaying step; returns the averaged iterates.

    Returns
    -------
    averaged : ndarray
        Mean of the iterates of the second half of training (Polyak-Ruppert averaging).
    trace_steps : list of int
        Steps at which ``trace`` was recorded.
    trace : list of ndarray
        Running average (second half) or current iterate (first half) at those steps.
    """
    rng = np.random.default_rng(seed)
    generator = fastdrop.Generator(seed)
    rows, features = X.shape
    steps_per_epoch = rows // batch_size
    total_steps = epochs * steps_per_epoch
    # step 0.5 / E||x~||^2: stable for the noisy dropped inputs, decaying like t^-1/2
    first_step = 0.5 * (1 - p) / np.mean(np.sum(X ** 2, axis=1))
    weights = np.zeros(features)
    averaged, averaged_count = np.zeros(features), 0
    trace_steps, trace = [], []
    step = 0
    for _ in range(epochs):
        order = rng.permutation(rows)
        dropped, _ = generator.dropout(X[order], p)  # a fresh mask for every row this epoch
        targets = y[order]
        for start in range(0, steps_per_epoch * batch_size, batch_size):
            batch = dropped[start:start + batch_size]
            batch_targets = targets[start:start + batch_size]
            gradient = -2.0 / batch_size * batch.T @ (batch_targets - batch @ weights)
            weights -= first_step / np.sqrt(1 + step / (total_steps / 10)) * gradient
            step += 1
            if step > total_steps // 2:
                averaged_count += 1
                averaged += (weights - averaged) / averaged_count
            if step % max(1, total_steps // 200) == 0:
                trace_steps.append(step)
                trace.append(averaged.copy() if averaged_count else weights.copy())
    return averaged, trace_steps, trace


def demonstrate(*, quick=False, seed=0, p=0.5):
    """Closed forms, the Monte Carlo check of the identity, and SGD; returns the numbers."""
    rows, epochs, masks = (400, 100, 2000) if quick else (400, 1000, 20000)
    X, y = make_problem(rows, seed)
    w_star, w_ls = closed_form(X, y, p)
    mc_mean, mc_error, formula = check_expected_loss(X, y, w_ls, p, masks, seed + 1)
    averaged, trace_steps, trace = sgd_with_input_dropout(X, y, p, epochs=epochs, batch_size=16,
                                                          seed=seed + 2)
    gap = np.linalg.norm(w_star - w_ls)
    return {
        "p": p, "rows": rows, "epochs": epochs, "batch_size": 16, "masks": masks, "seed": seed,
        "feature_scales": FEATURE_SCALES,
        "w_star": w_star.tolist(), "w_ls": w_ls.tolist(), "w_sgd": averaged.tolist(),
        "distance_star_to_ls": float(gap),
        "relative_error_to_star": float(np.linalg.norm(averaged - w_star) / gap),
        "relative_distance_to_ls": float(np.linalg.norm(averaged - w_ls) / gap),
        "expected_loss_monte_carlo": float(mc_mean),
        "expected_loss_standard_error": float(mc_error),
        "expected_loss_formula": float(formula),
        "trace_steps": trace_steps, "trace": [weights.tolist() for weights in trace],
    }


def check(result):
    """The properties this example demonstrates; raises AssertionError if one fails."""
    z = ((result["expected_loss_monte_carlo"] - result["expected_loss_formula"])
         / result["expected_loss_standard_error"])
    if abs(z) > 4:  # the Monte Carlo mean is within 4 standard errors of the identity
        raise AssertionError(f"E||y - X~w||^2 identity off by {z:.1f} standard errors")
    if result["relative_error_to_star"] > 0.1:  # within 10% of the w*-to-w_ls distance
        raise AssertionError(f"SGD average is {result['relative_error_to_star']:.3f} of "
                             "|w* - w_ls|"
                             "away from w*")
    if not result["relative_error_to_star"] < result["relative_distance_to_ls"]:
        raise AssertionError("SGD average is closer to least squares than to w*")


def report(result):
    print(f"linear regression, {result['rows']} rows, column scales {result['feature_scales']}, "
          f"input dropout p = {result['p']}")
    print(f"E||y - X~w||^2 at w = w_ls over {result['masks']} masks: "
          f"{result['expected_loss_monte_carlo']:.2f} "
          f"+- {result['expected_loss_standard_error']:.2f}"
          f" (formula: {result['expected_loss_formula']:.2f})")
    for name in ("w_ls", "w_star", "w_sgd"):
        print(f"  {name:7s}" + "".join(f"{value:9.4f}" for value in result[name]))
    print(f"|w_sgd - w*| / |w* - w_ls| = {result['relative_error_to_star']:.4f}; "
          f"|w_sgd - w_ls| / |w* - w_ls| = {result['relative_distance_to_ls']:.4f} "
          f"({result['epochs']} epochs, batch {result['batch_size']})")


def plot(result, plt):
    """The figure of the Concepts page, drawn with pyplot ``plt`` (saved by example_command)."""
    trace = np.array(result["trace"])
    w_star, w_ls = np.array(result["w_star"]), np.array(result["w_ls"])
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.semilogy(result["trace_steps"], np.linalg.norm(trace - w_star, axis=1), label="to w*")
    left.semilogy(result["trace_steps"], np.linalg.norm(trace - w_ls, axis=1), label="to w_ls")
    left.axvline(result["trace_steps"][-1] / 2, color="grey", linestyle=":",
                 label="averaging starts")
    left.set_xlabel("SGD step")
    left.set_ylabel("distance of the (averaged) iterate")
    left.set_title("SGD with fastdrop input dropout")
    left.legend()
    positions = np.arange(len(w_star))
    for shift, (name, values) in zip((-0.27, 0, 0.27), (("least squares w_ls", w_ls),
                                                         ("closed form w*", w_star),
                                                         ("SGD average", result["w_sgd"]))):
        right.bar(positions + shift, values, width=0.27, label=name)
    right.set_xticks(positions, [f"w{j + 1}\n(scale {scale:g})"
                                 for j, scale in enumerate(result["feature_scales"])])
    right.set_title(f"weights, p = {result['p']}")
    right.legend()
    return figure


def main(argv=None):
    """Command line: demonstrate, print, save, check the property; returns the result dict."""
    return example_command.run(__doc__, demonstrate, report, plot, check, argv,
                               extra_options=[("--p", dict(type=float, default=0.5,
                                                           help="input drop probability"))])


if __name__ == "__main__":
    main()
