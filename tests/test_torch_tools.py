"""fastdrop.torch under the tools that look for dropout or transform a model.

Baal's MC dropout, torch.fx, vmap, torch.func.grad, torch.compile(fullgraph=True) at
every rank torch takes, meta tensors, torch.jit. The oracle is the eager call of the
same function after the same ``torch.manual_seed``, or torch's own behaviour.
"""
import copy
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from tests.util import require

torch = require("torch", "torch")

import fastdrop.torch as ft  # noqa: E402  (needs torch)

F = torch.nn.functional
ROOT = Path(__file__).resolve().parent.parent
P = 0.4
SEED = 1234
# (fastdrop's function, torch's, the shape of one vmapped element)
FUNCTIONS = (
    (ft.dropout, F.dropout, (3, 5)),
    (ft.dropout1d, F.dropout1d, (4, 6)),
    (ft.dropout2d, F.dropout2d, (2, 3, 4, 2)),
    (ft.dropout3d, F.dropout3d, (3, 2, 2, 3)),
    (ft.alpha_dropout, F.alpha_dropout, (3, 5)),
    (ft.feature_alpha_dropout, F.feature_alpha_dropout, (2, 3, 4)),
)
MODULES = (  # (fastdrop's module, the torch class it is an instance of)
    (ft.Dropout, torch.nn.Dropout), (ft.Dropout1d, torch.nn.Dropout1d),
    (ft.Dropout2d, torch.nn.Dropout2d), (ft.Dropout3d, torch.nn.Dropout3d),
    (ft.AlphaDropout, torch.nn.AlphaDropout),
    (ft.FeatureAlphaDropout, torch.nn.FeatureAlphaDropout),
)


def seeded(function, *args, **kwargs):
    """``function(*args, **kwargs)`` right after ``torch.manual_seed(SEED)``."""
    torch.manual_seed(SEED)
    return function(*args, **kwargs)


def mlp(dropout=torch.nn.Dropout):
    """A small model with two dropout modules, replaced by fastdrop's."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), dropout(0.5),
                                torch.nn.Linear(16, 16), dropout(0.3), torch.nn.Linear(16, 4))
    ft.replace_dropout(model)
    return model


# ---------------------------------------------------------------- modules are torch's classes


def test_modules_are_instances_of_torchs_classes(subtests):
    class UserDropout(torch.nn.Dropout):
        pass

    for ours, theirs in MODULES:
        with subtests.test(module=ours.__name__):
            module = ours(0.3, recompute=True)
            assert isinstance(module, theirs)
            model = torch.nn.Sequential(theirs(0.3), UserDropout(0.3), module)
            assert ft.replace_dropout(model) == 1  # exactly torch's type, nothing else
            assert type(model[0]) is ours and type(model[1]) is UserDropout
            assert model[2] is module
            for copied in (copy.deepcopy(module), pickle.loads(pickle.dumps(module))):
                assert type(copied) is ours and copied.recompute and copied.p == 0.3


# ---------------------------------------------------------------- Baal


def test_baal_mc_dropout_varies_after_replace_dropout(subtests):
    dropout = require("baal.bayesian.dropout", "baal")
    x = torch.randn(3, 8)
    for patch in ("MCDropoutModule", "patch_module"):
        with subtests.test(patch=patch):
            model = mlp()
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # "No layer was modified by patch_module!"
                wrapped = getattr(dropout, patch)(model)
            wrapped.eval()
            with torch.no_grad(), torch.profiler.profile() as profile:
                predictions = torch.stack([wrapped(x) for _ in range(10)])
            assert predictions.std(dim=0).mean() > 0
            # baal's own layers call F.dropout inside the model: routed to fastdrop, so
            # none of torch's dropout ops runs (fastdrop's eager paths record no op event)
            names = {event.name for event in profile.events()}
            assert not names & {"aten::bernoulli_", "aten::native_dropout", "aten::dropout"}


# ---------------------------------------------------------------- torch.fx


class FunctionalModel(torch.nn.Module):
    """Calls fastdrop's functions in its forward (a model FX traces through)."""

    def forward(self, x):
        return ft.dropout2d(ft.functional.dropout(x, P), 0.2)


def test_fx_graph_has_one_call_per_dropout_and_eagers_masks(subtests):
    x = torch.randn(4, 8)
    model = mlp()
    traced = torch.fx.symbolic_trace(model)
    with subtests.test("modules"):
        calls = [type(traced.get_submodule(node.target)) for node in traced.graph.nodes
                 if node.op not in ("placeholder", "output")]
        assert calls == [type(module) for module in model]  # ft.Dropout at 2 and 4
        assert torch.equal(seeded(traced, x), seeded(model, x))
        traced.eval()  # a module call: training is read when the graph runs
        assert torch.equal(traced(x), model.eval()(x))
    with subtests.test("functions"):
        functional = FunctionalModel()
        traced = torch.fx.symbolic_trace(functional)
        calls = [node.target for node in traced.graph.nodes if node.op == "call_function"]
        assert calls == [ft.functional.dropout, ft.functional.dropout2d]
        x = torch.randn(2, 3, 4, 5)
        assert torch.equal(seeded(traced, x), seeded(functional, x))


# ---------------------------------------------------------------- vmap


def torchs_vmap_message():
    with pytest.raises(RuntimeError) as raised:
        torch.func.vmap(lambda t: F.dropout(t, P))(torch.ones(2, 3))
    return str(raised.value)


