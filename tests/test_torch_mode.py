"""fastdrop.torch.dropout_mode and replace_dropout(functional=True): functional dropout routed.

What the mode takes gives fastdrop's bits (the same as calling fastdrop.torch's
function with the same seed); what it does not take is torch's own result; the
hooks of replace_dropout survive checkpointing, pickling, copying and compiling.
"""
import copy
import pickle
import re

import pytest

from tests.util import require

torch = require("torch", "torch")

import fastdrop.torch as ft  # noqa: E402  (needs torch)
from tests.test_torch import RecordOps  # noqa: E402

F = torch.nn.functional
SEED = 2024


def seeded(function, *args, **kwargs):
    """``function(*args, **kwargs)`` right after ``torch.manual_seed(SEED)``."""
    torch.manual_seed(SEED)
    return function(*args, **kwargs)


def in_mode(function, *args, **kwargs):
    with ft.dropout_mode():
        return seeded(function, *args, **kwargs)


def function_stack_depth():
    return torch._C._len_torch_function_stack()


# (torch's function, fastdrop's twin, call with torch's arguments, input shape)
ROUTES = [
    (F.dropout, ft.dropout, lambda f, x: f(x, 0.3, True), (4, 6, 5)),
    (F.dropout1d, ft.dropout1d, lambda f, x: f(x, 0.3, True), (4, 6, 5)),
    (F.dropout2d, ft.dropout2d, lambda f, x: f(x, 0.3, True), (2, 4, 6, 5)),
    (F.dropout3d, ft.dropout3d, lambda f, x: f(x, 0.3, True), (2, 4, 3, 6, 5)),
    (F.alpha_dropout, ft.alpha_dropout, lambda f, x: f(x, 0.3, True), (4, 6, 5)),
    (F.feature_alpha_dropout, ft.feature_alpha_dropout, lambda f, x: f(x, 0.3, True),
     (2, 4, 6, 5)),
    (torch.dropout, ft.dropout, lambda f, x: f(x, 0.3, True), (4, 6, 5)),
    (torch.dropout_, ft.dropout, lambda f, x: f(x, 0.3, True), (4, 6, 5)),
    (torch.alpha_dropout, ft.alpha_dropout, lambda f, x: f(x, 0.3, True), (4, 6, 5)),
    (torch.alpha_dropout_, ft.alpha_dropout, lambda f, x: f(x, 0.3, True), (4, 6, 5)),
]


def test_each_routed_function_gives_fastdrops_bits(subtests):
    for torch_function, fastdrop_function, call, shape in ROUTES:
        with subtests.test(function=torch_function.__name__):
            x = torch.randn(shape)
            inplace = torch_function.__name__.endswith("_")
            expected = seeded(fastdrop_function, x.clone(), 0.3, True, inplace)
            own = seeded(call, torch_function, x.clone())
            got = in_mode(call, torch_function, x.clone())
            assert torch.equal(got, expected)
            assert not torch.equal(got, own)  # torch's own mask is another one


def test_routed_dropout_trains_through_fastdrops_autograd():
    x = torch.randn(64, 32, requires_grad=True)
    y = in_mode(F.dropout, x, 0.5)
    y.sum().backward()
    assert torch.equal(y, seeded(ft.dropout, x.detach(), 0.5))
    assert torch.equal(x.grad, (y != 0) * 2.0)


def test_what_fastdrop_does_not_take_is_torchs_own(subtests):
    x = torch.randn(8, 8)

    class Logged(torch.Tensor):  # a subclass that takes torch functions itself
        calls = []

        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            cls.calls.append(func)
            return super().__torch_function__(func, types, args, kwargs or {})

    cases = {
        "training=False": lambda: F.dropout(x, 0.5, training=False),
        "p=0": lambda: F.dropout(x, 0.0),
        "int64": lambda: F.dropout(x.to(torch.int64), 0.5),
        "complex": lambda: F.dropout(torch.complex(x, x), 0.5),
        "meta device": lambda: F.dropout(x.to("meta"), 0.5),
        "sparse": lambda: F.dropout(x.to_sparse(), 0.5).to_dense(),
        "subclass": lambda: F.dropout(x.as_subclass(Logged), 0.5).as_subclass(torch.Tensor),
        "attention without dropout": lambda: F.scaled_dot_product_attention(x[None], x[None],
                                                                            x[None]),
        "attention in float64 on meta": lambda: F.scaled_dot_product_attention(
            *[x[None].double().to("meta")] * 3, dropout_p=0.5),
    }
    for name, call in cases.items():
        with subtests.test(case=name):
            try:
                own = seeded(call)
            except RuntimeError as error:  # torch refuses: so must the mode, with torch's error
                with pytest.raises(RuntimeError, match=re.escape(str(error)[:40])):
                    in_mode(call)
                continue
            got = in_mode(call)
            if own.device.type == "meta":
                assert got.device.type == "meta" and got.shape == own.shape
            else:
                assert torch.equal(got, own)
    assert F.dropout in Logged.calls


def test_torchs_errors_pass_through():
    with ft.dropout_mode():
        with pytest.raises(ValueError, match="between 0 and 1"):
            F.dropout(torch.ones(3), 1.5)
        with pytest.raises(TypeError):
            F.dropout(torch.ones(3), 0.5, training="yes")


