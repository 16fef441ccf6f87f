"""fastdrop.torch: bits against fastdrop's NumPy API, autograd, compile/export, torch's semantics.

Every function is checked through one table, `VARIANTS` (torch's function and module,
fastdrop.torch's twins, the axes that share a keep bit for each input shape, alpha or
not). The oracle is fastdrop's NumPy API (``fastdrop.dropout``, ``alpha_dropout`` and
their backwards) called with the key `fastdrop.torch.next_key` announces, or torch
itself; nothing here recomputes a mask.
"""
import contextlib
import dataclasses
import functools
import inspect
import math
import os
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import fastdrop
from tests.util import bits, for_each, require, require_inductor, sample

torch = require("torch", "torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import fastdrop.torch as ft  # noqa: E402  (needs torch)
from fastdrop.torch import _build  # noqa: E402

F = torch.nn.functional
OPS = torch.ops.fastdrop
PACKAGE_ROOT = Path(fastdrop.__file__).resolve().parent.parent
DTYPES = (torch.float16, torch.float32, torch.float64, torch.bfloat16)
P = 0.4
SEED = 1234
UINT64 = (1 << 64) - 1


def cpp_path_available():
    """Whether the C++ eager path runs here (building it once if it is not cached yet).

    FASTDROP_TORCH_CPP=0 runs the file on the Python path alone; =1 requires the C++ path
    (CI builds it first), so a failed build fails the run instead of narrowing it.
    """
    if _build.switched_off():
        return False
    try:
        with _build.path("cpp"):
            return True
    except Exception:
        if os.environ.get(_build.ENV_SWITCH) == "1":
            raise
        return False


CPP = cpp_path_available()
EAGER_PATHS = ("python", "cpp") if CPP else ("python",)  # fastdrop.torch's two eager paths


def on_each_eager_path(test):
    """Run the test's body once on each eager path (Python, C++), naming the path on failure."""
    @functools.wraps(test)
    def on_each(*args, **kwargs):
        for path in EAGER_PATHS:
            try:
                with _build.path(path):
                    test(*args, **kwargs)
            except BaseException as error:
                error.add_note(f"on the {path} path of fastdrop.torch")
                raise
    return on_each


@dataclasses.dataclass(frozen=True)
class Variant:
    """One dropout function: torch's and ours, as function and module.

    ``cases`` are (input shape, axes sharing one keep bit), the axes worked out from
    torch's documentation (all axes after (N, C), after C for unbatched input);
    ``cases[0]`` is a batched one. ``stats_shape`` has at least 1000 mask elements.
    """

    name: str
    theirs: Callable
    ours: Callable
    their_module: type
    our_module: type
    alpha: bool
    cases: tuple
    stats_shape: tuple

    def __str__(self):
        return self.name

    def mask_elements(self, shape, shared):
        return math.prod(1 if axis in shared else n for axis, n in enumerate(shape))


VARIANTS = (
    Variant("dropout", F.dropout, ft.dropout, torch.nn.Dropout, ft.Dropout, False,
            (((3, 5, 7), ()), ((7, 13), ()), ((1,), ()), ((), ())), (40, 37)),
    Variant("dropout1d", F.dropout1d, ft.dropout1d, torch.nn.Dropout1d, ft.Dropout1d, False,
            (((3, 5, 7), (2,)), ((5, 7), (1,))), (40, 30, 3)),
    Variant("dropout2d", F.dropout2d, ft.dropout2d, torch.nn.Dropout2d, ft.Dropout2d, False,
            (((2, 5, 4, 3), (2, 3)), ((4, 6, 5), (2,)), ((1, 1, 1, 1), (2, 3))),  # 3-D: (N, C, L)
            (40, 30, 2, 2)),
    Variant("dropout3d", F.dropout3d, ft.dropout3d, torch.nn.Dropout3d, ft.Dropout3d, False,
            (((2, 3, 4, 3, 2), (2, 3, 4)), ((3, 4, 3, 2), (1, 2, 3))), (40, 30, 2, 2, 1)),
    Variant("alpha_dropout", F.alpha_dropout, ft.alpha_dropout, torch.nn.AlphaDropout,
            ft.AlphaDropout, True, (((3, 5, 7), ()), ((7, 13), ()), ((1,), ()), ((), ())),
            (40, 37)),
    Variant("feature_alpha_dropout", F.feature_alpha_dropout, ft.feature_alpha_dropout,
            torch.nn.FeatureAlphaDropout, ft.FeatureAlphaDropout, True,
            (((2, 5, 4, 3), (2, 3)), ((4, 6, 5), (2,))), (40, 30, 3)),
)
CHANNEL_VARIANTS = tuple(v for v in VARIANTS if v.cases[0][1])
PLAIN_VARIANTS = tuple(v for v in VARIANTS if not v.alpha)
ALPHA_VARIANTS = tuple(v for v in VARIANTS if v.alpha)


# ---------------------------------------------------------------- tensors and references


def values(shape, dtype, salt=0):
    """fastdrop's sample values (normals, +-0.0, inf, -inf, NaN) as a tensor of dtype."""
    return torch.from_numpy(sample(shape, np.float32, salt)).to(dtype)


def layouts(shape):
    """The memory layouts worth checking for an input of this shape."""
    found = ["contiguous"]
    if len(shape) >= 2 and shape[-1] > 1 and shape[-2] > 1:
        found.append("transposed")
    if math.prod(shape) > 1:
        found.append("strided")
    if len(shape) in (4, 5) and math.prod(shape) > 1:
        found.append("channels_last")
    return found


def make(shape, layout, dtype, salt=0, finite=False):
    """A tensor of shape with the given memory layout (a view where it is not contiguous).

    ``finite`` replaces inf and NaN by numbers (opcheck compares outputs with NaN != NaN).
    """
    shape = tuple(shape)

    def base(base_shape):
        x = values(base_shape, dtype, salt)
        return torch.nan_to_num(x, nan=0.5, posinf=2.0, neginf=-2.0) if finite else x

    if layout == "transposed":
        return base(shape[:-2] + (shape[-1], shape[-2])).transpose(-1, -2)
    if layout == "strided":  # step 2 on every axis, starting at 1
        return base(tuple(2 * n + 1 for n in shape))[tuple(slice(1, None, 2) for _ in shape)]
    x = base(shape)
    if layout == "channels_last":
        fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
        x = x.contiguous(memory_format=fmt)
    return x


def numpy_form(tensor):
    """(NumPy array over tensor's memory, dtype keywords) as fastdrop's NumPy API takes it."""
    tensor = tensor.detach()
    if tensor.dtype is torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(np.uint16), {"dtype": "bfloat16"}
    return tensor.numpy(), {}


def tensor_bits(tensor):
    """A tensor's bytes in logical C order."""
    return bits(numpy_form(tensor.detach().contiguous())[0])


def reference(variant, x, p, key, shared, grad=None):
    """(y, mask, gradient) from fastdrop's NumPy API for the same values and key."""
    array, keywords = numpy_form(x)
    if shared:
        keywords["broadcast_dims"] = shared
    forward = fastdrop.alpha_dropout if variant.alpha else fastdrop.dropout
    y, mask = forward(np.array(array), p, seed=key[0], stream=key[1], **keywords)
    if grad is None:
        return y, mask, None
    backward = fastdrop.alpha_dropout_backward if variant.alpha else fastdrop.dropout_backward
    grad_array, grad_keywords = numpy_form(grad)
    return y, mask, backward(grad_array, mask, **grad_keywords)


def as_key_tensor(seed, stream):
    """An int64 key tensor holding the 64-bit (seed, stream) (two's complement)."""
    return torch.tensor([v - (1 << 64) if v >= 1 << 63 else v for v in (seed, stream)])


class RecordOps(TorchDispatchMode):
    """A dispatch mode that lets every op through and records its name.

    Under it, the functions must take the torch.library operators.
    """

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def kept_for_backward():
    """The tensors autograd saves inside the block (saved_tensors_hooks' pack)."""
    kept = []

    def pack(tensor):
        kept.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield kept


def nbytes(tensors):
    return sum(t.nelement() * t.element_size() for t in tensors)


def mask_words(words, count, path):
    """The first ``count`` of the words a path kept.

    Eager calls keep exactly ``count``; the operators at least 2, the rest zeros (so that
    torch.export never sees a length of 1).
    """
    words = words.numpy()
    if path != "operators":
        assert words.size == count
    else:
        assert words.size == max(2, count) and not words[count:].any()
    return words[:count]


def path_context(path):
    """An eager path ("python", "cpp"), or the operators (forced by a dispatch mode)."""
    return RecordOps() if path == "operators" else _build.path(path)


# ---------------------------------------------------------------- 1. bits


BITS_CASES = [(variant, shape, shared, layout) for variant in VARIANTS
              for shape, shared in variant.cases for layout in layouts(shape)]


def case_name(case):
    variant, shape, shared, layout = case
    return f"{variant}-{'x'.join(map(str, shape)) or '0d'}-{layout}"


@pytest.mark.parametrize("recompute", [False, True], ids=["mask", "recompute"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_bits_equal_the_numpy_api_on_both_paths(variant, dtype, recompute, subtests):
    """Every shape and memory layout of a variant (subtests: one conversion path)."""
    for case in BITS_CASES:
        if case[0] is variant:
            with subtests.test(case=case_name(case)):
                check_bits_on_both_paths(case, dtype, recompute)


def check_bits_on_both_paths(case, dtype, recompute):
    variant, shape, shared, layout = case
    grad = make(shape, "contiguous", dtype, salt=1)
    for path in (*EAGER_PATHS, "operators"):
        x = make(shape, layout, dtype).requires_grad_()
        assert x.is_contiguous() == (layout == "contiguous")
        before = tensor_bits(x)
        torch.manual_seed(SEED)
        key = ft.next_key()
        expected_y, mask, expected_grad = reference(variant, x, P, key, shared, grad)
        with path_context(path) as mode, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # dropout2d's 3-D warning: tested below
            with kept_for_backward() as kept:
                y = variant.ours(x, P, True, recompute=recompute)
            y.backward(grad)
        context = (path, layout)
        assert y.shape == x.shape and y.dtype == x.dtype, context
        assert np.array_equal(tensor_bits(y), bits(expected_y)), context
        assert np.array_equal(tensor_bits(x.grad), bits(expected_grad)), context
        assert y.stride() == torch.empty_like(x).stride(), context  # torch's memory format
        assert np.array_equal(tensor_bits(x), before), context
        if recompute:  # eager: nothing; operators: the 16-byte key
            assert [(t.dtype, t.numel()) for t in kept] == \
                ([] if path != "operators" else [(torch.int64, 2)]), context
        else:  # the one tensor kept is the mask's packed words
            assert len(kept) == 1 and kept[0].dtype == torch.int64, context
            assert np.array_equal(mask_words(kept[0], mask.words.size, path),
                                  mask.words.view(np.int64)), context
        if path == "operators":
            op = "dropout_recompute" if recompute else "dropout"
            assert f"fastdrop.{op}.default" in mode.names, mode.names
            assert "fastdrop.draw_key.default" in mode.names, mode.names


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_operators_called_with_a_key_equal_the_numpy_api(variant):
    """Direct calls with a key whose int64s are negative: fastdrop reads them as uint64."""
    (shape, shared), p = variant.cases[0], 0.3
    seed, stream = UINT64, 1 << 63
    key = as_key_tensor(seed, stream)
    assert key.tolist() == [-1, -(1 << 63)]
    x = values(shape, torch.float32)
    grad = values(shape, torch.float32, salt=2)
    expected_y, mask, expected_grad = reference(variant, x, p, (seed, stream), shared, grad)
    y, words = OPS.dropout(x, p, key, list(shared), variant.alpha)
    assert np.array_equal(tensor_bits(y), bits(expected_y))
    assert words.dtype == torch.int64
    count = math.ceil(variant.mask_elements(shape, shared) / 64)
    assert np.array_equal(mask_words(words, count, "operators"), mask.words.view(np.int64))
    again = OPS.dropout_recompute(x, p, key, list(shared), variant.alpha)
    assert np.array_equal(tensor_bits(again), bits(expected_y))
    from_words = OPS.dropout_backward(grad, words, p, list(shared), variant.alpha)
    recomputed = OPS.dropout_backward_recompute(grad, p, key, list(shared), variant.alpha)
    assert np.array_equal(tensor_bits(from_words), bits(expected_grad))
    assert np.array_equal(tensor_bits(recomputed), bits(expected_grad))


def test_draw_key_is_next_key_and_next_key_consumes_nothing():
    torch.manual_seed(SEED)
    first = ft.next_key()
    assert ft.next_key() == first
    assert all(0 <= value <= UINT64 for value in first)
    drawn = OPS.draw_key(torch.ones(3))
    assert drawn.dtype == torch.int64 and drawn.shape == (2,)
    assert tuple(value & UINT64 for value in drawn.tolist()) == first
    assert ft.next_key() != first  # the draw moved the generator on
    generator = torch.Generator().manual_seed(5)
    state = torch.get_rng_state()
    assert ft.next_key(generator) == ft.next_key(torch.Generator().manual_seed(5))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@on_each_eager_path
def test_sum_backward_with_an_expanded_gradient(variant):
    """y.sum().backward() hands backward a stride-0 gradient."""
    shape, shared = variant.cases[0]
    for recompute in (False, True):
        x = values(shape, torch.float32).requires_grad_()
        key = ft.next_key()
        variant.ours(x, P, True, recompute=recompute).sum().backward()
        ones = torch.ones(shape)
        assert np.array_equal(tensor_bits(x.grad),
                              bits(reference(variant, x, P, key, shared, ones)[2]))


@on_each_eager_path
def test_successive_calls_draw_new_masks():
    x = torch.ones(1000)
    torch.manual_seed(SEED)
    first, second = ft.dropout(x, 0.5), ft.dropout(x, 0.5)
    assert not torch.equal(first, second)
    torch.manual_seed(SEED)
    assert torch.equal(ft.dropout(x, 0.5), first)


# ---------------------------------------------------------------- 2. opcheck

OPCHECK_CASES = (  # (shape, dtype, shared axes, alpha, requires_grad, layout)
    ((5, 7), torch.float32, [], False, False, "contiguous"),
    ((5, 7), torch.float64, [], True, True, "transposed"),
    ((2, 3, 4), torch.bfloat16, [2], False, True, "contiguous"),
    ((2, 3, 4, 5), torch.float16, [2, 3], True, False, "channels_last"),
    ((3, 4, 5), torch.float64, [1, 2], False, True, "strided"),
    ((), torch.float32, [], True, True, "contiguous"),
)


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: f"{c[1]}-{c[2]}-{c[3]}-{c[4]}")
def test_opcheck(case):
    shape, dtype, shared, alpha, requires_grad, layout = case
    x = make(shape, layout, dtype, finite=True).requires_grad_(requires_grad)
    key = as_key_tensor(SEED, 99)
    words = OPS.dropout(x.detach(), P, key, shared, alpha)[1]
    calls = [
        (OPS.dropout.default, (x, P, key, shared, alpha)),
        (OPS.dropout_recompute.default, (x, P, key, shared, alpha)),
        (OPS.dropout_backward.default, (x, words, P, shared, alpha)),
        (OPS.dropout_backward_recompute.default, (x, P, key, shared, alpha)),
    ]
    for op, arguments in calls:
        torch.library.opcheck(op, arguments)


def test_opcheck_draw_key():
    torch.library.opcheck(OPS.draw_key.default, (torch.ones(3),))
    assert torch.Tag.nondeterministic_seeded in OPS.draw_key.default.tags


# ---------------------------------------------------------------- 3. gradcheck


@pytest.mark.parametrize("recompute", [False, True], ids=["mask", "recompute"])
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@on_each_eager_path
def test_gradcheck_and_gradgradcheck(variant, recompute):
    shape, shared = variant.cases[0]
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1),
                    requires_grad=True)

    def eager(x):  # a fresh generator: the same mask at every evaluation
        return variant.ours(x, P, True, generator=torch.Generator().manual_seed(11),
                            recompute=recompute)

    key = as_key_tensor(SEED, 7)
    if recompute:
        def operator(x):
            return OPS.dropout_recompute(x, P, key, list(shared), variant.alpha)
    else:
        def operator(x):
            return OPS.dropout(x, P, key, list(shared), variant.alpha)[0]

    for function in (eager, operator):
        slope = torch.autograd.grad(function(x).sum(), x)[0]
        assert (slope == 0).any() and (slope != 0).any()  # both kept and dropped elements
        assert torch.autograd.gradcheck(function, (x,))
        assert torch.autograd.gradgradcheck(function, (x,))


