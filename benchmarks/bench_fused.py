"""The fused operations against their memory floors, their unfused compositions and torch.

    PYTHONPATH=. python benchmarks/bench_fused.py [--threads 2] [--rounds 7] [--markdown]
    PYTHONPATH=. python benchmarks/bench_fused.py --quick       # a smoke run, seconds
    python -m pytest benchmarks/test_bench_fused.py --benchmark-only

Two parts, the targets of issue 26 printed next to what they measure:

1. **dropout_add** (``residual + dropout(x)``), float32, 2^24 elements, p = 0.1, on the
   NumPy API: the fused ``fastdrop.dropout_add`` against

   - the **three-stream floor** ``y = x * s + r`` (no dropout; `scale_add` of the
     Cython extension, a plain C loop with threads on whole 64-element words as the
     kernels): the least any pass reading x and r and writing y can take
     (target <= 1.2x);
   - the **composition** ``fastdrop.dropout(x, p, out=t)`` then ``np.add(r, t, out=y)``:
     every buffer allocated once outside the timing, so neither form pays for page
     faults and the difference is the extra pass over memory (np.add runs on one
     thread, as NumPy does; target: fused >= 1.5x faster).

   ``bias_dropout_add`` (``residual + dropout(x + bias)``, x of shape (2^24 / 1024,
   1024)) the same way against its floor ``(x + b) * s + r`` and its composition
   ``np.add(x, b, out=t)``, ``fastdrop.dropout(t, p, inplace=True)``, ``np.add(r, t,
   out=y)`` (reported, no target). Every fused call writes its mask, as the
   compositions' dropout does; the floor has none. With torch installed,
   ``fastdrop.torch.dropout_add`` forward + backward against ``r + F.dropout(x, p)``
   (reported).
2. **softmax_dropout** at (16, 4, 128, 128) float32 (BERT-small's attention), p = 0.1,
   torch on the same threads (``torch.set_num_threads``): ``fastdrop.torch.softmax_dropout``
   forward (no grad) against ``torch.softmax`` alone on the same tensor (target <=
   1.25x); forward + backward through autograd (``torch.autograd.grad(y, x, g)``)
   against ``torch.softmax`` then ``F.dropout`` (target: >= 3x faster); and the NumPy
   ``fastdrop.softmax_dropout(x, p, out=y)`` forward (reported). Skipped, with a line
   saying so, where torch or softmax_dropout is not installed.

The versions of a group are timed with their samples interleaved, one of each per round
(`runner.time_callables`); ratios divide medians of one run. Times are reported, never
asserted.
"""
import argparse
import contextlib
import importlib.util

import numpy as np

from fastdrop.bench.runner import size_label, time_callables

SEED, STREAM = 1234, 0
N, P = 1 << 24, 0.1
FEATURES = 1024  # the bias's length: x is (N / FEATURES, FEATURES)
SOFTMAX_SHAPE = (16, 4, 128, 128)  # batch, heads, queries, keys: BERT-small's attention
QUICK_N, QUICK_SHAPE = 1 << 16, (2, 2, 32, 32)
FLOOR_LIMIT = 1.2  # dropout_add <= 1.2x the three-stream floor
COMPOSITION_SPEEDUP = 1.5  # fused >= 1.5x faster than fastdrop.dropout then np.add
SOFTMAX_FORWARD_LIMIT = 1.25  # softmax_dropout forward <= 1.25x torch.softmax
SOFTMAX_SPEEDUP = 3.0  # fwd+bwd >= 3x faster than torch.softmax then F.dropout

FLOOR = "floor: y = x * s + r (scale_add)"
BIAS_FLOOR = "floor: y = (x + b) * s + r (scale_add)"
FUSED = "fastdrop.dropout_add(x, r, p, out=y)"
BIAS_FUSED = "fastdrop.bias_dropout_add(x, b, r, p, out=y)"
COMPOSED = "fastdrop.dropout(x, p, out=t); np.add(r, t, out=y)"
BIAS_COMPOSED = "np.add(x, b, out=t); fastdrop.dropout(t, p, inplace=True); np.add(r, t, out=y)"
TORCH_SOFTMAX = "torch.softmax(x, -1)"
FASTDROP_SOFTMAX = "fastdrop.torch.softmax_dropout(x, p)"
TORCH_COMPOSED = "F.dropout(torch.softmax(x, -1), p)"
NUMPY_SOFTMAX = "fastdrop.softmax_dropout(x, p, out=y) (NumPy)"
TORCH_ADD = "r + F.dropout(x, p)"
FASTDROP_ADD = "fastdrop.torch.dropout_add(x, r, p)"
COMPOSITION_NOTE = ("every buffer (y, t) allocated once outside the timing; the fused call and "
                    "the composition's dropout store the mask; np.add runs on one thread")


