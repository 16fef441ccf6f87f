"""fastdrop.torch against torch's own dropout: the op, the cost of a call, training steps.

    PYTHONPATH=. python benchmarks/bench_torch.py [--sizes 2^22 2^24] [--markdown]
    python -m pytest benchmarks/test_bench_torch.py --benchmark-only

Three parts:

1. **The op alone**, forward + backward through autograd
   (``torch.autograd.grad(dropout(x, p), x, g)``) on n elements, against
   ``torch.nn.functional.dropout`` the same way, and against the NumPy API on the same
   tensors' memory (``fastdrop.dropout`` then ``fastdrop.dropout_backward``, each
   allocating its result as the autograd path does): that ratio is the adapter's cost.
2. **The cost of a call** at 1024 elements: a chain of dropouts on one tensor, then one
   backward; (time of 17 - time of 1) / 16 is one dropout's forward + backward without
   the autograd engine's fixed start (identical for any model). A Python
   ``torch.autograd.Function`` multiplying by 1 both ways is timed alongside: the least
   any op written in Python, as fastdrop.torch's eager path is, can cost.
3. **Training steps** of two models, as given (torch's dropout modules), after
   ``fastdrop.torch.replace_dropout``, and with the dropout modules replaced by
   ``torch.nn.Identity``: dropout's share of a step is ``1 - T(identity) / T(step)``
   (median samples).
   The MLP is 784-1024-1024-10 (dropout 0.2 on the input, 0.5 after each hidden ReLU,
   batch 128); the transformer is a stack of ``torch.nn.TransformerEncoderLayer``
   (d_model 512, 8 heads, feed-forward 2048, dropout 0.1, sequence 128, batch 16) with
   a linear classifier on the mean over positions. Its attention-weight dropout runs
   inside ``torch.nn.functional.multi_head_attention_forward`` -- no module to replace
   -- so it stays torch's in all three versions and is not part of the share.

Samples of the versions compared are interleaved (`runner.time_callables`), one of
each per round, and the best sample is each one's time. Times are reported, never
asserted. Every function here imports torch when called.
"""
import argparse
import contextlib

from fastdrop.bench.runner import size_label, time_callables

SEED, STREAM = 1234, 0
DEFAULT_SIZES = (1 << 22, 1 << 24, 1 << 26)
DEFAULT_DTYPES = ("float32", "bfloat16")
DEFAULT_P = 0.1
SMALL_N = 1024
CHAIN = 17
MLP_SIZES, MLP_BATCH, MLP_RATES = (784, 1024, 1024, 10), 128, (0.2, 0.5, 0.5)
TRANSFORMER = {"d_model": 512, "nhead": 8, "dim_feedforward": 2048, "dropout": 0.1}
TRANSFORMER_LAYERS, TRANSFORMER_SEQUENCE, TRANSFORMER_BATCH = 2, 128, 16
# the targets of the PyTorch integration (issue 17)
SPEEDUP_TARGET = (1 << 24, "float32", 0.1, 8.0)  # n, dtype, p, fastdrop.torch >= 8x F.dropout
ADAPTER_LIMIT = 1.25  # fastdrop.torch <= 1.25x the NumPy API on the same memory
CALL_LIMIT_US = 15.0  # one forward + backward at 1024 elements
PYTHON_FUNCTION = "a Python autograd.Function doing x * 1"
SHARE_LIMIT = 0.03  # dropout's share of a training step with fastdrop.torch


def _torch(threads):
    import torch

    torch.set_num_threads(threads)
    return torch


def _tensor(torch, n, dtype, requires_grad=False):
    return torch.full((n,), 1.5, dtype=getattr(torch, dtype), requires_grad=requires_grad)


def op_calls(n, p, dtype, threads):
    """{version: zero-argument call} for the op alone, forward + backward, on n elements."""
    import fastdrop
    import fastdrop.torch
    from fastdrop.torch._tensors import as_array

    torch = _torch(threads)
    x, g = _tensor(torch, n, dtype, requires_grad=True), _tensor(torch, n, dtype)
    (x_array, request), (g_array, _) = as_array(x), as_array(g)

    def with_fastdrop_torch():
        return torch.autograd.grad(fastdrop.torch.dropout(x, p), x, g)

    def with_torch():
        return torch.autograd.grad(torch.nn.functional.dropout(x, p), x, g)

    def with_numpy_api():
        with fastdrop.num_threads(threads):
            _, mask = fastdrop.dropout(x_array, p, seed=SEED, stream=STREAM, dtype=request)
            return fastdrop.dropout_backward(g_array, mask, dtype=request)

    return {"fastdrop.torch": with_fastdrop_torch, "torch": with_torch,
            "fastdrop (NumPy API)": with_numpy_api}


