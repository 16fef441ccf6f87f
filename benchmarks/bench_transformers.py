"""Hugging Face BERT and GPT-2 training steps, and the SDPA op, with torch's dropout and fastdrop's.

    PYTHONPATH=. python benchmarks/bench_transformers.py [--threads 2] [--rounds 7] [--markdown]
    PYTHONPATH=. python benchmarks/bench_transformers.py --quick     # a smoke run, seconds
    python -m pytest benchmarks/test_bench_transformers.py --benchmark-only

Two parts, the targets of issue 29 printed next to what they measure:

1. **Training steps** of ``BertForSequenceClassification`` and ``GPT2LMHeadModel`` from
   small configs built here (hidden 256, 4 layers, 4 heads, feed-forward 1024, sequence
   128, batch 16, a vocabulary of 8192; random weights, nothing downloaded), each with
   ``attn_implementation="eager"`` and ``"sdpa"``. A step is forward, loss, backward,
   ``AdamW.step()``, ``zero_grad()``. Three versions of one initialised model (the same
   weights, the same batch):

   - **torch**: as built, dropout 0.1 everywhere (torch's modules and functions);
   - **fastdrop**: a deepcopy after ``fastdrop.torch.replace_dropout(model)``, which also
     routes the functional and attention dropout;
   - **p=0**: the model built from the same config with every dropout probability 0
     (``hidden_dropout_prob``/``attention_probs_dropout_prob``, GPT-2's
     ``resid/embd/attn_pdrop``), the torch version's weights loaded into it.

   Printed per model and attention: median step times, the speed-up fastdrop vs torch
   (targets: BERT eager >= 1.25x, BERT SDPA >= 1.2x), fastdrop step / p=0 step (target
   <= 1.05x for BERT with eager attention) and dropout's share ``(step - p0) / step``
   for torch and fastdrop.
2. **The SDPA op** at (16, 4, 128, 64) float32, dropout_p = 0.1, forward + backward
   (``torch.autograd.grad(out, (q, k, v), g)``): ``fastdrop.torch.scaled_dot_product_attention``
   against ``torch.nn.functional.scaled_dot_product_attention`` (target: >= 2x faster), and
   the bytes autograd keeps for each (``torch.autograd.graph.saved_tensors_hooks``, the
   unique storages' nbytes; target: fastdrop's <= torch's minus its noise tensor,
   16 * 4 * 128 * 128 * 4 bytes).

Versions are timed with their samples interleaved, one of each per round
(`runner.time_callables`); a step's sample follows one untimed step of the same version
(``settle``), so that each is timed as a training loop runs it, not right after another
version's step has freed and reshaped the heap (every page that step hands back, the
next one faults in again). Ratios divide medians of one run. Times are reported, never
asserted. Needs the torch and transformers extras.
"""
import argparse
import copy
import os

from bench_fused import add_arguments, machine_line, ratio_record, torch_threads
from bench_torch import _table

from fastdrop.bench.runner import time_callables

SEED = 0
P = 0.1
SIZES = {"hidden": 256, "layers": 4, "heads": 4, "feed_forward": 1024, "sequence": 128,
         "batch": 16, "vocabulary": 8192}
QUICK_SIZES = {"hidden": 32, "layers": 1, "heads": 2, "feed_forward": 64, "sequence": 16,
               "batch": 2, "vocabulary": 97}
SDPA_SHAPE = (16, 4, 128, 64)  # batch, heads, sequence, head size
QUICK_SDPA_SHAPE = (2, 2, 16, 8)
MODELS = ("BERT", "GPT-2")
ATTENTION = ("eager", "sdpa")
VERSIONS = ("torch", "fastdrop", "p=0")
# (model, attention) -> least speed-up of fastdrop over torch
SPEEDUP_TARGETS = {("BERT", "eager"): 1.25, ("BERT", "sdpa"): 1.2}
P0_LIMIT = {("BERT", "eager"): 1.05}  # fastdrop step / p=0 step
SDPA_SPEEDUP = 2.0
TORCH_SDPA = "torch F.scaled_dot_product_attention"
FASTDROP_SDPA = "fastdrop.torch.scaled_dot_product_attention"


