"""Training steps compiled with Inductor against the same steps eager: what dropout costs in each.

    PYTHONPATH=. python benchmarks/bench_compiled.py [--quick] [--models mlp bert] [--markdown]

Each model runs six versions of one training step (forward, cross-entropy, backward,
optimizer step): eager and ``torch.compile``d (Inductor, default mode), each with torch's
dropout modules, with fastdrop's after ``fastdrop.torch.replace_dropout``, and with every
dropout probability set to 0. Dropout's share of a step is ``(T(step) - T(p = 0 step)) /
T(step)``, the p = 0 step of the same mode (eager or compiled). The models:

- the MLP of benchmarks/bench_torch.py: 784-1024-1024-10, batch 128, ReLU, dropout 0.2
  on the input and 0.5 after each hidden layer, SGD with momentum;
- BERT from ``transformers`` (``BertForSequenceClassification``, random weights, no
  download): hidden 256, 4 layers, 4 heads, feed-forward 1024, sequence 128, batch 16,
  eager attention (its attention dropout is ``F.dropout``, torch's unless fastdrop routes
  functional dropout), AdamW. Skipped when transformers is not installed.

Compilation happens before the timing (a few warm-up steps per version). Samples are
interleaved, one of each version per round (`runner.time_callables`), and every figure is
a median of the rounds. The acceptance lines at the end are issue 29's: for each model,
fastdrop's compiled share within 3 points of its eager share, and the compiled fastdrop
step faster than the compiled torch step.
"""
import argparse
import contextlib
import warnings

from fastdrop.bench.runner import time_callables

MODES = ("eager", "compiled")
DROPOUTS = ("torch", "fastdrop", "p = 0")
BERT = {"hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
        "intermediate_size": 1024, "num_labels": 10}
BERT_SEQUENCE, BERT_BATCH = 128, 16
QUICK_BERT_BATCH = 4
SHARE_POINTS = 0.03  # compiled share within 3 points of the eager share
WARM_UP_STEPS = 3  # compile forward and backward, then settle