def test_vmap_randomness(subtests):
    message = torchs_vmap_message()
    for ours, _, shape in FUNCTIONS:
        batch = torch.randn(4, *shape)

        def call(element, ours=ours):
            return ours(element, P, True)

        def unbatched(element, ours=ours, batch=batch):  # its input is not the vmapped one
            return ours(batch[0], P, True) + element

        with subtests.test(function=ours.__name__, randomness="error"):
            for inside in (call, unbatched):
                with pytest.raises(RuntimeError) as raised:
                    torch.func.vmap(inside)(batch)
                assert str(raised.value) == message
        with subtests.test(function=ours.__name__, randomness="same"):
            # every element the mask of one call outside vmap, drawn as that call would
            result = seeded(torch.func.vmap(call, randomness="same"), batch)
            for index, element in enumerate(batch):
                assert torch.equal(result[index], seeded(call, element))
        with subtests.test(function=ours.__name__, randomness="different"):
            # element i the mask of the i-th of as many calls outside vmap
            result = seeded(torch.func.vmap(call, randomness="different"), batch)
            torch.manual_seed(SEED)
            assert torch.equal(result, torch.stack([call(element) for element in batch]))
            assert not all(torch.equal(result[0] / batch[0], result[i] / batch[i])
                           for i in range(1, len(batch)))


def test_vmap_of_grad_gives_each_element_its_masks_gradient(subtests):
    batch = torch.randn(3, 40)
    for recompute in (False, True):
        with subtests.test(recompute=recompute):
            def loss(t, recompute=recompute):
                return (ft.dropout(t, P, recompute=recompute) * 3).sum()

            gradients = seeded(torch.func.vmap(torch.func.grad(loss), randomness="different"),
                               batch)
            torch.manual_seed(SEED)
            for element, gradient in zip(batch, gradients):
                element = element.clone().requires_grad_()
                loss(element).backward()
                assert torch.equal(gradient, element.grad)


# ---------------------------------------------------------------- torch.func.grad


def test_func_grad_equals_autograd(subtests):
    x = torch.randn(50)
    for recompute in (False, True):
        def loss(t, recompute=recompute):
            return (ft.dropout(t, P, recompute=recompute) ** 2).sum()

        with subtests.test(recompute=recompute, order=1):
            eager = x.clone().requires_grad_()
            seeded(loss, eager).backward()
            assert torch.equal(seeded(torch.func.grad(loss), x), eager.grad)
        with subtests.test(recompute=recompute, order=2):
            eager = x.clone().requires_grad_()
            (first,) = torch.autograd.grad(seeded(loss, eager), eager, create_graph=True)
            first.sum().backward()
            second = seeded(torch.func.grad(lambda t: torch.func.grad(loss)(t).sum()), x)
            assert torch.equal(second, eager.grad)


# ---------------------------------------------------------------- torch.compile


@pytest.mark.filterwarnings("ignore:dropout[23]d. Received")
def test_compile_fullgraph_at_every_rank_torch_takes(subtests):
    for ours, theirs, _ in FUNCTIONS:
        for rank in range(7):
            x = torch.randn((2,) * rank)
            try:
                theirs(x, P, True)
            except RuntimeError:
                continue  # a rank torch refuses
            with subtests.test(function=ours.__name__, rank=rank):
                torch._dynamo.reset()
                compiled = torch.compile(lambda t, ours=ours: ours(t, P, True), fullgraph=True,
                                         backend="eager")
                assert torch.equal(seeded(compiled, x), seeded(ours, x, P, True))


def test_compile_fullgraph_as_a_process_first_call():
    """Compiled before any eager call: Dynamo does not trace the C++ path's first load."""
    code = ("import torch, fastdrop.torch as ft\n"
            "f = torch.compile(lambda t: ft.dropout(t, 0.5), fullgraph=True, backend='eager')\n"
            "print(f(torch.ones(8)).shape)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and "torch.Size([8])" in done.stdout, done.stderr[-2000:]


def test_compiled_odd_rank_warns_as_torch_does():
    for function in (ft.dropout2d, F.dropout2d):
        torch._dynamo.reset()
        with pytest.warns(UserWarning, match="Received a 5-D input to dropout2d"):
            torch.compile(lambda t, f=function: f(t, P), fullgraph=True,
                          backend="eager")(torch.ones((2,) * 5))


# ---------------------------------------------------------------- meta tensors


def test_meta_tensors_propagate_shapes(subtests):
    state = torch.default_generator.get_state()
    for ours, _, shape in FUNCTIONS:
        for recompute in (False, True):
            with subtests.test(function=ours.__name__, recompute=recompute):
                x = torch.ones(shape, device="meta", dtype=torch.float16, requires_grad=True)
                y = ours(x, P, True, recompute=recompute, generator=torch.Generator())
                assert y.is_meta and y.shape == x.shape and y.dtype == x.dtype
                y.sum().backward()
                assert x.grad.is_meta and x.grad.shape == x.shape
    assert torch.equal(torch.default_generator.get_state(), state)  # nothing drawn
    with subtests.test("model built on meta"):
        with torch.device("meta"):
            model = mlp()
        assert model(torch.ones(5, 8, device="meta")).shape == (5, 4)


# ---------------------------------------------------------------- torch.jit


def test_jit_trace_in_training_draws_a_mask_per_run_and_says_so():
    model, x = mlp(), torch.randn(64, 8)
    with pytest.warns(torch.jit.TracerWarning, match="each run of it draws a new mask"):
        traced = torch.jit.trace(model, x, check_trace=False)
    assert not torch.equal(traced(x), traced(x))
    assert torch.equal(seeded(traced, x), seeded(model, x))


def test_jit_script_is_a_clear_error():
    with pytest.raises(RuntimeError, match="torch.jit.script cannot compile fastdrop.torch"):
        torch.jit.script(mlp())