def _transformers():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the configs are built here: nothing to fetch
    import transformers

    transformers.logging.set_verbosity_error()
    return transformers


def config(model, attention, sizes=SIZES, p=P):
    """The transformers config of ``model`` ("BERT" or "GPT-2") with dropout ``p`` everywhere."""
    transformers = _transformers()
    if model == "BERT":
        return transformers.BertConfig(
            vocab_size=sizes["vocabulary"], hidden_size=sizes["hidden"],
            num_hidden_layers=sizes["layers"], num_attention_heads=sizes["heads"],
            intermediate_size=sizes["feed_forward"], max_position_embeddings=sizes["sequence"],
            num_labels=2, hidden_dropout_prob=p, attention_probs_dropout_prob=p,
            attn_implementation=attention)
    return transformers.GPT2Config(
        vocab_size=sizes["vocabulary"], n_embd=sizes["hidden"], n_layer=sizes["layers"],
        n_head=sizes["heads"], n_inner=sizes["feed_forward"], n_positions=sizes["sequence"],
        resid_pdrop=p, embd_pdrop=p, attn_pdrop=p, attn_implementation=attention)


def build(model, attention, sizes=SIZES, p=P):
    """A freshly initialised model: BertForSequenceClassification or GPT2LMHeadModel."""
    transformers = _transformers()
    kind = (transformers.BertForSequenceClassification if model == "BERT"
            else transformers.GPT2LMHeadModel)
    return kind(config(model, attention, sizes, p))


def batch(model, sizes=SIZES):
    """The inputs of every step: token ids, and labels (classes for BERT, the ids for GPT-2)."""
    import torch

    generator = torch.Generator().manual_seed(SEED)
    ids = torch.randint(0, sizes["vocabulary"], (sizes["batch"], sizes["sequence"]),
                        generator=generator)
    labels = (torch.randint(0, 2, (sizes["batch"],), generator=generator) if model == "BERT"
              else ids)
    return {"input_ids": ids, "labels": labels}


def model_versions(model, attention, sizes=SIZES, p=P):
    """{version: model}: torch's dropout, fastdrop's, and every dropout probability 0.

    One initialised model; its deepcopy through replace_dropout; the p = 0 config's
    model with its weights loaded.
    """
    import torch

    import fastdrop.torch

    torch.manual_seed(SEED)
    with_torch = build(model, attention, sizes, p)
    with_fastdrop = copy.deepcopy(with_torch)
    if fastdrop.torch.replace_dropout(with_fastdrop) == 0:
        raise RuntimeError(f"replace_dropout found no dropout in {model}")
    without = build(model, attention, sizes, 0.0)
    without.load_state_dict(with_torch.state_dict())
    return dict(zip(VERSIONS, (with_torch, with_fastdrop, without)))


def training_step(model, inputs):
    """One AdamW training step of ``model`` on ``inputs``: forward, loss, backward, step, zero."""
    import torch

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        model(**inputs).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return step


def step_calls(model, attention, sizes=SIZES, p=P):
    """{version: training step} of ``model`` with ``attention`` on one batch."""
    inputs = batch(model, sizes)
    return {version: training_step(built, inputs)
            for version, built in model_versions(model, attention, sizes, p).items()}


def measure_steps(threads=2, repeat=7, min_time=0.2, sizes=SIZES, models=MODELS,
                  attention=ATTENTION):
    """Rows ``{"model", "attention", "median_s", "best_s", "rounds"}`` of training steps."""
    rows = []
    for model in models:
        for implementation in attention:
            timings = time_callables(step_calls(model, implementation, sizes), repeat=repeat,
                                     min_time=min_time, settle=True)
            rows.append({"model": model, "attention": implementation, "threads": threads,
                         "median_s": {name: t.median for name, t in timings.items()},
                         "best_s": {name: t.best for name, t in timings.items()},
                         "rounds": min(t.repeat for t in timings.values())})
    return rows