# ---------------------------------------------------------------- 4. compile and export


def mlp(recompute):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 32), torch.nn.ReLU(), ft.Dropout(0.2, recompute=recompute),
        torch.nn.Linear(32, 32), torch.nn.SELU(), ft.AlphaDropout(0.1, recompute=recompute),
        torch.nn.Linear(32, 1))


def regression_data():
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randn(64, 8, generator=generator)
    return inputs, inputs[:, :4].sum(1, keepdim=True) - inputs[:, 4:].sum(1, keepdim=True)


def train(model, steps, forward=None):
    """Per-step losses, the first step's gradients and the eval-mode losses before and after."""
    forward = forward or model
    inputs, targets = regression_data()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)

    def eval_loss():
        model.eval()
        with torch.no_grad():
            loss = F.mse_loss(model(inputs), targets).item()
        model.train()
        return loss

    start = eval_loss()
    torch.manual_seed(SEED)
    losses, first_grads = [], None
    for _ in range(steps):
        optimiser.zero_grad()
        loss = F.mse_loss(forward(inputs), targets)
        loss.backward()
        if first_grads is None:
            first_grads = [p.grad.clone() for p in model.parameters()]
        optimiser.step()
        losses.append(loss.item())
    return losses, first_grads, (start, eval_loss())


