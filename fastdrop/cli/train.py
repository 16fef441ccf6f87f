"""``fastdrop train``: train an MLP without and with dropout, compare them, plot and save metrics.

The data are scikit-learn's bundled digits (offline) or ``--data FILE.npz``
holding arrays ``X`` (samples, features) and ``y`` (samples,) of integer labels.
Both runs use the same stratified split, initial weights and seed; they differ
only in dropout.
"""
import argparse
import contextlib
import json
import os
import platform
import shlex
import sys
import time

from . import arguments

DEFAULTS = {
    "test_size": 0.3, "hidden": [512, 512], "activation": "relu", "dropout": "auto",
    "epochs": 40, "batch_size": 64, "optimizer": "adam", "momentum": 0.9, "weight_decay": 0.0,
    "seed": 0, "dtype": "float32",
}
DEFAULT_LR = {"adam": 1e-3, "sgd": 0.05}


def register(subparsers):
    """Add the ``train`` subcommand to ``subparsers``, with `run` as its handler."""
    parser = subparsers.add_parser(
        "train", help="train an MLP without and with dropout (digits by default) and compare",
        description="Train an MLP on scikit-learn's digits or on --data FILE.npz, once without "
                    "dropout and once with, and compare train/test accuracy and their gap.")
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=arguments.input_file, metavar="FILE.npz",
                      help="arrays X (samples, features) and y (samples,) of integer labels; "
                           "default: scikit-learn's digits (8x8 images, 1797 samples)")
    data.add_argument("--test-size", type=arguments.number(0, 1, low_open=True, high_open=True),
                      default=DEFAULTS["test_size"], metavar="F",
                      help="fraction of each class held out for testing, in (0, 1) "
                           "(default %(default)s)")
    model = parser.add_argument_group("model")
    model.add_argument("--hidden", type=arguments.integer(1), nargs="+",
                       default=DEFAULTS["hidden"], metavar="N",
                       help="hidden layer widths, each >= 1 (default: 512 512)")
    model.add_argument("--activation", choices=["relu", "tanh"], default=DEFAULTS["activation"])
    model.add_argument("--dropout", type=_dropout_setting, default=DEFAULTS["dropout"],
                       metavar="auto|RATE|R0,R1,...",
                       help="'auto' (fastdrop.nn.suggest_dropout), one rate in [0, 1) for every "
                            "hidden layer, or one rate per Linear layer input (default auto)")
    model.add_argument("--recompute", action="store_true",
                       help="Dropout(recompute=True): regenerate masks in backward, store none")
    model.add_argument("--dtype", choices=["float32", "float64"], default=DEFAULTS["dtype"])
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=arguments.integer(1), default=DEFAULTS["epochs"],
                          help="passes over the training part, >= 1 (default %(default)s)")
    training.add_argument("--batch-size", type=arguments.integer(1),
                          default=DEFAULTS["batch_size"],
                          help="samples per step, >= 1 (default %(default)s)")
    training.add_argument("--optimizer", choices=["adam", "sgd"], default=DEFAULTS["optimizer"])
    training.add_argument("--lr", type=arguments.number(0, low_open=True),
                          help="learning rate, > 0 (default 1e-3 adam, 0.05 sgd)")
    training.add_argument("--momentum", type=arguments.number(0, 1, high_open=True),
                          help=f"SGD momentum in [0, 1) (default {DEFAULTS['momentum']})")
    training.add_argument("--weight-decay", type=arguments.number(0),
                          default=DEFAULTS["weight_decay"],
                          help="SGD weight decay, >= 0 (default %(default)s)")
    training.add_argument("--max-norm", type=arguments.number(0, low_open=True), metavar="C",
                          help="max-norm constraint on each unit's incoming weights, > 0")
    training.add_argument("--seed", type=arguments.seed, default=DEFAULTS["seed"],
                          help="seed of the split, weights, shuffling and masks, 0 to 2^64 - 1 "
                               "(default 0)")
    training.add_argument("--threads", type=arguments.threads,
                          help=f"threads for fastdrop's kernels and (with threadpoolctl) BLAS, "
                               f"1 to {arguments.MAX_THREADS}")
    training.add_argument("--check-descent", action="store_true",
                          help="before each run, check that the loss falls with dropout off")
    output = parser.add_argument_group("output")
    output.add_argument("--plot", type=arguments.plot_file, metavar="PATH.png",
                        help="save loss and accuracy curves (needs matplotlib; any format it "
                             "writes: .png, .pdf, .svg, ...)")
    output.add_argument("--json", type=arguments.output_file, metavar="PATH",
                        help="save metrics, settings and machine")
    output.add_argument("--quiet", action="store_true", help="print only the final table")
    parser.set_defaults(handler=run)