def bert(torch, seed=0, batch=BERT_BATCH):
    """BERT-small for sequence classification with eager attention, and a batch (ids, labels)."""
    import transformers

    torch.manual_seed(seed)
    config = transformers.BertConfig(**BERT, attn_implementation="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.BertForSequenceClassification(config)
    ids = torch.randint(0, config.vocab_size, (batch, BERT_SEQUENCE))
    labels = torch.randint(0, BERT["num_labels"], (batch,))
    return model, ids, labels


def _logits(output):
    """A model's logits: the tensor itself, or a transformers output's ``logits``."""
    return getattr(output, "logits", output)


def _models(quick):
    """{name: (build(torch) -> (model, inputs, labels), optimizer class name)}."""
    import importlib.util

    from bench_torch import MLP_BATCH, mlp

    models = {f"MLP 784-1024-1024-10, batch {MLP_BATCH}": (mlp, "SGD")}
    if importlib.util.find_spec("transformers") is not None:
        batch = QUICK_BERT_BATCH if quick else BERT_BATCH
        models[f"BERT hidden 256, 4 layers, seq {BERT_SEQUENCE}, batch {batch}"] = (
            lambda torch: bert(torch, batch=batch), "AdamW")
    return models


def _set_p(torch, model, p):
    """Every dropout module's p (torch's and fastdrop's, which subclass the same base)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.dropout._DropoutNd):
            module.p = p


def step_calls(torch, build, optimizer_name):
    """{(mode, dropout): one training step} for the model ``build(torch)`` makes."""
    import fastdrop.torch

    calls = {}
    for mode in MODES:
        for dropout in DROPOUTS:
            model, inputs, labels = build(torch)
            if dropout == "fastdrop":
                fastdrop.torch.replace_dropout(model)
            elif dropout == "p = 0":
                _set_p(torch, model, 0.0)
            model.train()
            if optimizer_name == "SGD":
                optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            else:
                optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
            forward = torch.compile(model) if mode == "compiled" else model

            def step(forward=forward, optimizer=optimizer, inputs=inputs, labels=labels):
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(_logits(forward(inputs)), labels)
                loss.backward()
                optimizer.step()
            calls[mode, dropout] = step
    return calls


def measure(threads=2, repeat=9, min_time=0.2, quick=False, names=None):
    """Rows ``{"model", "seconds": {(mode, dropout): median}, "best": {...}}``."""
    torch = _torch(threads)
    # compile afresh: the caches key on the graph, not on a custom operator's autograd
    # formula, so a graph cached before a change to fastdrop's operators would be reused
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    rows = []
    for name, (build, optimizer_name) in _models(quick).items():
        if names and not any(word.lower() in name.lower() for word in names):
            continue
        calls = step_calls(torch, build, optimizer_name)
        for call in calls.values():  # eager first: fastdrop's C++ path loads before compiling
            for _ in range(WARM_UP_STEPS):
                call()
        timings = time_callables(calls, repeat=repeat, min_time=min_time)
        rows.append({"model": name, "threads": threads,
                     "seconds": {key: timing.median for key, timing in timings.items()},
                     "best": {key: timing.best for key, timing in timings.items()}})
        del calls
    return rows


def share(row, mode, dropout):
    """Dropout's share of a step: ``(T(step) - T(p = 0 step)) / T(step)`` in one mode."""
    seconds = row["seconds"]
    return 1.0 - seconds[mode, "p = 0"] / seconds[mode, dropout]


def acceptance(row):
    """The issue's two compiled-path lines for one model: [(what, measured, limit, met)]."""
    eager, compiled = share(row, "eager", "fastdrop"), share(row, "compiled", "fastdrop")
    ratio = row["seconds"]["compiled", "fastdrop"] / row["seconds"]["compiled", "torch"]
    return [("fastdrop's dropout share, compiled - eager",
             f"{compiled:.1%} - {eager:.1%} = {(compiled - eager) * 100:+.1f} points",
             f"<= {SHARE_POINTS * 100:+.0f} points", compiled - eager <= SHARE_POINTS),
            ("compiled step, fastdrop / torch", f"{ratio:.3f}", "< 1", ratio < 1.0)]


def format_rows(rows, head, markdown=False):
    """The step table, the share table and the acceptance lines."""
    from bench_torch import _table

    lines = [f"Training steps, eager and torch.compile (inductor): torch {head['torch']}, "
             f"{head['cpu']}, {head['cpus available']} CPUs, threads={head['torch_threads']}, "
             f"load average {head['load average']}, {head['date']}",
             "Medians of interleaved rounds; share = (step - p=0 step) / step, same mode.", ""]
    titles = ["model", "mode"] + [f"{dropout} step" for dropout in DROPOUTS] + [
        "torch / fastdrop", "share: torch", "share: fastdrop"]
    table = []
    for row in rows:
        seconds = row["seconds"]
        for mode in MODES:
            table.append([row["model"], mode]
                         + [f"{seconds[mode, dropout] * 1e3:.1f} ms" for dropout in DROPOUTS]
                         + [f"{seconds[mode, 'torch'] / seconds[mode, 'fastdrop']:.2f}x",
                            f"{share(row, mode, 'torch'):.1%}",
                            f"{share(row, mode, 'fastdrop'):.1%}"])
    lines += [_table(titles, table, markdown), "", "Acceptance (issue 29, the compiled path):"]
    for row in rows:
        for what, measured, limit, met in acceptance(row):
            lines.append(f"  {'met    ' if met else 'NOT MET'}  {row['model']}: {what}: "
                         f"{measured} ({limit})")
    return "\n".join(lines)


def _torch(threads):
    import torch

    torch.set_num_threads(threads)
    return torch


@contextlib.contextmanager
def _quiet_inductor():
    """Inductor's and transformers' one-time notices off the table's lines."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def main(argv=None):
    """Measure the steps; print the machine, the tables and the acceptance lines."""
    import torch

    from fastdrop.bench.report import save_json
    from fastdrop.bench.runner import header
    from fastdrop.cli import arguments

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=arguments.threads, default=2)
    parser.add_argument("--repeat", type=arguments.integer(1), default=9,
                        help="rounds (default 9; --quick: 5)")
    parser.add_argument("--min-time", type=arguments.number(0, low_open=True), default=0.2,
                        help="seconds per sample (default 0.2; --quick: 0.05)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer, shorter rounds and BERT at batch 4: a smoke run")
    parser.add_argument("--models", nargs="+", metavar="WORD",
                        help="only the models whose name has one of these words (mlp, bert)")
    parser.add_argument("--markdown", action="store_true", help="print Markdown tables")
    parser.add_argument("--json", type=arguments.output_file, metavar="PATH",
                        help="also save the results as JSON")
    args = parser.parse_args(argv)
    repeat, min_time = (min(args.repeat, 5), min(args.min_time, 0.05)) if args.quick else (
        args.repeat, args.min_time)
    with _quiet_inductor():
        rows = measure(args.threads, repeat, min_time, args.quick, args.models)
    head = dict(header([args.threads]), torch_threads=args.threads, torch=torch.__version__)
    print(format_rows(rows, head, args.markdown))
    if args.json:
        save_json({"header": head, "rows": [
            dict(row, seconds={" ".join(key): value for key, value in row["seconds"].items()},
                 best={" ".join(key): value for key, value in row["best"].items()})
            for row in rows]}, args.json)


if __name__ == "__main__":
    main()