def measure_ops(sizes=DEFAULT_SIZES, dtypes=DEFAULT_DTYPES, p=DEFAULT_P, threads=2, repeat=5,
                min_time=0.05):
    """Rows ``{"n", "dtype", "p", "threads", "seconds": {version: best}}`` for the op alone."""
    rows = []
    for n in sizes:
        for dtype in dtypes:
            calls = op_calls(n, p, dtype, threads)
            timings = time_callables(calls, repeat=repeat, min_time=min_time)
            rows.append({"n": n, "dtype": dtype, "p": p, "threads": threads,
                         "seconds": {name: timing.best for name, timing in timings.items()}})
            del calls
    return rows


def autograd_chain(torch, x, g, step, length):
    """A call running ``length`` steps (``y = step(y)``) from x in a row, then their backward."""
    def run():
        y = x
        for _ in range(length):
            y = step(y)
        return torch.autograd.grad(y, x, g)
    return run


def chain_calls(threads, n=SMALL_N, p=0.5):
    """{(version, length): call}: ``length`` dropouts in a row on n elements, then backward."""
    import fastdrop
    import fastdrop.torch

    torch = _torch(threads)
    x, g = _tensor(torch, n, "float32", requires_grad=True), _tensor(torch, n, "float32")
    x_array, g_array = x.detach().numpy(), g.numpy()
    class Times1(torch.autograd.Function):
        """The least a Python op costs: an autograd Function multiplying by 1 both ways."""

        @staticmethod
        def forward(ctx, y):
            return y * 1.0

        @staticmethod
        def backward(ctx, grad):
            return grad * 1.0

    versions = {"fastdrop.torch": lambda y: fastdrop.torch.dropout(y, p),
                "torch": lambda y: torch.nn.functional.dropout(y, p),
                "torch x * 1 (an elementwise op)": lambda y: y * 1.0,
                PYTHON_FUNCTION: Times1.apply}

    def chain(step, length):
        return autograd_chain(torch, x, g, step, length)

    def numpy_chain(length):
        def run():
            for stream in range(length):
                _, mask = fastdrop.dropout(x_array, p, seed=SEED, stream=stream)
                fastdrop.dropout_backward(g_array, mask)
        return run

    calls = {(name, length): chain(step, length) for name, step in versions.items()
             for length in (1, CHAIN)}
    calls.update({("fastdrop (NumPy API)", length): numpy_chain(length) for length in (1, CHAIN)})
    return calls


def measure_call_cost(threads=2, repeat=7, min_time=0.05):
    """{version: microseconds of one forward + backward at 1024 elements} (see the module notes)."""
    timings = time_callables(chain_calls(threads), repeat=repeat, min_time=min_time)
    names = dict.fromkeys(name for name, _ in timings)
    return {name: (timings[name, CHAIN].best - timings[name, 1].best) / (CHAIN - 1) * 1e6
            for name in names}


def mlp_model(torch, sizes=MLP_SIZES, rates=MLP_RATES):
    """The MLP in torch: dropout on the input, Linear layers, ReLU then dropout between them."""
    layers = [torch.nn.Dropout(rates[0])]
    for index in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[index], sizes[index + 1]))
        if index < len(sizes) - 2:
            layers += [torch.nn.ReLU(), torch.nn.Dropout(rates[index + 1])]
    return torch.nn.Sequential(*layers)


def mlp(torch, seed=0):
    """The 784-1024-1024-10 MLP with torch's dropout modules, and a batch (inputs, labels)."""
    torch.manual_seed(seed)
    model = mlp_model(torch)
    inputs = torch.randn(MLP_BATCH, MLP_SIZES[0])
    labels = torch.randint(0, MLP_SIZES[-1], (MLP_BATCH,))
    return model, inputs, labels


def transformer(torch, seed=0, classes=10):
    """The TransformerEncoderLayer stack with a classifier, and a batch (inputs, labels)."""
    torch.manual_seed(seed)

    class Classifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            layer = torch.nn.TransformerEncoderLayer(**TRANSFORMER, batch_first=True)
            self.encoder = torch.nn.TransformerEncoder(layer, TRANSFORMER_LAYERS,
                                                       enable_nested_tensor=False)
            self.head = torch.nn.Linear(TRANSFORMER["d_model"], classes)

        def forward(self, x):
            return self.head(self.encoder(x).mean(dim=1))

    inputs = torch.randn(TRANSFORMER_BATCH, TRANSFORMER_SEQUENCE, TRANSFORMER["d_model"])
    labels = torch.randint(0, classes, (TRANSFORMER_BATCH,))
    return Classifier(), inputs, labels


