"""fastdrop.torch under torch.compile: what a compiled step keeps, and where operators run.

- Compiling before any eager call traces the operators with no graph break (tracing
  never loads or builds the C++ eager path).
- For ReLU then dropout, the compiled forward keeps no bool tensor for backward: the
  dropout gradient hands the partitioner the ReLU output, as a p = 0 step keeps it.
- The operators' bodies give the same bits on the C++ kernels and on the NumPy path.
"""
import functools

import numpy as np
import pytest

from tests.util import require

torch = require("torch", "torch")

import fastdrop.torch  # noqa: E402
from fastdrop.torch import _build, _ops  # noqa: E402
from tests.test_torch import CPP, tensor_bits, values  # noqa: E402

OPS = torch.ops.fastdrop
P = 0.4
SEED = 1234


def relu_dropout_mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), fastdrop.torch.Dropout(P),
                               torch.nn.Linear(64, 4))


def test_compiling_before_any_eager_call_gives_one_graph(monkeypatch):
    monkeypatch.setattr(_build, "eager", _build.UNLOADED)
    model, inputs = relu_dropout_mlp(), torch.randn(16, 8)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    torch.manual_seed(SEED)
    traced = compiled(inputs)  # fullgraph: a graph break is an error
    torch.manual_seed(SEED)
    assert torch.equal(traced, model(inputs))


def saved_dtypes(model, inputs):
    """The dtypes of the tensors a compiled forward keeps for backward (Inductor's partition)."""
    from functorch.compile import make_boxed_func, min_cut_rematerialization_partition
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table

    kept = []

    def forward_compiler(graph, _example_inputs):
        outputs = next(node for node in graph.graph.nodes if node.op == "output").args[0]
        kept.extend(node.meta["val"].dtype for node in outputs[1:])  # [0]: the model's output
        return make_boxed_func(graph.forward)

    backend = aot_autograd(fw_compiler=forward_compiler, decompositions=select_decomp_table(),
                           bw_compiler=lambda graph, _: make_boxed_func(graph.forward),
                           partition_fn=functools.partial(min_cut_rematerialization_partition,
                                                          compiler="inductor"))
    torch._dynamo.reset()
    torch.compile(model, backend=backend)(inputs).sum().backward()
    return kept


def test_relu_then_dropout_keeps_no_bool_mask():
    kept = saved_dtypes(relu_dropout_mlp(), torch.randn(16, 8))
    assert torch.int64 in kept  # the mask words
    assert torch.bool not in kept, kept


# (shape, shared_dims, alpha) of the operator cases
CASES = (((3, 5, 7), [], False), ((4, 6, 5), [2], False), ((7, 13), [], True),
         ((2, 5, 4, 3), [2, 3], True), ((300, 70), [], False), ((0, 3), [], False))


@pytest.mark.skipif(not CPP, reason="the C++ path is not built here")
def test_operator_bodies_equal_on_the_cpp_kernels_and_the_numpy_path(monkeypatch, subtests):
    for dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
        for shape, shared, alpha in CASES:
            x, grad = values(shape, dtype), values(shape, dtype, salt=5)
            key = torch.tensor([-5, 1 << 62])
            results = []
            for kernels in ("cpp", "numpy"):
                if kernels == "numpy":
                    monkeypatch.setattr(_ops, "_cpp_ops", lambda: None)
                y, words = OPS.dropout(x, P, key, shared, alpha)
                results.append([y, words, OPS.dropout_backward(grad, words, P, shared, alpha),
                                OPS.dropout_recompute(x, P, key, shared, alpha),
                                OPS.dropout_backward_recompute(grad, P, key, shared, alpha)])
                monkeypatch.undo()
            with subtests.test(dtype=str(dtype), shape=shape, shared=shared, alpha=alpha):
                for cpp, numpy in zip(*results):
                    assert np.array_equal(tensor_bits(cpp), tensor_bits(numpy))