@pytest.mark.parametrize("recompute", [False, True], ids=["mask", "recompute"])
def test_compiled_model_trains_exactly_like_eager(recompute):
    """With aot_eager, every loss and weight equals eager's bit for bit.

    aot_eager runs the traced graph of our operators without Inductor's own rounding of
    the Linear layers.
    """
    eager_model, compiled_model = mlp(recompute), mlp(recompute)
    eager = train(eager_model, 25)
    compiled = train(compiled_model, 25,
                     torch.compile(compiled_model, fullgraph=True, backend="aot_eager"))
    assert compiled[0] == eager[0]
    assert all(torch.equal(a, b) for a, b in zip(compiled[1], eager[1]))
    assert all(torch.equal(a, b) for a, b in zip(compiled_model.parameters(),
                                                  eager_model.parameters()))
    start, end = compiled[2]
    assert end < 0.5 * start


@pytest.mark.parametrize("recompute", [False, True], ids=["mask", "recompute"])
def test_inductor_compiled_model_trains_like_eager(recompute):
    """With Inductor, losses agree with eager's to float32 rounding.

    Inductor rounds the Linear layers its own way; a different mask would change the
    losses by percents.
    """
    require_inductor()
    eager_model, compiled_model = mlp(recompute), mlp(recompute)
    eager = train(eager_model, 10)
    compiled = train(compiled_model, 10, torch.compile(compiled_model, fullgraph=True))
    assert compiled[0] == pytest.approx(eager[0], rel=1e-4)
    for a, b in zip(compiled[1], eager[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert compiled[0][-1] < compiled[0][0]


@pytest.mark.parametrize("recompute", [False, True], ids=["mask", "recompute"])
def test_inductor_gives_eagers_masks_and_gradients_bit_for_bit(recompute):
    """Every variant at once, compiled with Inductor: outputs and gradients equal eager's."""
    require_inductor()
    def every_variant(*inputs):
        return [v.ours(x, P, True, recompute=recompute) for v, x in zip(VARIANTS, inputs)]

    grads = [values(v.cases[0][0], torch.float32, salt=9) for v in VARIANTS]
    results = []
    for function in (every_variant, torch.compile(every_variant, fullgraph=True)):
        inputs = [values(v.cases[0][0], torch.float32).requires_grad_() for v in VARIANTS]
        torch.manual_seed(SEED)
        outputs = function(*inputs)
        torch.autograd.backward(outputs, grads)
        results.append([tensor_bits(t) for t in outputs + [x.grad for x in inputs]])
    eager, compiled = results
    assert all(np.array_equal(a, b) for a, b in zip(eager, compiled))


def check_exported(program, model, recompute, batches):
    targets = {node.target for node in program.graph.nodes if node.op == "call_function"}
    op = OPS.dropout_recompute.default if recompute else OPS.dropout.default
    assert OPS.draw_key.default in targets and op in targets
    for batch in batches:
        inputs = torch.randn(batch, 8)
        torch.manual_seed(SEED)
        exported = program.module()(inputs)
        torch.manual_seed(SEED)
        assert torch.equal(exported, model(inputs)), batch


@pytest.mark.parametrize("recompute", [False, True], ids=["mask", "recompute"])
def test_export_traces_the_operators_and_runs(recompute):
    model = mlp(recompute)
    program = torch.export.export(model, (torch.randn(16, 8),))
    check_exported(program, model, recompute, [16])


@pytest.mark.parametrize("recompute", [False, True], ids=["mask", "recompute"])
def test_export_with_a_dynamic_batch(recompute):
    """torch.export.Dim's default range starts at 2, as torch's own dropout allows."""
    model = mlp(recompute)
    program = torch.export.export(model, (torch.randn(16, 8),),
                                  dynamic_shapes={"input": {0: torch.export.Dim("batch")}})
    check_exported(program, model, recompute, [2, 3, 16])


# ---------------------------------------------------------------- 5. semantics against torch


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_signatures_are_torchs_plus_generator_and_recompute(variant):
    theirs = inspect.signature(variant.theirs).parameters
    ours = inspect.signature(variant.ours).parameters
    assert [(n, p.default) for n, p in theirs.items()] == \
        [(n, p.default) for n, p in list(ours.items())[:len(theirs)]]
    extra = {n: (p.kind, p.default) for n, p in list(ours.items())[len(theirs):]}
    assert extra == {"generator": (inspect.Parameter.KEYWORD_ONLY, None),
                     "recompute": (inspect.Parameter.KEYWORD_ONLY, False)}


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@on_each_eager_path
def test_identity_when_off_and_empty_input(variant):
    shape, _ = variant.cases[0]
    x = values(shape, torch.float32)
    empty = torch.empty((0,) + tuple(shape[1:]))
    state = torch.get_rng_state()
    for call in (lambda: variant.ours(x, P, False), lambda: variant.ours(x, 0.0, True),
                 lambda: variant.ours(x, 0, True, inplace=True),
                 lambda: variant.ours(x, P, False, recompute=True)):
        assert call() is x
    assert variant.ours(empty, P, True) is empty
    assert torch.equal(torch.get_rng_state(), state)  # no key drawn
    if variant.alpha:  # torch's default training=False
        assert variant.ours(x) is x and variant.theirs(x) is x
    else:
        assert variant.ours(x) is not x


@pytest.mark.parametrize("recompute", [False, True], ids=["mask", "recompute"])
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@on_each_eager_path
def test_p_one_gives_zeros_and_zero_gradients(variant, recompute):
    shape, _ = variant.cases[0]
    x = values(shape, torch.float32).requires_grad_()
    y = variant.ours(x, 1.0, True, recompute=recompute)
    assert torch.equal(y, torch.zeros(shape))
    y.backward(torch.ones(shape))
    assert torch.equal(x.grad, torch.zeros(shape))


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("variant", PLAIN_VARIANTS, ids=str)
def test_mean_is_preserved_like_torchs_test(variant, p):
    """torch's test/nn/test_dropout.py: input filled with 1 - p; output and gradient means."""
    shape = variant.stats_shape
    assert variant.mask_elements(shape, variant.cases[0][1]) >= 1000
    torch.manual_seed(SEED)
    x = torch.full(shape, 1 - p, requires_grad=True)
    y = variant.ours(x, p, True)
    assert abs(y.mean().item() - (1 - p)) < 0.05
    y.backward(x.detach())
    assert abs(x.grad.mean().item() - (1 - p)) < 0.05


@pytest.mark.parametrize("variant", CHANNEL_VARIANTS, ids=str)
def test_channel_variants_drop_whole_maps(variant):
    for shape, shared in variant.cases:
        if math.prod(shape) == 1:
            continue
        torch.manual_seed(SEED)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            y = variant.ours(torch.ones(shape), 0.5, True)
        maps = y.amax(dim=shared) if shared else y
        low = y.amin(dim=shared)
        assert torch.equal(maps, low), shape  # one value per (sample, channel)
        assert len(torch.unique(maps)) == 2, shape  # both kinds occur


@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
@pytest.mark.parametrize("variant", ALPHA_VARIANTS, ids=str)
def test_alpha_variants_keep_mean_zero_and_std_one(variant, p):
    torch.manual_seed(SEED)
    x = torch.randn((125,) + variant.stats_shape)  # about 150 000 elements
    y = variant.ours(x, p, True)
    assert abs(y.mean().item()) < 0.1 and abs(y.std().item() - 1) < 0.1
    theirs = variant.theirs(x, p, True)  # torch's, as a yardstick
    assert abs(theirs.mean().item()) < 0.1 and abs(theirs.std().item() - 1) < 0.1


SHAPES_OF_EVERY_RANK = ((), (0,), (3,), (0, 3), (2, 3), (2, 3, 4), (2, 3, 4, 5),
                        (1, 2, 3, 4, 5), (1, 1, 2, 3, 4, 2))


def outcome(function, x, p, training):
    """What a call did: ('returned', shape) or (error type, message), with its warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = ("returned", tuple(function(x, p, training).shape))
        except Exception as error:  # noqa: BLE001 - the error is what is compared
            result = (type(error).__name__, str(error))
    return result, [(w.category, str(w.message)) for w in caught]


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_errors_and_warnings_equal_torchs_for_every_rank(variant, subtests):
    for_each(subtests, check_errors_and_warnings, variant, p=[-0.1, 0.5, 1.0, 1.5, float("nan")],
             training=[True, False])


@on_each_eager_path
def check_errors_and_warnings(variant, p, training):
    mismatches = []
    for shape in SHAPES_OF_EVERY_RANK:
        x = values(shape, torch.float32)
        before, state = tensor_bits(x), torch.get_rng_state()
        ours = outcome(variant.ours, x, p, training)
        theirs = outcome(variant.theirs, values(shape, torch.float32), p, training)
        if ours != theirs:
            mismatches.append((shape, "ours", ours, "torch", theirs))
        if ours[0][0] != "returned":  # an error writes nothing and draws no key
            if not np.array_equal(tensor_bits(x), before):
                mismatches.append((shape, "input written before", ours[0]))
            if not torch.equal(torch.get_rng_state(), state):
                mismatches.append((shape, "key drawn before", ours[0]))
    assert not mismatches, "\n".join(map(str, mismatches))


@pytest.mark.parametrize("name, shape", [("dropout2d", (2, 3, 4)), ("dropout2d", (2, 3)),
                                         ("dropout2d", (1, 2, 3, 4, 5)), ("dropout3d", (2, 3, 4)),
                                         ("dropout3d", (1, 1, 2, 3, 4, 2))])
def test_odd_rank_warnings_point_at_the_caller_as_torchs_do(name, shape):
    variant = next(v for v in VARIANTS if v.name == name)
    found = {}
    for side, function in (("ours", variant.ours), ("torch", variant.theirs)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            function(torch.ones(shape), P, True)
        found[side] = [(w.category, str(w.message), w.filename) for w in caught]
    assert found["ours"] and found["ours"] == found["torch"]
    assert all(filename == __file__ for _, _, filename in found["ours"])


# ---------------------------------------------------------------- modules


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_modules_are_torchs_twins(variant):
    ours, theirs = variant.our_module(0.3, True), variant.their_module(0.3, True)
    assert isinstance(ours, variant.their_module)
    assert repr(ours) == repr(theirs)
    assert repr(variant.our_module(0.3, recompute=True)) == \
        repr(variant.their_module(0.3))[:-1] + ", recompute=True)"
    assert list(ours.parameters()) == [] and list(ours.buffers()) == [] and not ours.state_dict()
    default = variant.our_module()
    assert (default.p, default.inplace, default.recompute, default.generator) == \
        (0.5, False, False, None)
    for p in (-0.5, 1.5):
        with pytest.raises(ValueError) as mine:
            variant.our_module(p)
        with pytest.raises(ValueError) as torchs:
            variant.their_module(p)
        assert str(mine.value) == str(torchs.value)


@pytest.mark.parametrize("recompute", [False, True], ids=["mask", "recompute"])
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@on_each_eager_path
def test_module_forward_is_the_function_in_training_and_identity_in_eval(variant, recompute):
    shape, _ = variant.cases[0]
    module = variant.our_module(P, recompute=recompute)
    x = values(shape, torch.float32)
    torch.manual_seed(SEED)
    y = module(x)
    torch.manual_seed(SEED)
    assert torch.equal(tensor_bits_tensor(y), tensor_bits_tensor(variant.ours(x, P, True)))
    assert module.eval()(x) is x
    in_place = variant.our_module(P, True, recompute=recompute)
    target = x.clone()
    torch.manual_seed(SEED)
    assert in_place(target) is target
    assert torch.equal(tensor_bits_tensor(target), tensor_bits_tensor(y))
    generator_module = variant.our_module(P, generator=torch.Generator().manual_seed(2))
    first = generator_module(x)
    assert torch.equal(tensor_bits_tensor(first),
                       tensor_bits_tensor(variant.ours(x, P, True,
                                                       generator=torch.Generator().manual_seed(2))))


def tensor_bits_tensor(tensor):
    """A tensor's bytes as a uint8 tensor, for torch.equal (NaN equal to itself)."""
    return torch.from_numpy(tensor_bits(tensor).copy())


# ---------------------------------------------------------------- 6. replace_dropout


class SubclassedDropout(torch.nn.Dropout):
    """A user's dropout subclass: its forward may differ, so it is not replaced."""


def nested_model():
    shared = torch.nn.Dropout(0.25)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 8), shared,
        torch.nn.ModuleList([torch.nn.Dropout2d(0.1, inplace=True), SubclassedDropout(0.3),
                             torch.nn.Sequential(shared, torch.nn.AlphaDropout(0.2))]),
        torch.nn.ModuleDict({"a": torch.nn.Dropout3d(0.4), "b": torch.nn.FeatureAlphaDropout(0.5),
                             "c": torch.nn.Dropout1d(0.6)}),
        torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.15, batch_first=True),
    )