def machine_line(threads, torch_version=None):
    """One line naming the machine, the versions and the threads: the top of every output."""
    from fastdrop.bench.runner import header

    head = header([threads])
    load = head["load average"]
    parts = [head["cpu"], f"SIMD path {head['simd path']}", f"fastdrop {head['fastdrop']}",
             f"numpy {head['numpy']}"]
    if torch_version is not None:
        parts.append(f"torch {torch_version}")
    parts += [f"threads={threads}", f"load average {load[0]:.2f}" if load else "",
              head["date"]]
    return "; ".join(part for part in parts if part)


def add_arguments(parser, rounds=7):
    """--threads, --rounds (alias --repeat), --min-time, --markdown, --json, --quick."""
    from targets import add_script_arguments

    from fastdrop.cli import arguments

    parser.add_argument("--threads", type=arguments.threads, default=2,
                        help="fastdrop's and torch's threads (default 2)")
    add_script_arguments(parser, repeat=rounds)
    parser.add_argument("--rounds", dest="repeat", type=arguments.integer(1),
                        default=argparse.SUPPRESS,
                        help=f"interleaved rounds, one sample of each version per round "
                             f"(default {rounds}; the same as --repeat)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: tiny sizes, 1 round (the figures mean nothing)")


def _buffers(shape, dtype=np.float32, count=1):
    """``count`` arrays of ``shape`` holding standard normals (a fixed seed)."""
    rng = np.random.default_rng(SEED)
    return [rng.standard_normal(shape, dtype=np.float32).astype(dtype) for _ in range(count)]


def dropout_add_calls(n=N, p=P, threads=2):
    """{version: call} of residual + dropout(x): the fused call, its floor, its composition."""
    import fastdrop
    from fastdrop.kernels.cython import kernels

    x, residual = _buffers(n, count=2)
    y, t = np.empty_like(x), np.empty_like(x)
    scale = 1.0 / (1.0 - p)

    def floor():
        kernels.scale_add(x, residual, y, scale, threads)

    def fused():
        with fastdrop.num_threads(threads):
            return fastdrop.dropout_add(x, residual, p, seed=SEED, stream=STREAM, out=y)

    def composed():
        with fastdrop.num_threads(threads):
            _, mask = fastdrop.dropout(x, p, seed=SEED, stream=STREAM, out=t)
        return np.add(residual, t, out=y), mask

    return {FLOOR: floor, FUSED: fused, COMPOSED: composed}


def bias_dropout_add_calls(n=N, p=P, threads=2, features=FEATURES):
    """{version: call} of residual + dropout(x + bias), x of shape (n / features, features)."""
    import fastdrop
    from fastdrop.kernels.cython import kernels

    features = min(features, n)
    x, residual = (a.reshape(-1, features) for a in _buffers(n, count=2))
    bias = _buffers(features)[0]
    y, t = np.empty_like(x), np.empty_like(x)
    scale = 1.0 / (1.0 - p)

    def floor():
        kernels.scale_add(x.reshape(-1), residual.reshape(-1), y.reshape(-1), scale, threads,
                          bias=bias)

    def fused():
        with fastdrop.num_threads(threads):
            return fastdrop.bias_dropout_add(x, bias, residual, p, seed=SEED, stream=STREAM,
                                             out=y)

    def composed():
        np.add(x, bias, out=t)
        with fastdrop.num_threads(threads):
            _, mask = fastdrop.dropout(t, p, seed=SEED, stream=STREAM, inplace=True)
        return np.add(residual, t, out=y), mask

    return {BIAS_FLOOR: floor, BIAS_FUSED: fused, BIAS_COMPOSED: composed}


def softmax_dropout_missing():
    """Why the softmax_dropout part cannot run here, or None where it can."""
    import fastdrop

    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import fastdrop.torch

    if not hasattr(fastdrop, "softmax_dropout") or not hasattr(fastdrop.torch,
                                                               "softmax_dropout"):
        return "softmax_dropout not available in this fastdrop"
    return None