def fail(message):
    """Stop before any training: `fastdrop.cli.main` reports ``message`` (exit status 2)."""
    raise arguments.UsageError(message)


def run(args):
    """Run ``fastdrop train``: train the MLP without and with dropout, print the comparison.

    Also writes the metrics (``--json``) and the curves (``--plot``) if asked; returns 0.
    """
    import numpy as np

    import fastdrop
    import fastdrop.nn as nn

    dropout = _check_arguments(args)
    X, labels, source = _load(args.data)
    classes, y = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        fail(f"--data {args.data!r}: y holds a single class ({classes[0]}); classification "
             f"needs at least two")
    train, test = _stratified_split(y, args.test_size, args.seed)
    dtype = np.dtype(args.dtype)
    sizes = [X.shape[1], *args.hidden, len(classes)]
    _check_memory(sizes, len(X), dtype.itemsize, args.hidden)
    mean, std = X[train].mean(axis=0), X[train].std(axis=0)
    X = ((X - mean) / np.where(std > 0, std, 1.0)).astype(dtype)  # statistics of the train part
    with _threads(args.threads):
        report = {
            "command": _command(args),
            "fastdrop": fastdrop.__version__,
            "machine": _machine(),
            "data": {"source": source, "samples": len(X), "features": X.shape[1],
                     "classes": classes.tolist(), "train": len(train), "test": len(test)},
            "model": {"sizes": sizes, "activation": args.activation, "dtype": args.dtype},
            "runs": {},
        }
        if not args.quiet:
            print(f"fastdrop train: {source}, {len(train)} train / {len(test)} test samples, "
                  f"MLP {'-'.join(map(str, sizes))} ({args.activation}, {args.dtype}), "
                  f"{args.optimizer}, {args.epochs} epochs, batch {args.batch_size}, "
                  f"seed {args.seed}, {report['machine']['threads']} threads")
        for name, rates in (("without dropout", 0.0), ("with dropout", dropout)):
            report["runs"][name] = _train_one(nn, args, name, sizes, rates,
                                              (X[train], y[train]), (X[test], y[test]))
    _print_table(report["runs"])
    if args.json:
        with open(args.json, "w") as file:
            json.dump(report, file, indent=1)
        print(f"metrics written to {args.json}")
    if args.plot:
        _plot(report, args.plot)
        print(f"plot written to {args.plot}")
    return 0


def _train_one(nn, args, name, sizes, rates, train, test):
    """One run from the seed's initial weights: its metrics and per-epoch history."""
    X_train, y_train = train
    model = nn.MLP(sizes, dropout=rates, activation=args.activation, recompute=args.recompute,
                   dtype=X_train.dtype, seed=args.seed)
    optimizer = _optimizer(nn, args, model)
    if not args.quiet:
        print(f"\n{name}: rates {_rates_text(model.dropout_rates)} (input of each Linear)")
    descent = None
    if args.check_descent:
        descent = nn.check_descent(model, X_train, y_train, optimizer=optimizer)
        if not args.quiet:
            print(f"  check_descent (dropout off, full batch): {descent}")
    start = time.perf_counter()
    history = nn.fit(model, X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                     optimizer=optimizer, seed=args.seed, validation_data=test, progress=False,
                     callback=None if args.quiet else _print_epoch)
    seconds = time.perf_counter() - start
    history["test_loss"] = history.pop("validation_loss")
    history["test_accuracy"] = history.pop("validation_accuracy")
    return {
        "dropout_rates": model.dropout_rates,
        "train_accuracy": history["train_accuracy"][-1],
        "test_accuracy": history["test_accuracy"][-1],
        "gap": history["train_accuracy"][-1] - history["test_accuracy"][-1],
        "seconds": seconds,
        "descent_check": None if descent is None else {
            "ok": descent.ok, "rising_steps": descent.rising_steps, "losses": descent.losses},
        "history": history,
    }