MODELS = {"MLP 784-1024-1024-10, batch 128": mlp,
          "TransformerEncoderLayer x2, d_model 512, seq 128, batch 16": transformer}


def _without_dropout(torch, model):
    """model with each torch dropout module replaced by torch.nn.Identity, in place."""
    from fastdrop.torch.modules import replace_torch_dropouts

    replace_torch_dropouts(model, lambda module: torch.nn.Identity())
    return model


def step_calls(build, threads):
    """{version: one SGD training step} for the model ``build(torch)`` makes."""
    import fastdrop.torch

    torch = _torch(threads)
    calls = {}
    for version in ("torch", "fastdrop.torch", "no dropout modules"):
        model, inputs, labels = build(torch)
        if version == "fastdrop.torch":
            fastdrop.torch.replace_dropout(model)
        elif version == "no dropout modules":
            _without_dropout(torch, model)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

        def step(model=model, optimizer=optimizer, inputs=inputs, labels=labels):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(inputs), labels).backward()
            optimizer.step()
        calls[version] = step
    return calls


def measure_steps(threads=2, repeat=7, min_time=0.2):
    """Rows ``{"model", "threads", "seconds": {version: best}}`` of training steps."""
    rows = []
    for name, build in MODELS.items():
        timings = time_callables(step_calls(build, threads), repeat=repeat, min_time=min_time)
        rows.append({"model": name, "threads": threads,
                     "seconds": {version: timing.best for version, timing in timings.items()},
                     "median_seconds": {version: timing.median
                                        for version, timing in timings.items()}})
    return rows


def share(row, version):
    """Dropout's share of a step of ``version``: 1 - T(no dropout modules) / T(version).

    From the median samples: a difference of two step times is noisier than either, and
    the median of interleaved rounds is the steadier of the two statistics here.
    """
    seconds = row["median_seconds"]
    return 1.0 - seconds["no dropout modules"] / seconds[version]


def run(sizes=DEFAULT_SIZES, dtypes=DEFAULT_DTYPES, p=DEFAULT_P, threads=2, repeat=5,
        min_time=0.05, steps=True):
    """The whole section: ``{"header", "ops", "call_us", "steps"}`` (steps may be [])."""
    import torch

    from fastdrop.bench.runner import header

    with _torch_threads(threads):
        return {"header": dict(header([threads]), torch_threads=threads,
                               torch=torch.__version__),
                "ops": measure_ops(sizes, dtypes, p, threads, repeat, min_time),
                "call_us": measure_call_cost(threads, max(repeat, 7), min_time),
                "steps": measure_steps(threads, max(repeat, 9)) if steps else []}


@contextlib.contextmanager
def _torch_threads(threads):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def targets(section):
    """The integration's targets as records of benchmarks/targets.py."""
    from targets import target_record

    records = []
    n, dtype, p, limit = SPEEDUP_TARGET
    for row in section["ops"]:
        seconds, where = row["seconds"], (f"n={size_label(row['n'])} p={row['p']} "
                                          f"{row['dtype']} threads={row['threads']}")
        if (row["n"], row["dtype"], row["p"]) == (n, dtype, p):
            speedup = seconds["torch"] / seconds["fastdrop.torch"]
            records.append(target_record("F.dropout / fastdrop.torch, fwd+bwd (speed-up)",
                                         "torch", speedup, f">= {limit:g}", speedup >= limit,
                                         where))
        adapter = seconds["fastdrop.torch"] / seconds["fastdrop (NumPy API)"]
        records.append(target_record("fastdrop.torch / NumPy API, fwd+bwd (adapter cost)",
                                     "torch", adapter, ADAPTER_LIMIT, adapter <= ADAPTER_LIMIT,
                                     where))
    call = section["call_us"].get("fastdrop.torch")
    if call is not None:
        records.append(target_record(f"one fwd+bwd at n={SMALL_N} (us)", "torch", round(call, 1),
                                     f"<= {CALL_LIMIT_US:g} us", call <= CALL_LIMIT_US,
                                     "chain of 17 minus chain of 1", unit="text"))
    for row in section["steps"]:
        fraction = share(row, "fastdrop.torch")
        records.append(target_record(f"dropout's share of a step: {row['model']}", "torch",
                                     f"{fraction:.1%}", f"<= {SHARE_LIMIT:.0%}",
                                     fraction <= SHARE_LIMIT, f"threads={row['threads']}",
                                     unit="text"))
    return records


