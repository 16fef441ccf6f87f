"""Every compiled backend provides the kernel interface, and each entry gives the reference's bits.

The interface is code: `fastdrop.kernels.interface.KernelBackend` lists the entries a
backend module provides, with the records they take. Here each backend's module has
every entry under the Protocol's parameter names, the API calls no entry the Protocol
lacks, and a small call of each entry, made with records built by hand, gives what
`fastdrop.reference` gives for the same values.
"""
import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

import fastdrop
from fastdrop import _backends, _layout, reference
from fastdrop.kernels.interface import KernelBackend, MaskParams, NoiseParams
from fastdrop.maskstream.spec import (
    alpha_dropout_constants,
    dropout_scale,
    gaussian_sigma,
    stream_parameters,
)
from tests.util import bits, sample

COMPILED = [pytest.param(name, marks=pytest.mark.skipif(
                not _backends.backend_available(name), reason=f"the {name} backend is not here"))
            for name in _backends.BACKENDS if name != "numpy"]
ENTRIES = {name: inspect.signature(member) for name, member in vars(KernelBackend).items()
           if inspect.isfunction(member) and not name.startswith("_")}

# awkward on purpose: n not a multiple of 64, an offset inside a word, keys >= 2**63
P, SEED, STREAM, OFFSET, THREADS = 0.3, 2**64 - 5, 2**63 + 7, 70, 2
GLOBAL, ORIGIN, BLOCK = (6, 50), (1, 10), (3, 30)  # a block that is not whole rows


def test_the_protocol_lists_the_entries():
    assert set(ENTRIES) == {"scale_by_stream", "scale_by_runs", "scale_by_mask",
                            "apply_broadcast", "gaussian", "gaussian_runs", "dropout_plain",
                            "dropout_add", "softmax_dropout", "softmax_dropout_backward"}


@pytest.mark.parametrize("backend", COMPILED)
def test_every_entry_is_there_with_the_protocols_parameters(backend):
    module = _backends.kernels(backend)
    for name, signature in ENTRIES.items():
        assert list(inspect.signature(getattr(module, name)).parameters) == \
            list(signature.parameters)[1:], name  # the Protocol's own first one is self


def kernel_calls_in(path):
    """Names of ``kernels.<name>`` the module reads (a kernel module is called ``kernels``)."""
    source = path.read_text()
    if path.suffix == ".pyx":  # not Python: calls outside docstrings and comments
        return set(re.findall(r"(?<![\w.`])kernels\.(\w+)\(", source))
    return {node.attr for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
            and node.value.id == "kernels"}


def test_the_api_calls_only_entries_of_the_interface():
    package = Path(fastdrop.__file__).parent
    called = {path.name: kernel_calls_in(path) for pattern in ("*.py", "*.pyx")
              for path in package.rglob(pattern) if "kernels" not in path.parts}
    # the scan sees the calls it checks
    assert {"scale_by_stream", "scale_by_runs"} <= called["_api.py"]
    assert "dropout_plain" in called["_fastpath.pyx"]
    assert {(name, entry) for name, entries in called.items() for entry in entries
            if entry not in ENTRIES} == set()


def mask_params(n, offset=OFFSET):
    return MaskParams(SEED, STREAM, *stream_parameters(P), offset, n)


def noise_params(offset=OFFSET):
    return NoiseParams(SEED, STREAM, gaussian_sigma(P), offset)


def block_runs():
    return _layout.block_runs(BLOCK, ORIGIN, GLOBAL, OFFSET)


def scale_by_stream(kernels):
    x = sample(200, np.float32)
    y, words = np.empty_like(x), np.empty(4, np.uint64)
    kernels.scale_by_stream(x, y, words, dropout_scale(P), mask_params(x.size), THREADS)
    expected, mask = reference.dropout(x, P, seed=SEED, stream=STREAM, offset=OFFSET)
    alone = np.empty(4, np.uint64)  # the words alone
    kernels.scale_by_stream(None, None, alone, 0.0, mask_params(x.size), THREADS)
    recomputed = np.empty_like(x)  # the elements alone
    kernels.scale_by_stream(x, recomputed, None, dropout_scale(P), mask_params(x.size), THREADS)
    return [(y, expected), (words, mask.words), (alone, mask.words), (recomputed, expected)]


def scale_by_runs(kernels):
    x = sample(BLOCK, np.float32).reshape(-1)
    y, words = np.empty_like(x), np.empty(2, np.uint64)
    kernels.scale_by_runs(x, y, words, dropout_scale(P), mask_params(x.size, 0), block_runs(),
                          THREADS)
    expected, mask = reference.dropout(x.reshape(BLOCK), P, seed=SEED, stream=STREAM,
                                       offset=OFFSET, origin=ORIGIN, global_shape=GLOBAL)
    return [(y, expected.reshape(-1)), (words, mask.words)]


def scale_by_mask(kernels):
    x = sample(200, np.float32)
    words = reference.bernoulli_mask(x.size, P, seed=SEED, stream=STREAM)
    y = np.empty_like(x)
    kernels.scale_by_mask(x, y, words, dropout_scale(P), THREADS)
    return [(y, reference.apply_mask(x, words, p=P))]


