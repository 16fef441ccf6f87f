"""The fused operations under pytest-benchmark (bench_fused.py describes each version).

    python -m pytest benchmarks/test_bench_fused.py --benchmark-only

Groups: ``dropout_add`` and ``bias_dropout_add`` at 2^24 float32 elements, p = 0.1 (the
fused call, its three-stream floor and its unfused composition); ``softmax_dropout`` at
(16, 4, 128, 128) float32, p = 0.1, forward (against ``torch.softmax`` alone, and the
NumPy API) and forward + backward through autograd (against ``torch.softmax`` then
``F.dropout``). The softmax groups skip without torch or without softmax_dropout. Times
are never asserted. Threads: 2 (``FASTDROP_BENCH_TORCH_THREADS`` to change).
"""
import os

import bench_fused as fused
import pytest

import fastdrop
from fastdrop.bench.runner import size_label

THREADS = int(os.environ.get("FASTDROP_BENCH_TORCH_THREADS", "2"))
ADD_CALLS = {"dropout_add": fused.dropout_add_calls,
             "bias_dropout_add": fused.bias_dropout_add_calls}
ADD_VERSIONS = {"dropout_add": (fused.FLOOR, fused.FUSED, fused.COMPOSED),
                "bias_dropout_add": (fused.BIAS_FLOOR, fused.BIAS_FUSED, fused.BIAS_COMPOSED)}
SOFTMAX_MISSING = fused.softmax_dropout_missing()
needs_softmax_dropout = pytest.mark.skipif(SOFTMAX_MISSING is not None,
                                           reason=SOFTMAX_MISSING or "")


@pytest.mark.skipif("cython" not in fastdrop.available_backends(),
                    reason="the floor is the Cython extension's scale_add")
@pytest.mark.parametrize(("operation", "version"), [
    (operation, version) for operation, versions in ADD_VERSIONS.items() for version in versions])
def test_fused_add(benchmark, operation, version):
    benchmark.group = (f"{operation} n={size_label(fused.N)} float32 p={fused.P:g} "
                       f"threads={THREADS}")
    call = ADD_CALLS[operation](fused.N, fused.P, THREADS)[version]
    call()
    benchmark(call)


@pytest.fixture
def torch_threads():
    with fused.torch_threads(THREADS):
        yield


SOFTMAX_CASES = [("forward", 0, version) for version in (
    fused.TORCH_SOFTMAX, fused.FASTDROP_SOFTMAX, fused.NUMPY_SOFTMAX)] + [
    ("fwd+bwd", 1, version) for version in (fused.TORCH_COMPOSED, fused.FASTDROP_SOFTMAX)]


@needs_softmax_dropout
@pytest.mark.parametrize(("part", "index", "version"), SOFTMAX_CASES)
def test_softmax_dropout(benchmark, part, index, version, torch_threads):
    benchmark.group = (f"softmax_dropout {part} {fused.SOFTMAX_SHAPE} float32 p={fused.P:g} "
                       f"threads={THREADS}")
    call = fused.softmax_calls(fused.SOFTMAX_SHAPE, fused.P, THREADS)[index][version]
    call()
    benchmark(call)