def share(row, version):
    """Dropout's share of a step of ``version``: (T(version) - T(p=0)) / T(version), medians."""
    seconds = row["median_s"]
    return (seconds[version] - seconds["p=0"]) / seconds[version]


def _attention_inputs(shape):
    import torch

    generator = torch.Generator().manual_seed(SEED)
    query, key, value, grad = (torch.randn(shape, generator=generator) for _ in range(4))
    return [t.requires_grad_(True) for t in (query, key, value)], grad


def sdpa_functions():
    """{version: scaled_dot_product_attention function}."""
    import torch

    import fastdrop.torch

    return {TORCH_SDPA: torch.nn.functional.scaled_dot_product_attention,
            FASTDROP_SDPA: fastdrop.torch.scaled_dot_product_attention}


def sdpa_calls(shape=SDPA_SHAPE, p=P):
    """{version: forward + backward of scaled dot-product attention with dropout_p = p}."""
    import torch

    inputs, grad = _attention_inputs(shape)

    def call(function):
        return lambda: torch.autograd.grad(function(*inputs, dropout_p=p), inputs, grad)
    return {name: call(function) for name, function in sdpa_functions().items()}


def saved_bytes(function, shape=SDPA_SHAPE, p=P):
    """Bytes autograd keeps for backward after one forward: the unique storages' nbytes."""
    import torch

    inputs, grad = _attention_inputs(shape)
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        output = function(*inputs, dropout_p=p)
    torch.autograd.grad(output, inputs, grad)  # frees what was saved
    return sum(storages.values())


def measure_sdpa(threads=2, repeat=7, min_time=0.05, shape=SDPA_SHAPE):
    """``{"shape", "median_s", "best_s", "rounds", "saved_bytes"}`` of the SDPA op."""
    timings = time_callables(sdpa_calls(shape), repeat=repeat, min_time=min_time)
    return {"shape": shape, "threads": threads,
            "median_s": {name: t.median for name, t in timings.items()},
            "best_s": {name: t.best for name, t in timings.items()},
            "rounds": min(t.repeat for t in timings.values()),
            "saved_bytes": {name: saved_bytes(function, shape)
                            for name, function in sdpa_functions().items()}}


def noise_bytes(shape):
    """Bytes of torch's noise tensor: one float32 per attention weight (batch, heads, L, L)."""
    batch, heads, length, _ = shape
    return batch * heads * length * length * 4


def run(threads=2, repeat=7, min_time=0.2, quick=False, models=MODELS, attention=ATTENTION):
    """The whole benchmark: ``{"header", "sizes", "steps", "sdpa"}``."""
    import torch
    import transformers

    sizes, shape = (QUICK_SIZES, QUICK_SDPA_SHAPE) if quick else (SIZES, SDPA_SHAPE)
    with torch_threads(threads):
        return {"header": f"{machine_line(threads, torch.__version__)}; transformers "
                          f"{transformers.__version__}",
                "sizes": sizes,
                "steps": measure_steps(threads, repeat, min_time, sizes, models, attention),
                "sdpa": measure_sdpa(threads, repeat, min(min_time, 0.05), shape)}