def _dropout_rates(text):
    """'auto', one rate (float) or a list of rates, each in [0, 1); ValueError if none of them."""
    if text == "auto":
        return "auto"
    try:
        rates = [float(part) for part in text.split(",")]
    except ValueError:
        raise ValueError(f"must be 'auto', a rate or comma-separated rates, got {text!r}") from None
    if not all(0 <= rate < 1 for rate in rates):  # NaN fails too
        raise ValueError(f"dropout rates must lie in [0, 1), got {text!r}")
    return rates[0] if len(rates) == 1 else rates


def _dropout_setting(text):
    """The argument type of --dropout: the text itself, once `_dropout_rates` reads it."""
    try:
        _dropout_rates(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _check_arguments(args):
    """Refuse settings that need several options to judge; returns the parsed --dropout.

    Single values were checked by the argument types. Fills in the SGD momentum default.
    """
    if args.optimizer == "adam":
        for option, value in (("--weight-decay", args.weight_decay or None),
                              ("--momentum", args.momentum)):
            if value is not None:
                fail(f"{option} {value} applies to --optimizer sgd, not adam")
    elif args.momentum is None:
        args.momentum = DEFAULTS["momentum"]
    arguments.check_distinct_files(("--data", args.data), ("--plot", args.plot),
                                   ("--json", args.json))
    rates = _dropout_rates(args.dropout)
    if isinstance(rates, list) and len(rates) != len(args.hidden) + 1:
        fail(f"--dropout {args.dropout} lists {len(rates)} rates; {len(args.hidden) + 1} Linear "
             f"layers need one each (input first) or give one rate for all hidden layers")
    return rates


def _check_memory(sizes, samples, itemsize, hidden):
    """Refuse a network whose weights and whole-set activations cannot fit in memory."""
    from itertools import pairwise

    parameters = sum(fan_in * fan_out + fan_out for fan_in, fan_out in pairwise(sizes))
    # weights, gradients and Adam's two moments; the activations of one pass over all samples
    needed = itemsize * (4 * parameters + 2 * samples * sum(sizes))
    arguments.check_fits_in_memory("--hidden", " ".join(map(str, hidden)), needed)


def _load(path):
    """(X as float64 (n, features), labels (n,), description); digits when path is None."""
    import numpy as np

    from fastdrop.nn.training import check_labels

    if path is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            fail("the default data set (digits) needs scikit-learn: pip install scikit-learn, "
                 "or pass --data FILE.npz")
        digits = load_digits()
        return digits.data.astype(np.float64), digits.target, "digits (scikit-learn)"
    def refuse(problem):
        fail(f"--data {path!r}: {problem}")

    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            refuse("holds a single array; it must be a .npz file with arrays X and y "
                   "(numpy.savez(path, X=X, y=y))")
        with archive:
            missing = [name for name in ("X", "y") if name not in archive.files]
            if missing:
                refuse(f"has no array named {' or '.join(repr(m) for m in missing)} "
                       f"(it holds: {', '.join(archive.files) or 'nothing'}); it needs X "
                       f"(samples, features) and y (samples,)")
            X, labels = archive["X"], archive["y"]
    except (OSError, ValueError) as error:
        refuse(f"cannot read it as a .npz file: {error}")
    if X.ndim != 2 or X.shape[0] < 2 or X.shape[1] < 1:
        refuse(f"X must be 2-D (samples, features) with at least 2 samples and 1 feature, "
               f"got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        refuse(f"X must be numeric, got dtype {X.dtype}")
    if not np.all(np.isfinite(X)):
        refuse("X contains NaN or infinite values")
    try:
        labels = check_labels(labels, len(X))
    except (TypeError, ValueError) as error:
        refuse(f"y: {error}")
    return X.astype(np.float64), labels, path


def _stratified_split(y, test_size, seed):
    """(train, test) indices holding out ``test_size`` of each class, shuffled by seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    held_out = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        held_out[members[:int(round(test_size * len(members)))]] = True
    train, test = rng.permutation(np.flatnonzero(~held_out)), np.flatnonzero(held_out)
    if len(train) == 0 or len(test) == 0:
        fail(f"--test-size {test_size} leaves {len(train)} train and {len(test)} test samples; "
             f"each part needs at least one")
    return train, test


def _optimizer(nn, args, model):
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    if args.optimizer == "adam":
        return nn.Adam(model.parameters(), lr=lr, max_norm=args.max_norm)
    return nn.SGD(model.parameters(), lr=lr, momentum=args.momentum,
                  weight_decay=args.weight_decay, max_norm=args.max_norm)


@contextlib.contextmanager
def _threads(threads):
    """Apply --threads to fastdrop and, if threadpoolctl is installed, to BLAS, for the block."""
    if threads is None:
        yield
        return
    import fastdrop

    before = fastdrop.get_num_threads()
    fastdrop.set_num_threads(threads)
    try:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            print("fastdrop train: threadpoolctl is not installed; BLAS keeps its own thread "
                  "count", file=sys.stderr)
            yield
        else:
            with threadpool_limits(threads):
                yield
    finally:
        fastdrop.set_num_threads(before)


def _print_epoch(epoch, history):
    print(f"  epoch {epoch:3d}  train loss {history['train_loss'][-1]:.4f} "
          f"acc {history['train_accuracy'][-1]:.4f}  |  test loss "
          f"{history['validation_loss'][-1]:.4f} acc {history['validation_accuracy'][-1]:.4f}")


def _rates_text(rates):
    return "none" if not any(rates) else "/".join(f"{rate:g}" for rate in rates)


def _print_table(runs):
    print(f"\n{'run':<17}{'dropout':<16}{'train acc':>10}{'test acc':>10}{'gap':>9}")
    for name, result in runs.items():
        print(f"{name:<17}{_rates_text(result['dropout_rates']):<16}"
              f"{result['train_accuracy']:>10.4f}{result['test_accuracy']:>10.4f}"
              f"{result['gap']:>9.4f}")


def _command(args):
    """The command line that reproduces this run, every setting spelled out."""
    words = ["fastdrop", "train"]
    if args.data:
        words += ["--data", args.data]
    words += ["--test-size", str(args.test_size), "--hidden", *map(str, args.hidden),
              "--activation", args.activation, "--dropout", args.dropout, "--dtype", args.dtype,
              "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
              "--optimizer", args.optimizer, "--seed", str(args.seed)]
    for option, value in (("--lr", args.lr), ("--max-norm", args.max_norm),
                          ("--threads", args.threads), ("--plot", args.plot),
                          ("--json", args.json)):
        if value is not None:
            words += [option, str(value)]
    if args.optimizer == "sgd":
        words += ["--momentum", str(args.momentum), "--weight-decay", str(args.weight_decay)]
    words += [flag for flag, on in (("--recompute", args.recompute),
                                    ("--check-descent", args.check_descent)) if on]
    return shlex.join(words)


def _machine():
    import numpy as np

    import fastdrop

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as file:
            cpu = next(line.split(":", 1)[1].strip() for line in file
                       if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    blas_threads = None
    try:
        from threadpoolctl import threadpool_info

        blas_threads = [pool["num_threads"] for pool in threadpool_info()
                        if pool.get("user_api") == "blas"]
    except ImportError:
        pass
    return {"cpu": cpu, "cpus": os.cpu_count(), "threads": fastdrop.get_num_threads(),
            "blas_threads": blas_threads, "python": platform.python_version(),
            "numpy": np.__version__, "platform": platform.platform()}


def _plot(report, path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 4.2), layout="constrained")
    FigureCanvasAgg(figure)
    losses, accuracies = figure.subplots(1, 2)
    for (name, result), color in zip(report["runs"].items(), ("tab:blue", "tab:orange")):
        history = result["history"]
        steps_per_epoch = len(history["batch_loss"]) / len(history["train_loss"])
        steps = [(index + 1) / steps_per_epoch for index in range(len(history["batch_loss"]))]
        epochs = range(1, len(history["train_loss"]) + 1)
        losses.plot(steps, history["batch_loss"], color=color, alpha=0.35, linewidth=0.7,
                    label=f"{name}: mini-batch loss")
        losses.plot(epochs, history["test_loss"], color=color, linewidth=2,
                    label=f"{name}: test loss")
        accuracies.plot(epochs, history["train_accuracy"], color=color, linestyle="--",
                        label=f"{name}: train")
        accuracies.plot(epochs, history["test_accuracy"], color=color,
                        label=f"{name}: test ({result['test_accuracy']:.3f})")
    losses.set(xlabel="epoch", ylabel="cross-entropy", yscale="log", title="loss")
    accuracies.set(xlabel="epoch", ylabel="accuracy", title="accuracy (evaluation mode)")
    for axes in (losses, accuracies):
        axes.legend(fontsize="small")
        axes.grid(alpha=0.3)
    data = report["data"]
    figure.suptitle(f"fastdrop train: {data['source']}, MLP "
                    f"{'-'.join(map(str, report['model']['sizes']))}", fontsize="medium")
    figure.savefig(path, dpi=110)
