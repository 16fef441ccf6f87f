"""One training step of a 784-1024-1024-10 MLP: fastdrop.nn against PyTorch, and dropout's share.

The step: forward (dropout 0.2 on the input, 0.5 after each hidden ReLU),
softmax cross-entropy, backward, SGD update with momentum; batch 128, float32.
Both libraries run with the same number of threads (fastdrop's kernels, NumPy's
BLAS through threadpoolctl, torch.set_num_threads).

    PYTHONPATH=. python benchmarks/test_bench_train.py [--threads N] [--rounds R]
        prints one table from one run: step times, the ratio, dropout's share
        (--kernel-threads K: diagnostic, fastdrop's kernels on K threads)
    PYTHONPATH=. python -m pytest benchmarks/test_bench_train.py
        the same steps under pytest-benchmark

Dropout's share is measured inside real fastdrop steps: every fastdrop.dropout
and fastdrop.dropout_backward call the step makes is timed.
"""
import argparse
import contextlib
import platform
import time

import numpy as np
import pytest

import fastdrop
import fastdrop.nn as nn

SIZES = (784, 1024, 1024, 10)
BATCH = 128
RATES = (0.2, 0.5, 0.5)
LR, MOMENTUM = 0.01, 0.9


def batch(seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((BATCH, SIZES[0])).astype(np.float32),
            rng.integers(0, SIZES[-1], BATCH))


def fastdrop_step(seed=0):
    """A function running one fastdrop.nn training step."""
    model = nn.MLP(list(SIZES), dropout=list(RATES), seed=seed)
    optimizer = nn.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    X, y = batch(seed)

    def step():
        optimizer.zero_grad()
        loss = nn.cross_entropy(model(nn.Tensor(X)), y)
        loss.backward()
        optimizer.step()
    return step


def torch_step(seed=0):
    """A function running the same step in PyTorch."""
    import torch
    from bench_torch import mlp_model

    torch.manual_seed(seed)
    model = mlp_model(torch, SIZES, RATES)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    X, y = (torch.from_numpy(array) for array in batch(seed))

    def step():
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(X), y)
        loss.backward()
        optimizer.step()
    return step


@contextlib.contextmanager
def same_threads(threads, kernel_threads=None):
    """fastdrop, NumPy's BLAS and torch (when installed) all on ``threads`` threads.

    ``kernel_threads`` gives fastdrop's kernels another count (a diagnostic).
    """
    before = fastdrop.get_num_threads()
    fastdrop.set_num_threads(threads if kernel_threads is None else kernel_threads)
    stack = contextlib.ExitStack()
    try:
        from threadpoolctl import threadpool_limits

        stack.enter_context(threadpool_limits(threads))
    except ImportError:
        pass  # BLAS keeps its default, all CPUs
    try:
        import torch

        torch_before = torch.get_num_threads()
        torch.set_num_threads(threads)
        stack.callback(torch.set_num_threads, torch_before)
    except ImportError:
        pass
    try:
        with stack:
            yield
    finally:
        fastdrop.set_num_threads(before)


@contextlib.contextmanager
def dropout_timer():
    """Time every dropout call fastdrop.nn makes (it calls them through the package).

    Yields the list that collects the seconds of each call.
    """
    spent = []
    originals = {name: getattr(fastdrop, name) for name in ("dropout", "dropout_backward",
                                                             "dropout_backward_recompute")}

    def timed(function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            result = function(*args, **kwargs)
            spent.append(time.perf_counter() - start)
            return result
        return wrapper

    for name, function in originals.items():
        setattr(fastdrop, name, timed(function))
    try:
        yield spent
    finally:
        for name, function in originals.items():
            setattr(fastdrop, name, function)


def measure(threads, rounds=6, steps_per_round=10, warmup=3, kernel_threads=None):
    """Median step times of fastdrop and torch, and dropout's share, from one run.

    The libraries take turns in rounds of ``steps_per_round`` steps (after
    ``warmup`` untimed ones), so both see the same machine load, while neither
    runs in the middle of the other's steps, where their idle worker threads
    would compete for the cores.
    """
    steps = {"fastdrop": fastdrop_step()}
    try:
        steps["torch"] = torch_step()
    except ImportError:
        pass
    times = {name: [] for name in steps}
    shares = []
    with same_threads(threads, kernel_threads), dropout_timer() as spent:
        for _ in range(rounds):
            for name, step in steps.items():
                for _ in range(warmup):
                    step()
                for _ in range(steps_per_round):
                    spent.clear()
                    start = time.perf_counter()
                    step()
                    times[name].append(time.perf_counter() - start)
                    if name == "fastdrop":
                        shares.append(sum(spent) / times[name][-1])
    result = {name: float(np.median(values)) for name, values in times.items()}
    result["dropout_share"] = float(np.median(shares))
    result["steps"] = rounds * steps_per_round
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=fastdrop.get_num_threads())
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--kernel-threads", type=int,
                        help="diagnostic: another thread count for fastdrop's kernels only")
    args = parser.parse_args()
    result = measure(args.threads, args.rounds, kernel_threads=args.kernel_threads)
    versions = f"fastdrop {fastdrop.__version__}, numpy {np.__version__}"
    try:
        import torch

        versions += f", torch {torch.__version__}"
    except ImportError:
        versions += ", torch not installed"
    kernels = ("" if args.kernel_threads is None
               else f" ({args.kernel_threads} for fastdrop's kernels)")
    print(f"{versions}; {platform.processor() or platform.machine()}, {args.threads} threads"
          f"{kernels}, median of {result['steps']} steps each, in alternating rounds")
    print(f"MLP {'-'.join(map(str, SIZES))}, batch {BATCH}, float32, dropout "
          f"{'/'.join(map(str, RATES))}, SGD momentum {MOMENTUM}")
    print(f"{'':<28}{'ms per step':>12}")
    print(f"{'fastdrop.nn':<28}{result['fastdrop'] * 1e3:>12.2f}")
    if "torch" in result:
        print(f"{'torch':<28}{result['torch'] * 1e3:>12.2f}")
        print(f"fastdrop time / torch time: {result['fastdrop'] / result['torch']:.3f}")
    print(f"dropout's share of the fastdrop step: {result['dropout_share']:.1%}")


@pytest.fixture(scope="module")
def threads():
    count = fastdrop.get_num_threads()
    with same_threads(count):
        yield count


@pytest.mark.benchmark(group="train step 784-1024-1024-10, batch 128")
@pytest.mark.parametrize("library", ["fastdrop", "torch"])
def test_train_step(benchmark, threads, library):
    if library == "torch":
        pytest.importorskip("torch")
    step = fastdrop_step() if library == "fastdrop" else torch_step()
    benchmark.extra_info["threads"] = threads
    benchmark.pedantic(step, rounds=30, warmup_rounds=5)


@pytest.mark.benchmark(group="train step 784-1024-1024-10, batch 128")
def test_train_step_dropout_share(benchmark, threads):
    step = fastdrop_step()
    for _ in range(5):
        step()
    shares = []
    with dropout_timer() as spent:
        def timed_step():
            spent.clear()
            start = time.perf_counter()
            step()
            shares.append(sum(spent) / (time.perf_counter() - start))
        benchmark.pedantic(timed_step, rounds=30)
    benchmark.extra_info["threads"] = threads
    benchmark.extra_info["dropout_share"] = float(np.median(shares))
    print(f"\ndropout's share of the step: {np.median(shares):.1%} ({threads} threads)")


if __name__ == "__main__":
    main()
