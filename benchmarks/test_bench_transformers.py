"""Hugging Face BERT and GPT-2 steps and the SDPA op under pytest-benchmark.

    python -m pytest benchmarks/test_bench_transformers.py --benchmark-only

bench_transformers.py describes the models and versions. Groups: one AdamW training step
of BERT and GPT-2 (hidden 256, 4 layers, 4 heads, sequence 128, batch 16), eager and SDPA
attention, with torch's dropout, after ``fastdrop.torch.replace_dropout`` and with every
dropout probability 0 (3 rounds each); the SDPA op at (16, 4, 128, 64) float32,
dropout_p = 0.1, forward + backward, fastdrop's against torch's. Times are never asserted;
the bytes autograd keeps are (they do not depend on the machine's load). Skips without
torch or transformers. Threads: 2 (``FASTDROP_BENCH_TORCH_THREADS`` to change).
"""
import os

import bench_fused
import bench_transformers as models
import pytest

pytest.importorskip("torch", reason="needs the torch extra")
pytest.importorskip("transformers", reason="needs the transformers extra")

THREADS = int(os.environ.get("FASTDROP_BENCH_TORCH_THREADS", "2"))


@pytest.fixture
def torch_threads():
    with bench_fused.torch_threads(THREADS):
        yield


@pytest.mark.parametrize("version", models.VERSIONS)
@pytest.mark.parametrize("attention", models.ATTENTION)
@pytest.mark.parametrize("model", models.MODELS)
def test_training_step(benchmark, model, attention, version, torch_threads):
    benchmark.group = f"training step: {model} {attention} attention threads={THREADS}"
    step = models.step_calls(model, attention)[version]
    benchmark.pedantic(step, rounds=3, warmup_rounds=1)


@pytest.mark.parametrize("version", (models.TORCH_SDPA, models.FASTDROP_SDPA))
def test_scaled_dot_product_attention(benchmark, version, torch_threads):
    benchmark.group = (f"scaled_dot_product_attention fwd+bwd {models.SDPA_SHAPE} float32 "
                       f"dropout_p={models.P:g} threads={THREADS}")
    call = models.sdpa_calls()[version]
    call()
    benchmark(call)
    benchmark.extra_info["saved_bytes"] = models.saved_bytes(models.sdpa_functions()[version])


def test_attention_keeps_less_than_torch_without_its_noise(benchmark, torch_threads):
    """fastdrop's SDPA keeps <= torch's bytes minus the noise tensor (issue 29's target)."""
    benchmark.group = "scaled_dot_product_attention: bytes autograd keeps"
    functions = models.sdpa_functions()
    saved = benchmark.pedantic(
        lambda: {name: models.saved_bytes(function) for name, function in functions.items()},
        rounds=1)
    limit = saved[models.TORCH_SDPA] - models.noise_bytes(models.SDPA_SHAPE)
    assert saved[models.FASTDROP_SDPA] <= limit, saved