TWIN_OF = {v.their_module: v.our_module for v in VARIANTS}


@pytest.mark.parametrize("recompute", [False, True], ids=["mask", "recompute"])
def test_replace_dropout_swaps_torchs_modules_and_nothing_else(recompute):
    model = nested_model()
    model[2][0].eval()
    calls = []
    model[1].register_forward_hook(lambda module, inputs, output: calls.append(module))
    before = dict(model.named_modules(remove_duplicate=False))
    parameters = dict(model.named_parameters())
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert ft.replace_dropout(model, recompute=recompute) == 9  # the shared one counts once
    after = dict(model.named_modules(remove_duplicate=False))
    assert after.keys() == before.keys()
    for name, old in before.items():
        new = after[name]
        if type(old) in TWIN_OF:
            assert type(new) is TWIN_OF[type(old)], name
            assert (new.p, new.inplace, new.training, new.recompute, new.generator) == \
                (old.p, old.inplace, old.training, recompute, None), name
        else:
            assert new is old, name
    assert type(after["2.1"]) is SubclassedDropout
    assert after["1"] is after["2.2.0"]  # one twin for the module used twice
    assert not after["2.0"].training and after["1"].training
    assert model.named_parameters() and all(
        p is parameters[name] for name, p in model.named_parameters())
    assert model.state_dict().keys() == state.keys()
    assert all(torch.equal(model.state_dict()[name], t) for name, t in state.items())
    model[1](torch.ones(3))  # the hook came along
    assert calls == [model[1]]
    layer = model[4]  # TransformerEncoderLayer still runs, with our dropouts, in training
    torch.manual_seed(SEED)
    first = layer(torch.ones(2, 5, 8))
    torch.manual_seed(SEED)
    assert torch.equal(layer(torch.ones(2, 5, 8)), first)
    assert ft.replace_dropout(model) == 0