def apply_broadcast(kernels):
    x = sample((4, 5, 6), np.float32)
    noise_shape = (4, 1, 6)
    words = reference.bernoulli_mask(24, P, seed=SEED, stream=STREAM)
    mask = fastdrop.DropoutMask(words, shape=noise_shape, p=P, seed=SEED, stream=STREAM,
                                 offset=0)
    layout = _layout.broadcast_layout(x.shape, noise_shape)
    scaled, shifted = np.empty(x.size, np.float32), np.empty(x.size, np.float32)
    kernels.apply_broadcast(x.reshape(-1), scaled, words, layout, dropout_scale(P), None, THREADS)
    kernels.apply_broadcast(x.reshape(-1), shifted, words, layout, 0.0,
                            alpha_dropout_constants(P), THREADS)
    alpha, _ = reference.alpha_dropout(x, P, seed=SEED, stream=STREAM, noise_shape=noise_shape)
    return [(scaled, reference.apply_mask(x, mask).reshape(-1)), (shifted, alpha.reshape(-1))]


def gaussian(kernels):
    x = sample(200, np.float32)
    y = np.empty_like(x)
    kernels.gaussian(x, y, noise_params(), THREADS)
    return [(y, reference.gaussian_dropout(x, P, seed=SEED, stream=STREAM, offset=OFFSET)[0])]


def gaussian_runs(kernels):
    x = sample(BLOCK, np.float32).reshape(-1)
    y = np.empty_like(x)
    kernels.gaussian_runs(x, y, noise_params(0), block_runs(), THREADS)
    expected, _ = reference.gaussian_dropout(x.reshape(BLOCK), P, seed=SEED, stream=STREAM,
                                             offset=OFFSET, origin=ORIGIN, global_shape=GLOBAL)
    return [(y, expected.reshape(-1))]


def dropout_plain(kernels):
    x = sample((5, 40), np.float32)
    expected, mask = reference.dropout(x, P, seed=SEED, stream=STREAM, offset=OFFSET)
    y, words = kernels.dropout_plain(x, False, dropout_scale(P), mask_params(x.size), THREADS)
    z = x.copy()
    in_place, in_place_words = kernels.dropout_plain(z, True, dropout_scale(P),
                                                     mask_params(x.size), THREADS)
    assert in_place is z and y.shape == x.shape
    return [(y, expected), (words, mask.words), (in_place, expected), (in_place_words, mask.words)]


def dropout_add(kernels):
    x, residual, bias = sample(200, np.float32), sample(200, np.float32) + 1, sample(8, np.float32)
    y, words = np.empty_like(x), np.empty(4, np.uint64)
    kernels.dropout_add(x, residual, None, y, words, dropout_scale(P), mask_params(x.size),
                        THREADS)
    expected, mask = reference.dropout_add(x, residual, P, seed=SEED, stream=STREAM,
                                           offset=OFFSET)
    with_bias = residual.copy()  # into the residual, with a bias along the last axis
    kernels.dropout_add(x, with_bias, bias, with_bias, None, dropout_scale(P),
                        mask_params(x.size), THREADS)
    biased, _ = reference.bias_dropout_add(x.reshape(25, 8), bias, residual.reshape(25, 8), P,
                                           seed=SEED, stream=STREAM, offset=OFFSET)
    return [(y, expected), (words, mask.words), (with_bias, biased.reshape(-1))]


def softmax_dropout(kernels):
    x = sample((5, 40), np.float32)
    rows = x.T[np.newaxis]  # (1, 40, 5) with strides: the softmax along x's axis 0
    y, softmax, words = np.empty((1, 40, 5), np.float32), np.empty((1, 40, 5), np.float32), \
        np.empty(4, np.uint64)
    kernels.softmax_dropout(rows, y, softmax, words, dropout_scale(P), mask_params(x.size),
                            THREADS)
    expected_softmax = np.empty_like(x.T)
    _, mask = reference.softmax_dropout(x.T, P, axis=0, seed=SEED, stream=STREAM, offset=OFFSET,
                                        softmax_out=expected_softmax)
    # the exponential is not bit-specified: compare y with dropout of the kernel's own softmax
    expected, _ = reference.dropout(softmax, P, seed=SEED, stream=STREAM, offset=OFFSET)
    assert np.allclose(softmax[0], expected_softmax, rtol=1e-6, atol=0, equal_nan=True)
    return [(y, expected), (words, mask.words)]


def softmax_dropout_backward(kernels):
    grad, softmax = sample((4, 30, 3), np.float32), sample((4, 30, 3), np.float32)
    words = reference.bernoulli_mask(grad.size, P, seed=SEED, stream=STREAM)
    mask = fastdrop.DropoutMask(words, shape=grad.shape, p=P, seed=SEED, stream=STREAM,
                                offset=0)
    target = np.empty_like(grad)
    kernels.softmax_dropout_backward(grad, softmax, target, words, dropout_scale(P), THREADS)
    return [(target, reference.softmax_dropout_backward(grad, softmax, mask, axis=1))]


SMALL_CALLS = [scale_by_stream, scale_by_runs, scale_by_mask, apply_broadcast, gaussian,
               gaussian_runs, dropout_plain, dropout_add, softmax_dropout,
               softmax_dropout_backward]


def test_every_entry_has_a_small_call():
    assert {call.__name__ for call in SMALL_CALLS} == set(ENTRIES)


@pytest.mark.parametrize("backend", COMPILED)
@pytest.mark.parametrize("small_call", SMALL_CALLS, ids=lambda call: call.__name__)
def test_a_small_call_of_each_entry_gives_the_references_bits(backend, small_call):
    for got, expected in small_call(_backends.kernels(backend)):
        assert got.dtype == expected.dtype and np.array_equal(bits(got), bits(expected))