def test_attention_is_routed_only_with_dropout_and_unless_switched_off():
    q, k, v = torch.randn(3, 2, 4, 6, 8).unbind(0)
    expected = seeded(ft.scaled_dot_product_attention, q, k, v, dropout_p=0.3)
    own = seeded(F.scaled_dot_product_attention, q, k, v, dropout_p=0.3)
    assert torch.equal(in_mode(F.scaled_dot_product_attention, q, k, v, dropout_p=0.3),
                       expected)
    assert torch.equal(in_mode(F.scaled_dot_product_attention, q, k, v),
                       F.scaled_dot_product_attention(q, k, v))
    with ft.dropout_mode(attention=False):
        torch.manual_seed(SEED)
        assert torch.equal(F.scaled_dot_product_attention(q, k, v, dropout_p=0.3), own)
        torch.manual_seed(SEED)
        assert torch.equal(F.dropout(q, 0.3), seeded(ft.dropout, q, 0.3))


def test_recompute_is_passed_on():
    x = torch.randn(64, requires_grad=True)
    for recompute, operator in ((False, "fastdrop.dropout.default"),
                                (True, "fastdrop.dropout_recompute.default")):
        with RecordOps() as recorded, ft.dropout_mode(recompute=recompute):
            F.dropout(x, 0.5)
        assert operator in recorded.names


def test_the_mode_leaves_the_stack_as_it_found_it():
    depth = function_stack_depth()
    with pytest.raises(ZeroDivisionError):
        with ft.dropout_mode():
            raise ZeroDivisionError
    assert function_stack_depth() == depth


# ---------------------------------------------------------------- replace_dropout


class Block(torch.nn.Module):
    """A module whose dropout is functional, as in Hugging Face's attention code."""

    def __init__(self):
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x):
        h = F.dropout(self.linear(x), 0.4, training=self.training)
        q = h.view(2, 2, -1, 4)
        dropout_p = 0.2 if self.training else 0.0  # as transformers does: sdpa has no mode
        return F.scaled_dot_product_attention(q, q, q, dropout_p=dropout_p).reshape(x.shape)


class Model(torch.nn.Module):
    def __init__(self, checkpointing=None):
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(), Block()])
        self.out = torch.nn.Dropout(0.1)
        self.checkpointing = checkpointing  # None, or checkpoint's use_reentrant

    def forward(self, x):
        for block in self.blocks:
            if self.checkpointing is None:
                x = block(x)
            else:
                x = torch.utils.checkpoint.checkpoint(block, x,
                                                      use_reentrant=self.checkpointing)
        return self.out(x)


def model(checkpointing=None, **options):
    torch.manual_seed(0)
    built = Model(checkpointing)
    ft.replace_dropout(built, **options)
    return built


def fastdrop_forward(module, x):
    """What ``module(x)`` gives when every dropout in it is fastdrop's."""
    with ft.dropout_mode():
        return seeded(module, x)


def hook_count(module):
    return len(module._forward_pre_hooks) + len(module._forward_hooks)


def test_replace_dropout_routes_the_functional_dropout():
    x = torch.randn(8, 8)
    routed = model()
    modules_only = model(functional=False)
    expected = fastdrop_forward(modules_only, x)
    assert torch.equal(seeded(routed, x), expected)
    assert not torch.equal(seeded(modules_only, x), expected)
    assert function_stack_depth() == 0


def test_replace_dropout_twice_installs_the_hooks_once_and_can_remove_them():
    built = model()
    assert all(hook_count(module) == 2 for module in built.modules())
    assert ft.replace_dropout(built, recompute=True) == 0  # the modules were replaced already
    outer = torch.nn.Sequential(built, torch.nn.Dropout(0.2))
    assert ft.replace_dropout(outer) == 1
    assert all(hook_count(module) == 2 for module in outer.modules())
    ft.replace_dropout(outer, functional=False)
    assert all(hook_count(module) == 0 for module in outer.modules())


def test_a_forward_that_raises_leaves_no_mode_behind():
    built = model()
    with pytest.raises(RuntimeError):
        built(torch.randn(3, 5))
    assert function_stack_depth() == 0
    x = torch.randn(8, 8)
    assert torch.equal(seeded(built, x), fastdrop_forward(built, x))


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_checkpointing_recomputes_the_same_masks(use_reentrant):
    x = torch.randn(8, 8, requires_grad=True)
    gradients = []
    for built in (model(), model(checkpointing=use_reentrant)):
        seeded(built, x).square().sum().backward()
        gradients.append([p.grad for p in built.parameters()] + [x.grad.clone()])
        x.grad = None
    assert all(torch.equal(a, b) for a, b in zip(*gradients))


def test_copies_and_pickles_route_the_same_and_keep_the_state_dict():
    built = model()
    x = torch.randn(8, 8)
    plain = Model()
    assert built.state_dict().keys() == plain.state_dict().keys()
    for twin in (copy.deepcopy(built), pickle.loads(pickle.dumps(built))):
        assert all(hook_count(module) == 2 for module in twin.modules())
        assert torch.equal(seeded(twin, x), seeded(built, x))


def test_evaluation_mode_is_deterministic():
    built = model().eval()
    x = torch.randn(8, 8)
    assert torch.equal(built(x), built(x))


def test_compiled_model_gives_eagers_masks_in_one_graph():
    built = model()
    x = torch.randn(8, 8)
    explanation = torch._dynamo.explain(built)(x)
    assert explanation.graph_break_count == 0
    compiled = torch.compile(built, fullgraph=True, backend="aot_eager")
    assert torch.equal(seeded(compiled, x), seeded(built, x))
    assert function_stack_depth() == 0


def test_exported_model_calls_fastdrops_operators():
    built = model()
    x = torch.randn(8, 8)
    program = torch.export.export(built, (x,))
    targets = {str(node.target) for node in program.graph.nodes}
    assert {"fastdrop.dropout.default", "fastdrop.attention_dropout.default"} <= targets
    assert torch.equal(seeded(program.module(), x), seeded(built, x))