def test_replace_dropout_refuses_what_it_cannot_replace():
    with pytest.raises(TypeError):
        ft.replace_dropout([torch.nn.Dropout()])
    for variant in VARIANTS:
        with pytest.raises(ValueError):
            ft.replace_dropout(variant.their_module(0.1))
    layer = torch.nn.TransformerEncoderLayer(8, 2, 16)
    assert ft.replace_dropout(layer) == 3
    assert all(type(getattr(layer, name)) is ft.Dropout
               for name in ("dropout", "dropout1", "dropout2"))


# ---------------------------------------------------------------- 7. reproducibility


def train_weights(seed, steps=5, model_seed=0):
    torch.manual_seed(model_seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), ft.Dropout(0.5), torch.nn.Linear(16, 16),
                                ft.AlphaDropout(0.2, recompute=True), torch.nn.Linear(16, 1))
    inputs, targets = torch.randn(32, 6), torch.randn(32, 1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(seed)
    for _ in range(steps):
        optimiser.zero_grad()
        F.mse_loss(model(inputs), targets).backward()
        optimiser.step()
    return [p.detach().clone() for p in model.parameters()]


@on_each_eager_path
def test_same_seed_same_weights_other_seed_other_weights():
    first, second, other = train_weights(1), train_weights(1), train_weights(2)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


@on_each_eager_path
def test_generator_decides_the_masks_whatever_the_default_generator_does():
    x = torch.ones(1000)
    torch.manual_seed(1)
    first = ft.dropout(x, 0.5, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(2)
    torch.rand(10)
    state = torch.get_rng_state()
    generator = torch.Generator().manual_seed(7)
    assert ft.next_key(generator) != ft.next_key()
    key = ft.next_key(generator)
    second = ft.dropout(x, 0.5, generator=generator)
    assert torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), state)  # the default generator was not used
    assert np.array_equal(tensor_bits(second), bits(fastdrop.dropout(x.numpy(), 0.5, seed=key[0],
                                                                     stream=key[1])[0]))
    assert not torch.equal(ft.dropout(x, 0.5, generator=generator), second)


@pytest.mark.parametrize("recompute", [False, True], ids=["mask", "recompute"])
@on_each_eager_path
def test_checkpoint_gives_the_same_gradients(recompute):
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(6, 16), ft.Dropout(0.3, recompute=recompute),
                                torch.nn.Linear(16, 4, bias=False),
                                ft.FeatureAlphaDropout(0.3, recompute=recompute))
    inputs = torch.randn(8, 6)
    results = []
    for checkpointed in (False, True):
        block.zero_grad()
        x = inputs.clone().requires_grad_()
        torch.manual_seed(SEED)
        if checkpointed:
            out = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
        else:
            out = block(x)
        out.pow(2).sum().backward()
        results.append([out.detach(), x.grad] + [p.grad.clone() for p in block.parameters()])
    plain, checkpointed = results
    assert all(torch.equal(a, b) for a, b in zip(plain, checkpointed))


# ---------------------------------------------------------------- 8. memory


@pytest.mark.parametrize("path", [*EAGER_PATHS, "operators"])
@pytest.mark.parametrize("n", [1, 63, 64, 65, 1000, 4099])
def test_autograd_keeps_one_bit_per_element_or_only_the_key(n, path):
    x = torch.randn(n, requires_grad=True)
    for variant in (VARIANTS[0], VARIANTS[4]):  # dropout, alpha_dropout
        with path_context(path), kept_for_backward() as kept:
            variant.ours(x, P, True)
        words = math.ceil(n / 64)
        assert nbytes(kept) == 8 * (words if path != "operators" else max(2, words))
        with path_context(path), kept_for_backward() as kept:
            variant.ours(x, P, True, recompute=True)
        assert nbytes(kept) <= 16


@pytest.mark.parametrize("variant, shape, pairs", [
    (VARIANTS[1], (5, 13, 9), 65), (VARIANTS[2], (3, 70, 5, 5), 210),
    (VARIANTS[3], (2, 33, 2, 2, 2), 66), (VARIANTS[5], (4, 16, 3), 64)], ids=str)
def test_channel_variants_keep_one_bit_per_sample_and_channel(variant, shape, pairs):
    x = torch.randn(shape, requires_grad=True)
    with kept_for_backward() as kept:
        variant.ours(x, P, True)
    assert nbytes(kept) == math.ceil(pairs / 64) * 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("n", [1000, 4099])
def test_we_keep_less_than_torch(n, dtype):
    """Ours keeps ceil(n/64) int64 words, less than torch's F.dropout.

    Measured on torch 2.13 CPU: F.dropout keeps its noise tensor, n elements of the
    input's dtype (4n bytes for float32, 2n for bfloat16).
    """
    x = torch.randn(n, dtype=dtype, requires_grad=True)
    with kept_for_backward() as theirs:
        F.dropout(x, P)
    with kept_for_backward() as ours:
        ft.dropout(x, P)
    assert nbytes(ours) == math.ceil(n / 64) * 8 < nbytes(theirs)


# ---------------------------------------------------------------- threads and copies


@pytest.fixture
def fastdrop_calls(monkeypatch):
    """Every fastdrop API call fastdrop.torch makes.

    Each is (name, threads it runs on, pointer of its first argument, pointer of the
    array it returns).
    """
    calls = []

    def recording(name, function):
        def wrapper(*args, **kwargs):
            result = function(*args, **kwargs)
            array = result[0] if isinstance(result, tuple) else result
            first = args[0]
            calls.append((name, fastdrop.get_num_threads(),
                          first.ctypes.data if isinstance(first, np.ndarray) else None,
                          array.ctypes.data))
            return result
        return wrapper

    for name in ("dropout", "alpha_dropout", "dropout_backward", "alpha_dropout_backward",
                 "dropout_backward_recompute", "bernoulli_mask"):
        monkeypatch.setattr(fastdrop, name, recording(name, getattr(fastdrop, name)))
    monkeypatch.delenv("FASTDROP_NUM_THREADS", raising=False)
    with _build.path("python"):  # the path that calls fastdrop's NumPy API
        yield calls


def in_fresh_thread(function):
    """function() in a new Python thread, where fastdrop's thread setting is not chosen yet."""
    outcome = {}

    def target():
        before = torch.get_num_threads()
        try:
            outcome["value"] = function()
        except BaseException as error:  # noqa: BLE001 - re-raised below
            outcome["error"] = error
        finally:
            torch.set_num_threads(before)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def forward_and_backward(variant, n, recompute):
    x = torch.randn(n, requires_grad=True)
    variant.ours(x, P, True, recompute=recompute).backward(torch.ones(n))


LARGE = 1 << 18  # fastdrop runs anything smaller on one thread


@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[4]], ids=str)
@pytest.mark.parametrize("recompute", [False, True], ids=["mask", "recompute"])
def test_large_calls_run_on_torchs_threads(fastdrop_calls, variant, recompute):
    def run():
        torch_threads = 1 if fastdrop.get_num_threads() != 1 else 2
        torch.set_num_threads(torch_threads)
        forward_and_backward(variant, LARGE, recompute)
        return torch_threads

    torch_threads = in_fresh_thread(run)
    assert len(fastdrop_calls) >= 2  # forward and backward
    assert [c[:2] for c in fastdrop_calls] == [(c[0], torch_threads) for c in fastdrop_calls]


@pytest.mark.parametrize("chosen_by", ["set_num_threads", "environment"])
def test_fastdrops_own_thread_setting_wins_when_chosen(fastdrop_calls, monkeypatch, chosen_by):
    if chosen_by == "environment":
        monkeypatch.setenv("FASTDROP_NUM_THREADS", "3")

    def run():
        if chosen_by == "set_num_threads":
            fastdrop.set_num_threads(3)
        own = fastdrop.get_num_threads()
        torch.set_num_threads(own + 1)
        for recompute in (False, True):
            forward_and_backward(VARIANTS[0], LARGE, recompute)
        return own

    own = in_fresh_thread(run)
    assert len(fastdrop_calls) == 4
    assert {threads for _, threads, _, _ in fastdrop_calls} == {own}