def softmax_calls(shape=SOFTMAX_SHAPE, p=P, threads=2):
    """({version: forward call}, {version: forward + backward call}) of softmax then dropout."""
    import torch

    import fastdrop
    import fastdrop.torch

    torch.set_num_threads(threads)
    x = torch.from_numpy(_buffers(shape)[0])
    x_grad = x.clone().requires_grad_(True)
    g = torch.from_numpy(_buffers(shape, count=2)[1])
    y = np.empty(shape, np.float32)
    scores = x.numpy()

    def torch_softmax():
        with torch.no_grad():
            return torch.softmax(x, -1)

    def fastdrop_softmax():
        with torch.no_grad():
            return fastdrop.torch.softmax_dropout(x, p, -1)

    def numpy_softmax():
        with fastdrop.num_threads(threads):
            return fastdrop.softmax_dropout(scores, p, -1, seed=SEED, stream=STREAM, out=y)

    def torch_backward():
        return torch.autograd.grad(
            torch.nn.functional.dropout(torch.softmax(x_grad, -1), p), x_grad, g)

    def fastdrop_backward():
        return torch.autograd.grad(fastdrop.torch.softmax_dropout(x_grad, p, -1), x_grad, g)

    return ({TORCH_SOFTMAX: torch_softmax, FASTDROP_SOFTMAX: fastdrop_softmax,
             NUMPY_SOFTMAX: numpy_softmax},
            {TORCH_COMPOSED: torch_backward, FASTDROP_SOFTMAX: fastdrop_backward})


def torch_dropout_add_calls(n=N, p=P, threads=2):
    """{version: forward + backward call} of residual + dropout(x) on torch tensors."""
    import torch

    import fastdrop.torch

    torch.set_num_threads(threads)
    x, residual, g = (torch.from_numpy(a) for a in _buffers(n, count=3))
    x.requires_grad_(True)
    residual.requires_grad_(True)

    def torch_add():
        return torch.autograd.grad(residual + torch.nn.functional.dropout(x, p), (x, residual),
                                   g)

    def fastdrop_add():
        return torch.autograd.grad(fastdrop.torch.dropout_add(x, residual, p), (x, residual), g)

    return {TORCH_ADD: torch_add, FASTDROP_ADD: fastdrop_add}


@contextlib.contextmanager
def torch_threads(threads):
    """torch's intra-op threads set to ``threads`` inside the block (a no-op without torch)."""
    if importlib.util.find_spec("torch") is None:
        yield
        return
    from bench_torch import _torch_threads

    with _torch_threads(threads):
        yield


def _group(title, where, calls, repeat, min_time, reference, note=""):
    """One group's row: its versions' median and best seconds, ratios to ``reference``."""
    timings = time_callables(calls, repeat=repeat, min_time=min_time)
    return {"title": title, "where": where, "reference": reference, "note": note,
            "median_s": {name: timing.median for name, timing in timings.items()},
            "best_s": {name: timing.best for name, timing in timings.items()},
            "rounds": min(timing.repeat for timing in timings.values())}


def run(threads=2, repeat=7, min_time=0.05, quick=False):
    """The whole benchmark: ``{"header", "groups", "skipped"}``."""
    import fastdrop

    if "cython" not in fastdrop.available_backends():
        raise SystemExit("the floor is the Cython extension's scale_add: build it first "
                         "(python setup.py build_ext --inplace)")
    n, shape = (QUICK_N, QUICK_SHAPE) if quick else (N, SOFTMAX_SHAPE)
    where = f"n={size_label(n)} float32 p={P:g} threads={threads}"
    missing = softmax_dropout_missing()
    torch_version = None
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch_version = torch.__version__
    groups = [_group("dropout_add", where, dropout_add_calls(n, P, threads), repeat,
                     min_time, FLOOR, COMPOSITION_NOTE),
              _group("bias_dropout_add", f"{where} bias of {min(FEATURES, n)}",
                     bias_dropout_add_calls(n, P, threads), repeat, min_time, BIAS_FLOOR,
                     COMPOSITION_NOTE)]
    if torch_version is not None:
        with torch_threads(threads):
            groups.append(_group("dropout_add in PyTorch, forward + backward", where,
                                 torch_dropout_add_calls(n, P, threads), repeat, min_time,
                                 TORCH_ADD))
    if missing is None:
        with torch_threads(threads):
            forward, backward = softmax_calls(shape, P, threads)
            softmax_where = f"{shape} float32 p={P:g} threads={threads}"
            groups.append(_group("softmax_dropout forward", softmax_where, forward, repeat,
                                 min_time, TORCH_SOFTMAX))
            groups.append(_group("softmax_dropout forward + backward", softmax_where, backward,
                                 repeat, min_time, TORCH_COMPOSED))
    return {"header": machine_line(threads, torch_version), "groups": groups,
            "skipped": None if missing is None else f"softmax_dropout: skipped ({missing})"}