def _rate(n, seconds):
    return f"{n / seconds / 1e9:.2f}"


def op_table(section, markdown=False):
    """The op-alone rows: times, Gelem/s, speed-up over torch, cost over the NumPy API."""
    titles = ["n", "dtype", "p", "fastdrop.torch", "torch F.dropout", "NumPy API",
              "Gelem/s (fastdrop.torch)", "speed-up vs torch", "fastdrop.torch / NumPy API"]
    rows = []
    for row in section["ops"]:
        seconds = row["seconds"]
        rows.append([size_label(row["n"]), row["dtype"], f"{row['p']:g}",
                     f"{seconds['fastdrop.torch'] * 1e3:.2f} ms",
                     f"{seconds['torch'] * 1e3:.2f} ms",
                     f"{seconds['fastdrop (NumPy API)'] * 1e3:.2f} ms",
                     _rate(row["n"], seconds["fastdrop.torch"]),
                     f"{seconds['torch'] / seconds['fastdrop.torch']:.1f}x",
                     f"{seconds['fastdrop.torch'] / seconds['fastdrop (NumPy API)']:.2f}x"])
    return _table(titles, rows, markdown)


def call_table(section, markdown=False):
    """The cost of one forward + backward at 1024 elements, per version."""
    titles = [f"one forward + backward at n={SMALL_N}", "microseconds"]
    rows = [[name, f"{us:.1f}"] for name, us in section["call_us"].items()]
    return _table(titles, rows, markdown)


def step_table(section, markdown=False):
    """The training steps: times, the ratio, and dropout's share of each step."""
    titles = ["model", "torch step", "fastdrop.torch step", "no dropout modules",
              "torch / fastdrop.torch", "dropout share: torch", "dropout share: fastdrop.torch"]
    rows = []
    for row in section["steps"]:
        seconds = row["median_seconds"]
        rows.append([row["model"], f"{seconds['torch'] * 1e3:.1f} ms",
                     f"{seconds['fastdrop.torch'] * 1e3:.1f} ms",
                     f"{seconds['no dropout modules'] * 1e3:.1f} ms",
                     f"{seconds['torch'] / seconds['fastdrop.torch']:.2f}x",
                     f"{share(row, 'torch'):.1%}", f"{share(row, 'fastdrop.torch'):.1%}"])
    return _table(titles, rows, markdown)


def _table(titles, rows, markdown):
    if markdown:
        lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max([len(title)] + [len(row[i]) for row in rows]) for i, title in enumerate(titles)]
    lines = ["  ".join(title.ljust(width) for title, width in zip(titles, widths)).rstrip(),
             "  ".join("-" * width for width in widths)]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
              for row in rows]
    return "\n".join(lines)


def format_section(section, markdown=False):
    """Every table of the section, with its header line."""
    head = section["header"]
    parts = [f"fastdrop.torch against torch {head['torch']}: {head['cpu']}, "
             f"threads={head['torch_threads']}, {head['date']}",
             "", "The op alone: forward + backward through autograd",
             op_table(section, markdown), "", call_table(section, markdown)]
    if section["steps"]:
        parts += ["", "Training steps (SGD with momentum, float32; median of interleaved rounds)",
                  step_table(section, markdown)]
    return "\n".join(parts)


def main(argv=None):
    """Measure the section with the command line's settings; print its tables and targets."""
    from targets import add_script_arguments, print_and_save

    from fastdrop.cli import arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=arguments.size, default=list(DEFAULT_SIZES),
                        metavar="N", help="element counts of the op alone (default 2^22 2^24 "
                                          "2^26)")
    parser.add_argument("--dtypes", nargs="+", choices=("float32", "bfloat16"),
                        default=list(DEFAULT_DTYPES))
    parser.add_argument("--p", type=arguments.number(0, 1, high_open=True), default=DEFAULT_P)
    parser.add_argument("--threads", type=arguments.threads, default=2)
    parser.add_argument("--no-steps", action="store_true", help="skip the training steps")
    add_script_arguments(parser, repeat=5)
    args = parser.parse_args(argv)
    section = run(sizes=args.sizes, dtypes=args.dtypes, p=args.p, threads=args.threads,
                  repeat=args.repeat, min_time=args.min_time, steps=not args.no_steps)
    section["targets"] = targets(section)
    print_and_save(section, args, format_section(section, markdown=args.markdown))


if __name__ == "__main__":
    main()