def test_contiguous_input_is_not_copied_and_the_result_is_fastdrops_array(fastdrop_calls):
    x = torch.randn(6, 7, requires_grad=True)
    y = ft.dropout(x, P)
    (name, _, given, returned), = fastdrop_calls
    assert name == "dropout" and given == x.data_ptr() and returned == y.data_ptr()
    grad = torch.randn(6, 7)
    y.backward(grad)
    assert fastdrop_calls[1][2] == grad.data_ptr()
    assert fastdrop_calls[1][3] == x.grad.data_ptr()


# ---------------------------------------------------------------- 9. in place, modes, autocast


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_in_place_writes_the_same_bits_and_bumps_the_version(variant, dtype, subtests):
    for_each(subtests, check_in_place_writes, variant, dtype,
             layout=["contiguous", "transposed", "strided"])


@on_each_eager_path
def check_in_place_writes(variant, dtype, layout):
    shape, _ = variant.cases[0]
    torch.manual_seed(SEED)
    expected = variant.ours(make(shape, layout, dtype), P, True)
    x = make(shape, layout, dtype)
    version = x._version
    torch.manual_seed(SEED)
    assert variant.ours(x, P, True, inplace=True) is x
    assert np.array_equal(tensor_bits(x), tensor_bits(expected))
    assert x._version > version


@pytest.mark.parametrize("path", [*EAGER_PATHS, "operators"])
@pytest.mark.parametrize("recompute", [False, True], ids=["mask", "recompute"])
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_in_place_on_a_non_leaf_has_the_right_gradient(variant, recompute, path):
    shape, shared = variant.cases[0]
    leaf = values(shape, torch.float32).requires_grad_()
    grad = values(shape, torch.float32, salt=3)
    torch.manual_seed(SEED)
    key = ft.next_key()
    with path_context(path):
        hidden = leaf * 2
        version = hidden._version
        out = variant.ours(hidden, P, True, inplace=True, recompute=recompute)
        out.backward(grad)
    expected_y, _, expected_grad = reference(variant, leaf.detach() * 2, P, key, shared, grad)
    assert out is hidden and hidden._version > version
    assert np.array_equal(tensor_bits(hidden), bits(expected_y))
    expected_grad = expected_grad * 2
    if path == "operators":  # copy_ adds the overwritten value's zero gradient: -0.0 + 0.0
        assert np.array_equal(leaf.grad.numpy(), expected_grad, equal_nan=True)  # not the signs
        expected_grad = np.where(expected_grad == 0, 0.0, expected_grad).astype(np.float32)
    assert np.array_equal(tensor_bits(leaf.grad), bits(expected_grad))


def inplace_refusals():
    leaf = torch.randn(4, 5, 6, requires_grad=True)
    with torch.inference_mode():
        inference = torch.randn(4, 5, 6)
    return {"leaf": leaf, "view of a leaf": leaf[1:3], "reshaped leaf": leaf.view(20, 6),
            "inference tensor": inference}


@pytest.mark.filterwarnings("ignore:dropout")
@pytest.mark.parametrize("variant", VARIANTS, ids=str)
def test_in_place_refusals_are_torchs_and_write_nothing(variant, subtests):
    for_each(subtests, check_in_place_refusal, variant, kind=list(inplace_refusals()))


@on_each_eager_path
def check_in_place_refusal(variant, kind):
    x = inplace_refusals()[kind]
    before, state = tensor_bits(x), torch.get_rng_state()
    with pytest.raises(RuntimeError) as ours:
        variant.ours(x, P, True, inplace=True)
    assert np.array_equal(tensor_bits(x), before)
    assert torch.equal(torch.get_rng_state(), state)
    with pytest.raises(RuntimeError) as theirs:
        variant.theirs(inplace_refusals()[kind], P, True, inplace=True)
    assert str(ours.value) == str(theirs.value)


@on_each_eager_path
def test_in_place_on_a_leaf_under_no_grad_is_allowed_as_in_torch():
    leaf = torch.randn(50, requires_grad=True)
    expected_key = ft.next_key()
    expected = fastdrop.dropout(leaf.detach().numpy().copy(), P, seed=expected_key[0],
                                stream=expected_key[1])[0]
    with torch.no_grad():
        version = leaf._version
        assert ft.dropout(leaf, P, inplace=True) is leaf
    assert leaf._version > version
    assert np.array_equal(tensor_bits(leaf), bits(expected))


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@on_each_eager_path
def test_no_grad_and_inference_mode(variant):
    shape, shared = variant.cases[0]
    x = values(shape, torch.float32).requires_grad_()
    with torch.no_grad():
        y = variant.ours(x, P, True)
    assert not y.requires_grad and y.grad_fn is None
    with torch.inference_mode():
        inference = values(shape, torch.float32)
        key = ft.next_key()
        y = variant.ours(inference, P, True)
        assert y.is_inference() == variant.theirs(inference, P, True).is_inference()
        assert np.array_equal(tensor_bits(y), bits(reference(variant, inference, P, key,
                                                             shared)[0]))
        assert variant.ours(inference, P, True, inplace=True) is inference
    outside = variant.ours(inference, P, True)  # out of place is fine outside the mode
    assert outside.shape == inference.shape


def test_autocast_bfloat16_model_trains():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), ft.Dropout(0.2), torch.nn.Linear(64, 1))
    received = []
    model[1].register_forward_pre_hook(lambda module, args: received.append(args[0].dtype))
    inputs, targets = regression_data()
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(40):
        optimiser.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(inputs)
        loss = F.mse_loss(out.float(), targets)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert set(received) == {torch.bfloat16}
    assert all(p.grad.dtype == torch.float32 for p in model.parameters())
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


# ---------------------------------------------------------------- 10. bad input


@pytest.mark.parametrize("variant", VARIANTS, ids=str)
@on_each_eager_path
def test_bad_input_raises_and_changes_nothing(variant):
    shape, _ = variant.cases[0]
    state = torch.get_rng_state()
    for dtype in (torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64):
        x = torch.ones(shape, dtype=dtype)
        before = x.clone()
        with pytest.raises(TypeError, match=str(dtype)):
            variant.ours(x, P, True)
        assert torch.equal(x, before)
    if len(shape) >= 2:
        sparse = torch.ones(shape).to_sparse()
        with pytest.raises(TypeError):
            variant.ours(sparse, P, True)
    for not_a_tensor in (np.ones(shape, np.float32), [[1.0, 2.0]], 1.5):
        with pytest.raises(TypeError):
            variant.ours(not_a_tensor, P, True)
    assert torch.equal(torch.get_rng_state(), state)


def test_generator_under_compile_is_a_clear_error():
    x = torch.randn(16)
    before = x.clone()
    generator = torch.Generator().manual_seed(0)

    def function(x):
        return ft.dropout(x, 0.5, generator=generator)

    for fullgraph in (True, False):
        torch._dynamo.reset()
        with pytest.raises(RuntimeError) as error:
            torch.compile(function, fullgraph=fullgraph, backend="aot_eager")(x)
        assert "generator= is for eager calls" in str(error.value)
        assert torch.equal(x, before)


# ---------------------------------------------------------------- 11. without torch


def test_without_torch_the_error_names_the_extra_and_fastdrop_still_imports():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import fastdrop\n"
            "print(fastdrop.__file__)\n"
            "try:\n    import fastdrop.torch\nexcept ImportError as error:\n"
            "    print('ImportError:', error)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env=dict(os.environ, PYTHONPATH=str(PACKAGE_ROOT)))
    assert result.returncode == 0, result.stderr
    file, message = result.stdout.splitlines()[:2]
    assert Path(file).resolve().parent.parent == PACKAGE_ROOT
    assert message.startswith("ImportError:") and "fastdrop-cpu[torch]" in message, message


# ---------------------------------------------------------------- 12. the C++ path


def test_the_cpp_path_is_available():
    """Reported, not hidden: where it cannot be built, the file runs on the Python path alone."""
    if not CPP:
        pytest.skip(f"the C++ path of fastdrop.torch is not available here: {_build.describe()}")
    assert _build.ops() is not None or _build.switched_off()
    assert _build.describe().startswith("C++")