def _ratio(group, numerator, denominator):
    return group["median_s"][numerator] / group["median_s"][denominator]


def ratio_record(title, backend, ratio, limit, where, speed_up=False):
    """A target record of a ratio: ``<= limit``, or ``>= limit`` for a speed-up; None: reported."""
    from targets import target_record

    met = None if limit is None else ratio >= limit if speed_up else ratio <= limit
    shown = None if limit is None else f">= {limit:g}" if speed_up else limit
    return target_record(title, backend, ratio, shown, met, where)


def targets(section):
    """The issue's targets (and the reported ratios) as records of benchmarks/targets.py."""
    groups = {group["title"]: group for group in section["groups"]}
    records = []

    def add(title, backend, group, numerator, denominator, limit, speed_up=False):
        records.append(ratio_record(title, backend,
                                    _ratio(groups[group], numerator, denominator), limit,
                                    f"{groups[group]['where']}, medians", speed_up))

    add("dropout_add / floor", "cython", "dropout_add", FUSED, FLOOR, FLOOR_LIMIT)
    add("dropout then np.add / dropout_add (speed-up)", "cython", "dropout_add", COMPOSED,
        FUSED, COMPOSITION_SPEEDUP, speed_up=True)
    add("bias_dropout_add / floor", "cython", "bias_dropout_add", BIAS_FUSED, BIAS_FLOOR, None)
    add("add, dropout, add / bias_dropout_add (speed-up)", "cython", "bias_dropout_add",
        BIAS_COMPOSED, BIAS_FUSED, None)
    if "dropout_add in PyTorch, forward + backward" in groups:
        add("r + F.dropout / fastdrop.torch.dropout_add, fwd+bwd (speed-up)", "torch",
            "dropout_add in PyTorch, forward + backward", TORCH_ADD, FASTDROP_ADD, None,
            speed_up=True)
    if "softmax_dropout forward" in groups:
        add("softmax_dropout forward / torch.softmax", "torch", "softmax_dropout forward",
            FASTDROP_SOFTMAX, TORCH_SOFTMAX, SOFTMAX_FORWARD_LIMIT)
        add("NumPy softmax_dropout forward / torch.softmax", "cython",
            "softmax_dropout forward", NUMPY_SOFTMAX, TORCH_SOFTMAX, None)
        add("softmax then F.dropout / softmax_dropout, fwd+bwd (speed-up)", "torch",
            "softmax_dropout forward + backward", TORCH_COMPOSED, FASTDROP_SOFTMAX,
            SOFTMAX_SPEEDUP, speed_up=True)
    return records


def group_table(group, markdown=False):
    """A group's versions: median and best time, and the median's ratio to its reference."""
    from bench_torch import _table

    reference = group["reference"]
    titles = ["version", "median", "best", f"/ {reference}"]
    rows = [[name, f"{group['median_s'][name] * 1e3:.2f} ms",
             f"{group['best_s'][name] * 1e3:.2f} ms", f"{_ratio(group, name, reference):.2f}x"]
            for name in group["median_s"]]
    return _table(titles, rows, markdown)


def format_section(section, markdown=False):
    """The header line, one table per group, and the skip line if a part did not run."""
    parts = [section["header"]]
    for group in section["groups"]:
        parts += ["", f"{group['title']}: {group['where']}, {group['rounds']} interleaved "
                      f"rounds", group_table(group, markdown)]
        if group["note"]:
            parts.append(f"({group['note']})")
    if section["skipped"]:
        parts += ["", section["skipped"]]
    return "\n".join(parts)


def main(argv=None):
    """Measure with the command line's settings; print the tables and the targets."""
    from targets import print_and_save

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    repeat, min_time = (1, 0.001) if args.quick else (args.repeat, args.min_time)
    section = run(args.threads, repeat, min_time, quick=args.quick)
    section["targets"] = targets(section)
    print_and_save(section, args, format_section(section, markdown=args.markdown))


if __name__ == "__main__":
    main()
