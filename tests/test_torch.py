"""fastdrop.torch: bits against fastdrop's NumPy API, autograd, compile/export, torch's semantics.

Every function is checked through one table, `VARIANTS` (torch's function and module,
fastdrop.torch's twins, the axes that share a keep bit for each input shape, alpha or
not). The oracle is fastdrop's NumPy API (``fastdrop.dropout``, ``alpha_dropout`` and
their backwards) called with the key `fastdrop.torch.next_key` announces, or torch
itself; nothing here recomputes a mask.
"""
import contextlib
import dataclasses
import math
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import fastdrop
from tests.util import bits, sample

torch = pytest.importorskip("torch")

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import fastdrop.torch as ft  # noqa: E402  (needs torch)

F = torch.nn.functional
OPS = torch.ops.fastdrop
PACKAGE_ROOT = Path(fastdrop.__file__).resolve().parent.parent
DTYPES = (torch.float16, torch.float32, torch.float64, torch.bfloat16)
P = 0.4
SEED = 1234
UINT64 = (1 << 64) - 1


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


def path_context(path):
    """The eager twins, or the operators (forced by a dispatch mode)."""
    return RecordOps() if path == "operators" else contextlib.nullcontext()


# ---------------------------------------------------------------- 1. bits


BITS_CASES = [(variant, shape, shared, layout) for variant in VARIANTS
              for shape, shared in variant.cases for layout in layouts(shape)]


@pytest.mark.parametrize("recompute", [False, True], ids=["mask", "recompute"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", BITS_CASES,
                         ids=lambda c: f"{c[0]}-{'x'.join(map(str, c[1])) or '0d'}-{c[3]}")
def test_bits_equal_the_numpy_api_on_both_paths(case, dtype, recompute):
    variant, shape, shared, layout = case
    grad = make(shape, "contiguous", dtype, salt=1)
    for path in ("eager", "operators"):
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
                ([] if path == "eager" else [(torch.int64, 2)]), context
        else:  # the one tensor kept is the mask's packed words
            assert len(kept) == 1 and kept[0].dtype == torch.int64, context
            assert np.array_equal(kept[0].numpy(), mask.words.view(np.int64)), context
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
    assert np.array_equal(words.numpy(), mask.words.view(np.int64))
    assert words.numel() == math.ceil(variant.mask_elements(shape, shared) / 64)
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