def cpp_and_python(call, /, *args, **kwargs):
    """call's outcome on each eager path, each from torch.manual_seed(SEED)."""
    outcomes = []
    for path in ("python", "cpp"):
        with _build.path(path):
            torch.manual_seed(SEED)
            outcomes.append(call(*args, **kwargs))
    return outcomes


def forward_backward_bits(x, p, recompute, generator=None, function=ft.dropout):
    """(y's bits, the gradient's bits, the generator's state after) of a call and its backward."""
    x = x.detach().clone().requires_grad_()
    y = function(x, p, True, generator=generator, recompute=recompute)
    grad = torch.linspace(-3, 3, x.numel(), dtype=x.dtype).reshape(x.shape)
    y.backward(grad)
    source = torch.default_generator if generator is None else generator
    return tensor_bits(y), tensor_bits(x.grad), source.get_state()


@pytest.mark.skipif(not CPP, reason="the C++ path is not available (test_the_cpp_path_...)")
def test_cpp_and_python_paths_give_the_same_bits_and_gradients(subtests):
    """The same output, gradient and generator state on both paths.

    Every dtype, p's whose scale rounds differently per dtype, sizes around a word, large
    calls split over threads, and generator=.
    """
    sizes = (1, 63, 64, 65, 1000, 3 * 2**17 + 5)
    for dtype in DTYPES:
        for p in (0.1, 0.25, 0.42, 0.5, 0.9, 1 - 2**-17, 1.0):
            for n in sizes:
                x = values((n,), dtype)
                for recompute in (False, True):
                    with subtests.test(dtype=dtype, p=p, n=n, recompute=recompute):
                        python, cpp = cpp_and_python(forward_backward_bits, x, p, recompute)
                        assert all(np.array_equal(a, b) for a, b in zip(python[:2], cpp[:2]))
                        assert torch.equal(python[2], cpp[2])
    for variant in VARIANTS[1:]:  # the channel and alpha variants, each dtype
        shape = variant.cases[0][0]
        for dtype in DTYPES:
            for p in (0.1, 0.42, 1 - 2**-17, 1.0):
                x = values(shape, dtype)
                for recompute in (False, True):
                    with subtests.test(variant=str(variant), dtype=dtype, p=p,
                                       recompute=recompute), warnings.catch_warnings():
                        warnings.simplefilter("ignore")  # dropout2d's 3-D warning
                        python, cpp = cpp_and_python(forward_backward_bits, x, p, recompute,
                                                     function=variant.ours)
                        assert all(np.array_equal(a, b) for a, b in zip(python[:2], cpp[:2]))
                        assert torch.equal(python[2], cpp[2])
    for threads in (1, 2):  # the split over threads changes no bit
        with subtests.test(threads=threads):
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            try:
                x = values((3 * 2**17 + 5,), torch.float32)
                python, cpp = cpp_and_python(forward_backward_bits, x, 0.3, False)
            finally:
                torch.set_num_threads(before)
            assert np.array_equal(python[0], cpp[0]) and np.array_equal(python[1], cpp[1])
    with subtests.test("errors"):  # the checks are shared; a bad generator is torch's error
        x = values((500,), torch.float32)
        for generator in ("not a generator", 3):
            errors = []
            for path in ("python", "cpp"):
                with _build.path(path), pytest.raises(TypeError) as error:
                    ft.dropout(x, 0.3, generator=generator)
                errors.append(str(error.value))
            assert errors[0] == errors[1]
    with subtests.test("generator="):
        x = values((500,), torch.float32)
        python, cpp = cpp_and_python(
            lambda: forward_backward_bits(x, 0.3, False, torch.Generator().manual_seed(3)))
        assert np.array_equal(python[0], cpp[0]) and torch.equal(python[2], cpp[2])


CPP_OPS = torch.ops.fastdrop_cpp if CPP else None
EAGER_OPCHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.skipif(not CPP, reason="the C++ path is not available (test_the_cpp_path_...)")
def test_cpp_operators_pass_opcheck_and_gradcheck(subtests):
    key = ft.next_key()
    signed = as_key_tensor(*key).tolist()
    for dtype, layout in ((torch.float32, "contiguous"), (torch.float64, "transposed"),
                          (torch.bfloat16, "strided"), (torch.float16, "channels_last")):
        x = make((2, 3, 4, 5), layout, dtype, finite=True).requires_grad_(dtype.is_floating_point)
        words = torch.empty(2, dtype=torch.int64).random_()
        calls = [(CPP_OPS.dropout_keyed.default, (x.detach(), P, *signed, True)),
                 (CPP_OPS.dropout_keyed.default, (x.detach(), P, *signed, False)),
                 (CPP_OPS.dropout_keyed.default, (x.detach(), P, *signed, True, 0, [2, 3])),
                 (CPP_OPS.dropout_keyed.default, (x.detach(), P, *signed, True, 0, [], True)),
                 (CPP_OPS.dropout_backward.default, (x, words, P)),
                 (CPP_OPS.dropout_backward.default, (x, words, P, 0, [2, 3], True)),
                 (CPP_OPS.dropout_backward_recompute.default, (x, P, *signed)),
                 (CPP_OPS.dropout_backward_recompute.default, (x, P, *signed, 0, [1], True)),
                 (CPP_OPS.dropout_backward_.default, (x.detach().clone(), words, P, 0, [2])),
                 (CPP_OPS.dropout_backward_recompute_.default, (x.detach().clone(), P, *signed))]
        for op, arguments in calls:
            with subtests.test(op=str(op), dtype=dtype, layout=layout):
                torch.library.opcheck(op, arguments)
        # the eager entry draws a key per call: traced graphs take fastdrop's Python
        # operators (whose key draw is an operator of its own), so no AOT test here
        for arguments in ((x, P), (x, P, True, torch.Generator().manual_seed(1)),
                          (x, P, False, None, 0, [2, 3], True)):
            with subtests.test(op="dropout", dtype=dtype, layout=layout):
                torch.library.opcheck(CPP_OPS.dropout.default, arguments,
                                      test_utils=EAGER_OPCHECKS)
    with subtests.test("tags"):
        assert torch.Tag.nondeterministic_seeded in CPP_OPS.dropout.default.tags
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    for recompute in (False, True):
        with subtests.test("gradcheck", recompute=recompute), _build.path("cpp"):
            def eager(x, recompute=recompute):  # a fresh generator: the same mask each time
                return ft.dropout(x, P, generator=torch.Generator().manual_seed(11),
                                  recompute=recompute)
            assert torch.autograd.gradcheck(eager, (x,))
            assert torch.autograd.gradgradcheck(eager, (x,))
    grad = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    words = torch.tensor([0x5A5A5A5A5A5A5A5A, -1], dtype=torch.int64)  # any words: linear
    with subtests.test("backward operators"):
        assert torch.autograd.gradgradcheck(
            lambda g: CPP_OPS.dropout_backward(g, words, P), (grad,))
        assert torch.autograd.gradgradcheck(
            lambda g: CPP_OPS.dropout_backward_recompute(g, P, *signed), (grad,))