def graph_targets(function, *inputs):
    """The operators of the forward and backward graphs AOT autograd makes of ``function``."""
    from functorch.compile import make_boxed_func
    from torch._dynamo.backends.common import aot_autograd

    targets = set()

    def compiler(graph, _example_inputs):
        targets.update(str(node.target) for node in graph.graph.nodes
                       if node.op == "call_function")
        return make_boxed_func(graph.forward)

    torch._dynamo.reset()
    out = torch.compile(function, backend=aot_autograd(fw_compiler=compiler, bw_compiler=compiler),
                        fullgraph=True)(*inputs)
    out.sum().backward()
    return targets


@pytest.mark.skipif(not CPP, reason="the C++ path is not built here")
def test_compiled_graphs_call_the_cpp_operators_with_the_eager_bits(monkeypatch, subtests):
    with subtests.test("graph"):
        monkeypatch.setattr(_build, "eager", _build.UNLOADED)  # compiled first: still C++
        targets = graph_targets(relu_dropout_mlp(), torch.randn(16, 8))
        monkeypatch.undo()
        assert {"fastdrop_cpp.draw_key.default", "fastdrop_cpp.dropout_of_key.default",
                "fastdrop_cpp.dropout_backward_of_words.default"} <= targets, targets
        assert not any(target.startswith("fastdrop.") for target in targets), targets
    with subtests.test("recompute keeps the operators"):  # its key must reach backward
        layer = fastdrop.torch.Dropout(P, recompute=True)
        targets = graph_targets(layer, torch.randn(16, 8, requires_grad=True))
        assert "fastdrop.dropout_recompute.default" in targets, targets
    with subtests.test("key"):
        torch.manual_seed(SEED)
        drawn = torch.ops.fastdrop_cpp.draw_key(torch.empty(0))
        torch.manual_seed(SEED)
        assert torch.equal(drawn, OPS.draw_key(torch.empty(0)))
    for dtype in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
        for shape, shared, alpha in CASES:
            x, grad = values(shape, dtype), values(shape, dtype, salt=5)
            key = torch.tensor([-5, 1 << 62])
            with subtests.test(dtype=str(dtype), shape=shape, shared=shared, alpha=alpha):
                y, words = torch.ops.fastdrop_cpp.dropout_of_key(x, P, key, 0, shared, alpha)
                expected_y, expected_words = OPS.dropout(x, P, key, shared, alpha)
                backward = torch.ops.fastdrop_cpp.dropout_backward_of_words(
                    grad, words, P, 0, shared, alpha, x)
                for ours, expected in ((y, expected_y), (words, expected_words),
                                       (backward, OPS.dropout_backward(grad, words, P, shared,
                                                                       alpha))):
                    assert np.array_equal(tensor_bits(ours), tensor_bits(expected))


@pytest.mark.skipif(not CPP, reason="the C++ path is not built here")
def test_compiled_graphs_cpp_operators_pass_opcheck(subtests):
    key = torch.tensor([-5, 1 << 62])
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(4, 6, 5).to(dtype).requires_grad_()  # finite: opcheck compares
        words = torch.empty(2, dtype=torch.int64).random_()
        for op, arguments in ((torch.ops.fastdrop_cpp.dropout_of_key.default,
                               (x, P, key, 0, [], False)),
                              (torch.ops.fastdrop_cpp.dropout_of_key.default,
                               (x, P, key, 0, [2], True)),
                              (torch.ops.fastdrop_cpp.dropout_backward_of_words.default,
                               (x, words, P, 0, [], False, None))):
            with subtests.test(op=str(op), dtype=str(dtype)):
                torch.library.opcheck(op, arguments)
    with subtests.test("draw_key"):
        torch.library.opcheck(torch.ops.fastdrop_cpp.draw_key.default, (torch.empty(3),),
                              test_utils=("test_schema", "test_faketensor"))
        assert torch.Tag.nondeterministic_seeded in torch.ops.fastdrop_cpp.draw_key.default.tags