def targets(section):
    """The issue's targets (and the reported ratios) as records of benchmarks/targets.py."""
    from targets import target_record

    records = []
    for row in section["steps"]:
        key, seconds = (row["model"], row["attention"]), row["median_s"]
        where = f"{row['model']} {row['attention']} threads={row['threads']}, medians"
        records.append(ratio_record(f"{key[0]} {key[1]}: torch step / fastdrop step "
                                    f"(speed-up)", "torch", seconds["torch"] / seconds["fastdrop"],
                                    SPEEDUP_TARGETS.get(key), where, speed_up=True))
        records.append(ratio_record(f"{key[0]} {key[1]}: fastdrop step / p=0 step", "torch",
                                    seconds["fastdrop"] / seconds["p=0"], P0_LIMIT.get(key),
                                    where))
    sdpa = section["sdpa"]
    where = f"{sdpa['shape']} float32 dropout_p={P:g} threads={sdpa['threads']}"
    seconds, saved = sdpa["median_s"], sdpa["saved_bytes"]
    records.append(ratio_record("SDPA fwd+bwd: torch / fastdrop (speed-up)", "torch",
                                seconds[TORCH_SDPA] / seconds[FASTDROP_SDPA], SDPA_SPEEDUP,
                                f"{where}, medians", speed_up=True))
    limit = saved[TORCH_SDPA] - noise_bytes(sdpa["shape"])
    records.append(target_record("SDPA: bytes autograd keeps, fastdrop", "torch",
                                 saved[FASTDROP_SDPA], f"<= {limit / 1024:.1f} KiB (torch's "
                                 f"{saved[TORCH_SDPA] / 1024:.1f} KiB minus its noise tensor)",
                                 saved[FASTDROP_SDPA] <= limit, where, unit="bytes"))
    return records


def step_table(section, markdown=False):
    """Per model and attention: median step times, speed-up, step / p=0, dropout's share."""
    titles = ["model", "attention", "torch step", "fastdrop step", "p=0 step",
              "torch / fastdrop", "fastdrop / p=0", "dropout share: torch",
              "dropout share: fastdrop"]
    rows = []
    for row in section["steps"]:
        seconds = row["median_s"]
        rows.append([row["model"], row["attention"],
                     *(f"{seconds[version] * 1e3:.1f} ms" for version in VERSIONS),
                     f"{seconds['torch'] / seconds['fastdrop']:.2f}x",
                     f"{seconds['fastdrop'] / seconds['p=0']:.3f}x",
                     f"{share(row, 'torch'):.1%}", f"{share(row, 'fastdrop'):.1%}"])
    return _table(titles, rows, markdown)


def sdpa_table(section, markdown=False):
    """The SDPA op: median and best forward + backward, and the bytes autograd keeps."""
    sdpa = section["sdpa"]
    titles = ["version", "median", "best", "autograd keeps"]
    rows = [[name, f"{sdpa['median_s'][name] * 1e3:.2f} ms",
             f"{sdpa['best_s'][name] * 1e3:.2f} ms",
             f"{sdpa['saved_bytes'][name] / 2**20:.2f} MiB"] for name in sdpa["median_s"]]
    return _table(titles, rows, markdown)


def format_section(section, markdown=False):
    """The header line, the step table and the SDPA table."""
    sizes, sdpa = section["sizes"], section["sdpa"]
    rounds = min([row["rounds"] for row in section["steps"]] + [sdpa["rounds"]])
    described = ", ".join(f"{name} {value}" for name, value in sizes.items())
    return "\n".join([
        section["header"], "",
        f"Training steps (AdamW, float32, dropout {P:g}; {described}; medians of {rounds} "
        f"interleaved rounds; p=0: every dropout probability 0, the same weights)",
        step_table(section, markdown), "",
        f"scaled_dot_product_attention {sdpa['shape']} float32, dropout_p={P:g}, forward + "
        f"backward (torch's noise tensor: {noise_bytes(sdpa['shape']) / 2**20:.2f} MiB)",
        sdpa_table(section, markdown)])


def main(argv=None):
    """Measure with the command line's settings; print the tables and the targets."""
    from targets import print_and_save

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--attention", nargs="+", choices=ATTENTION, default=list(ATTENTION))
    parser.set_defaults(min_time=0.2)
    args = parser.parse_args(argv)
    repeat, min_time = (1, 0.001) if args.quick else (args.repeat, args.min_time)
    section = run(args.threads, repeat, min_time, args.quick, args.models, args.attention)
    section["targets"] = targets(section)
    print_and_save(section, args, format_section(section, markdown=args.markdown))


if __name__ == "__main__":
    main()