@pytest.mark.skipif(not CPP, reason="the C++ path is not available (test_the_cpp_path_...)")
def test_backward_reuses_only_a_gradient_nothing_else_holds(subtests):
    """The C++ path's backward writes into the incoming gradient only where it is the sole owner.

    A gradient made for the node alone (a product's backward) is overwritten (the
    in-place operator runs); one that the caller holds, that two nodes share (an add's
    backward hands both branches one tensor) or that is a view keeps its values; the
    gradients are the same either way: the mask's, computed apart here.
    """
    def expected(x, y, g, p):  # the mask where the output kept x (x has no zeros)
        return torch.where(y != 0, g * ft_scale(p, x.dtype), torch.zeros((), dtype=x.dtype))

    def ft_scale(p, dtype):
        return torch.tensor(1 / (1 - p), dtype=torch.float64).to(dtype)

    def backward_ops(loss):
        with torch.profiler.profile() as profile:
            loss.backward()
        return {event.key for event in profile.key_averages() if "fastdrop" in event.key}

    for dtype in (torch.float32, torch.bfloat16):
        for recompute in (False, True):
            x1 = (torch.rand(300, 70) + 0.5).to(dtype).requires_grad_()
            x2 = (torch.rand(300, 70) + 0.5).to(dtype).requires_grad_()
            g = torch.randn(300, 70).to(dtype)
            with subtests.test("owned", dtype=dtype, recompute=recompute), _build.path("cpp"):
                y = ft.dropout(x1, P, recompute=recompute)
                names = backward_ops((y * g).sum())
                assert any(name.endswith("_backward_") or name.endswith("recompute_")
                           for name in names), names
                assert torch.equal(x1.grad, expected(x1, y, g, P))
            with subtests.test("held by the caller", dtype=dtype, recompute=recompute), \
                    _build.path("cpp"):
                y = ft.dropout(x1, P, recompute=recompute)
                held = g.clone()
                (grad,) = torch.autograd.grad(y, x1, held)
                assert torch.equal(held, g) and torch.equal(grad, expected(x1, y, g, P))
            with subtests.test("shared by two nodes", dtype=dtype, recompute=recompute), \
                    _build.path("cpp"):
                x1.grad = x2.grad = None
                y1, y2 = ft.dropout(x1, P, recompute=recompute), ft.dropout(x2, P)
                ((y1 + y2) * g).sum().backward()
                assert torch.equal(x1.grad, expected(x1, y1, g, P))
                assert torch.equal(x2.grad, expected(x2, y2, g, P))
            with subtests.test("kept by a hook", dtype=dtype, recompute=recompute), \
                    _build.path("cpp"):
                x1.grad, seen = None, []
                y = ft.dropout(x1, P, recompute=recompute)
                y.register_hook(seen.append)
                (y * g).sum().backward()
                assert torch.equal(seen[0], g) and torch.equal(x1.grad, expected(x1, y, g, P))
            with subtests.test("a view", dtype=dtype, recompute=recompute), _build.path("cpp"):
                x1.grad = None
                y = ft.dropout(x1, P, recompute=recompute)
                base = torch.zeros(2, 300, 70, dtype=dtype)
                base[1] = g
                (grad,) = torch.autograd.grad(y, x1, base[1])
                assert torch.equal(base[1], g) and torch.equal(grad, expected(x1, y, g, P))


CACHE_SCRIPT = """
import torch, fastdrop.torch as ft
from fastdrop.torch import _build
x = torch.randn(512, 1024)
with _build.path("cpp"):
    y = ft.dropout(x, 0.5)
print(y.data_ptr() % (1 << 21))
"""


@pytest.mark.skipif(not CPP, reason="the C++ path is not available (test_the_cpp_path_...)")
def test_large_results_reuse_the_memory_of_freed_ones(subtests):
    """Results of 1 MiB and more: 2 MiB-aligned blocks, a freed one reused by the next result.

    ``FASTDROP_TORCH_CACHE_MB=0`` gives torch's allocator (never 2 MiB-aligned there); a
    setting that is not a number of MiB is an error naming it.
    """
    x = values((512, 1024), torch.float32)  # 2 MiB
    with _build.path("cpp"):
        first = ft.dropout(x, P, generator=torch.Generator().manual_seed(1))
        address, expected = first.data_ptr(), first.clone()
        del first
        again = ft.dropout(x, P, generator=torch.Generator().manual_seed(1))
    with subtests.test("reused"):
        assert again.data_ptr() == address and address % (1 << 21) == 0
        assert np.array_equal(tensor_bits(again), tensor_bits(expected))
    with subtests.test("the same bits as the Python path"):
        with _build.path("python"):
            python = ft.dropout(x, P, generator=torch.Generator().manual_seed(1))
        assert np.array_equal(tensor_bits(again), tensor_bits(python))
    with subtests.test("resizable"), _build.path("cpp"):  # (a NumPy view pins a storage)
        fresh = ft.dropout(x, P).resize_(2048, 1024).fill_(1.0)
        assert fresh.shape == (2048, 1024) and bool((fresh == 1).all())
    for setting, expected_output in (("0", "not aligned"), ("", "aligned"), ("64", "aligned")):
        with subtests.test(setting=setting):
            environment = dict(os.environ, FASTDROP_TORCH_CACHE_MB=setting)
            result = subprocess.run([sys.executable, "-c", CACHE_SCRIPT], capture_output=True,
                                    text=True, env=environment, timeout=600)
            assert result.returncode == 0, result.stderr
            offset = int(result.stdout.split()[-1])
            assert (offset == 0) == (expected_output == "aligned")
    with subtests.test("not a number"):
        result = subprocess.run([sys.executable, "-c", CACHE_SCRIPT], capture_output=True,
                                text=True, env=dict(os.environ, FASTDROP_TORCH_CACHE_MB="lots"),
                                timeout=600)
        assert result.returncode != 0 and "FASTDROP_TORCH_CACHE_MB" in result.stderr
        assert "'lots'" in result.stderr


def test_torch_path_off_by_environment_and_a_failed_build_falls_back(monkeypatch, capsys):
    """FASTDROP_TORCH_CPP=0 keeps the Python path; a failed build is a notice, never an error.

    The call then runs on the Python path, with the same result.
    """
    monkeypatch.setattr(_build, "_state", {"reason": None})
    monkeypatch.setattr(_build, "eager", _build.UNLOADED)
    monkeypatch.setenv(_build.ENV_SWITCH, "0")
    assert _build.ops() is None and "FASTDROP_TORCH_CPP=0" in _build.describe()
    monkeypatch.setattr(_build, "eager", _build.UNLOADED)
    monkeypatch.delenv(_build.ENV_SWITCH)

    def no_compiler(*_args, **_kwargs):
        raise RuntimeError("error: no C++ compiler found\nmore detail")

    monkeypatch.setattr(_build, "build", no_compiler)
    x = values((100,), torch.float32)
    torch.manual_seed(SEED)
    key = ft.next_key()
    y = ft.dropout(x, P)
    notice = capsys.readouterr().err
    assert notice.count("\n") == 1 and "Python path" in notice and "no C++ compiler" in notice
    assert np.array_equal(tensor_bits(y), bits(fastdrop.dropout(x.numpy(), P, seed=key[0],
                                                                stream=key[1])[0]))
    ft.dropout(x, P)
    assert capsys.readouterr().err == ""  # once a process
    assert _build.describe().startswith("Python (the C++ build failed: error: no C++ compiler")


def test_builds_are_cached_per_torch_version_and_source(monkeypatch, tmp_path):
    monkeypatch.setenv(_build.ENV_CACHE, str(tmp_path))
    key = _build.cache_key()
    assert key.startswith(_build.torch_version() + "-")
    assert _build.build_dir() == tmp_path / "torch_ops" / key
    source = tmp_path / "ops.cpp"
    source.write_bytes(_build.SOURCE.read_bytes() + b"// changed\n")
    monkeypatch.setattr(_build, "SOURCE", source)
    assert _build.cache_key() != key
    monkeypatch.setattr(_build, "torch_version", lambda: "9.9.9")
    assert _build.cache_key().startswith("9.9.9-")


def test_concurrent_builds_wait_for_the_lock(tmp_path):
    """The build's file lock: a second process (here a thread's own open file) waits."""
    folder, order = tmp_path / "build", []

    def second():
        with _build._locked(folder):
            order.append("second")

    with _build._locked(folder):
        waiter = threading.Thread(target=second)
        waiter.start()
        waiter.join(0.5)
        order.append("first")
    waiter.join(10)
    assert order == ["first", "second"]


def test_eager_calls_run_under_the_profiler_recording_shapes(subtests):
    """torch.profiler with record_shapes reads every argument: keys up to 2**64 - 1 too."""
    x = values((64,), torch.float32).requires_grad_()
    for path in EAGER_PATHS:
        for recompute in (False, True):
            with subtests.test(path=path, recompute=recompute), path_context(path), \
                    torch.profiler.profile(record_shapes=True):
                for seed in (2**63 + 5, 7):  # keys over int64's range among them
                    torch.manual_seed(seed)
                    y = ft.dropout(x, P, recompute=recompute)
                    upstream = torch.ones_like(y, requires_grad=True)
                    (grad,) = torch.autograd.grad(y, x, upstream, create_graph=True)
                    grad.sum().backward()  # double backward: the backward's own Function
