"""fastdrop.torch against torch's dropout under pytest-benchmark (bench_torch.py).

    python -m pytest benchmarks/test_bench_torch.py --benchmark-only

Groups: the op alone (forward + backward through autograd) at 2^22 and 2^26 elements,
float32 and bfloat16, p = 0.1: fastdrop.torch, torch.nn.functional.dropout and the
NumPy API on the same memory; one forward + backward at 1024 elements (a chain of 17
minus a chain of 1, reported by ``python benchmarks/bench_torch.py``; here each chain is its own
benchmark); training steps of the MLP and the transformer with torch's dropout, with
fastdrop.torch's and without dropout modules. Times are never asserted. Threads: 2
(``FASTDROP_BENCH_TORCH_THREADS`` to change).
"""
import os

import bench_torch as pytorch
import pytest

from fastdrop.bench.runner import size_label

pytest.importorskip("torch", reason="needs the torch extra")

THREADS = int(os.environ.get("FASTDROP_BENCH_TORCH_THREADS", "2"))
SIZES = (1 << 22, 1 << 26)
DTYPES = ("float32", "bfloat16")
VERSIONS = ("fastdrop.torch", "torch", "fastdrop (NumPy API)")


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", SIZES, ids=size_label)
def test_op_forward_and_backward(benchmark, n, dtype, version):
    benchmark.group = (f"fwd+bwd n={size_label(n)} p={pytorch.DEFAULT_P} {dtype} "
                       f"threads={THREADS}")
    call = pytorch.op_calls(n, pytorch.DEFAULT_P, dtype, THREADS)[version]
    call()
    benchmark(call)


@pytest.mark.parametrize("length", (1, pytorch.CHAIN))
@pytest.mark.parametrize("version", VERSIONS)
def test_chain_of_small_calls(benchmark, version, length):
    benchmark.group = f"chain of {length} fwd+bwd at n={pytorch.SMALL_N} threads={THREADS}"
    call = pytorch.chain_calls(THREADS)[version, length]
    call()
    benchmark(call)


@pytest.mark.parametrize("version", ("torch", "fastdrop.torch", "no dropout modules"))
@pytest.mark.parametrize("model", list(pytorch.MODELS))
def test_training_step(benchmark, model, version):
    benchmark.group = f"training step: {model} threads={THREADS}"
    step = pytorch.step_calls(pytorch.MODELS[model], THREADS)[version]
    step()
    benchmark.pedantic(step, rounds=5, warmup_rounds=1)
