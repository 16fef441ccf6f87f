"""fastdrop.torch.scaled_dot_product_attention: torch's math path with fastdrop's mask.

The oracle is torch's own ``aten::_scaled_dot_product_attention_math`` given, as its
``dropout_mask``, the mask fastdrop's NumPy API draws for the key `next_key` names;
gradients are checked against it and by finite differences.
"""
import contextlib
import math
import warnings

import numpy as np
import pytest

import fastdrop
from tests.util import require

torch = require("torch", "torch")

import fastdrop.torch as ft  # noqa: E402  (needs torch)

F = torch.nn.functional
P = 0.3


def kept_mask(shape, p):
    """The keep mask of fastdrop's next dropout of a tensor of ``shape`` (torch's key)."""
    seed, stream = ft.next_key()
    kept = fastdrop.dropout(np.ones(shape), p, seed=seed, stream=stream)[0] != 0
    return torch.from_numpy(kept)


def math_path(query, key, value, attn_mask, p, is_causal, scale, enable_gqa, dropout_mask):
    """torch's math path with a given dropout mask (bool masks made additive, as torch's SDPA)."""
    if attn_mask is not None and attn_mask.dtype is torch.bool:
        attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype).masked_fill(~attn_mask,
                                                                                -math.inf)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Dropout mask should only be used for testing"
        return torch.ops.aten._scaled_dot_product_attention_math(
            query, key, value, attn_mask, p, is_causal, dropout_mask=dropout_mask, scale=scale,
            enable_gqa=enable_gqa)[0]


def case(batch, heads, key_heads, length, source, dtype=torch.float64):
    """(query, key, value) leaves that require grad: (*batch, heads, length, 8) and so on."""
    query = torch.randn(*batch, heads, length, 8, dtype=dtype, requires_grad=True)
    key = torch.randn(*batch, key_heads, source, 8, dtype=dtype, requires_grad=True)
    value = torch.randn(*batch, key_heads, source, 6, dtype=dtype, requires_grad=True)
    return query, key, value


def masks(length, source):
    partly_hidden = torch.rand(length, source) > 0.3
    partly_hidden[:, 0] = True
    fully_hidden_row = partly_hidden.clone()
    fully_hidden_row[1] = False
    return {
        "none": None,
        "bool": partly_hidden,
        "bool, a row hidden whole": fully_hidden_row,
        "float": torch.randn(length, source, dtype=torch.float64, requires_grad=True),
        "float, per head": torch.randn(4, length, source, dtype=torch.float64),
    }


def test_output_and_gradients_equal_torchs_math_path_with_fastdrops_mask(subtests):
    torch.manual_seed(0)
    shapes = {"4-D": ((2,), 4, 4, 5, 7), "3-D": ((), 4, 4, 6, 6), "gqa": ((2,), 4, 2, 5, 7)}
    for shape_name, (batch, heads, key_heads, length, source) in shapes.items():
        for mask_name, attn_mask in masks(length, source).items():
            for is_causal, scale in ((False, None), (True, None), (False, 0.2)):
                if is_causal and attn_mask is not None:
                    continue
                with subtests.test(shape=shape_name, mask=mask_name, causal=is_causal,
                                   scale=scale):
                    check_against_math_path(batch, heads, key_heads, length, source,
                                            attn_mask, is_causal, scale)


def check_against_math_path(batch, heads, key_heads, length, source, attn_mask, is_causal,
                            scale):
    query, key, value = case(batch, heads, key_heads, length, source)
    options = {"is_causal": is_causal, "scale": scale, "enable_gqa": key_heads != heads}
    dropout_mask = kept_mask((*batch, heads, length, source), P)
    got = ft.scaled_dot_product_attention(query, key, value, attn_mask, P, **options)
    expected = math_path(query, key, value, attn_mask, P, dropout_mask=dropout_mask, **options)
    torch.testing.assert_close(got, expected)
    grad = torch.randn_like(got)
    inputs = [query, key, value] + ([attn_mask] if attn_mask is not None
                                    and attn_mask.requires_grad else [])
    torch.testing.assert_close(torch.autograd.grad(got, inputs, grad),
                               torch.autograd.grad(expected, inputs, grad))


def test_gradcheck_in_float64():
    query, key, value = case((2,), 3, 3, 4, 5)
    attn_mask = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)

    def attention(query, key, value, attn_mask):
        torch.manual_seed(7)  # the same mask for every evaluation
        return ft.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p=P)

    assert torch.autograd.gradcheck(attention, (query, key, value, attn_mask))


def test_without_dropout_it_is_torchs_own():
    query, key, value = case((2,), 4, 4, 5, 7, dtype=torch.float32)
    for options in ({}, {"is_causal": True}, {"scale": 0.5}):
        assert torch.equal(ft.scaled_dot_product_attention(query, key, value, **options),
                           F.scaled_dot_product_attention(query, key, value, **options))


def test_reproducible_under_manual_seed_and_with_a_generator():
    query, key, value = case((2,), 4, 4, 16, 16, dtype=torch.float32)
    outputs = []
    for _ in range(2):
        torch.manual_seed(3)
        outputs.append(ft.scaled_dot_product_attention(query, key, value, dropout_p=P))
    assert torch.equal(*outputs)
    generated = [ft.scaled_dot_product_attention(query, key, value, dropout_p=P,
                                                 generator=torch.Generator().manual_seed(3))
                 for _ in range(2)]
    assert torch.equal(*generated) and torch.equal(generated[0], outputs[0])
    assert not torch.equal(outputs[0], ft.scaled_dot_product_attention(query, key, value,
                                                                       dropout_p=P))


@contextlib.contextmanager
def saved_bytes():
    """Bytes of the tensors autograd saves inside the block, a storage counted once."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    total = []
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield total
    total.append(sum(storages.values()))


def test_autograd_keeps_less_than_torch_by_the_noise_tensor_at_least():
    query, key, value = case((2,), 4, 4, 32, 32, dtype=torch.float32)
    with saved_bytes() as ours:
        ft.scaled_dot_product_attention(query, key, value, dropout_p=P)
    with saved_bytes() as torchs:
        F.scaled_dot_product_attention(query, key, value, dropout_p=P)
    weights = 2 * 4 * 32 * 32 * query.element_size()  # one B·H·L·S tensor of the dtype
    assert ours[0] <= torchs[0] - weights


def test_under_compile_in_one_graph_with_eagers_masks():
    query, key, value = case((2,), 4, 4, 8, 8, dtype=torch.float32)

    def attention(query, key, value):
        return ft.scaled_dot_product_attention(query, key, value, dropout_p=P, is_causal=True)

    compiled = torch.compile(attention, fullgraph=True, backend="aot_eager")
    results = []
    for function in (attention, compiled):
        torch.manual_seed(5)
        out = function(query, key, value)
        results.append((out, *torch.autograd.grad(out.square().sum(), (query, key, value))))
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_opcheck():
    query, key, value = case((2,), 2, 2, 4, 5)
    attn_mask = torch.randn(4, 5, dtype=torch.float64)
    for mask in (None, attn_mask):
        torch.library.opcheck(torch.ops.fastdrop.attention_dropout,
                              (query, key, value, mask, P, 0.5, torch.tensor([1, 2])))


def test_refusals():
    query, key, value = case((2,), 4, 4, 5, 7, dtype=torch.float32)
    with pytest.raises(ValueError, match="between 0 and 1"):
        ft.scaled_dot_product_attention(query, key, value, dropout_p=1.5)
    with pytest.raises(RuntimeError, match="is_causal"):
        ft.scaled_dot_product_attention(query, key, value, torch.ones(5, 7, dtype=torch.bool),
                                        P, is_causal=True)
    with pytest.raises(RuntimeError, match="same dtype"):
        ft.scaled_dot_product_attention(query, key.double(), value, dropout_p=P)
    with pytest.raises(RuntimeError, match="runs on the CPU"):
        ft.scaled_dot_product_attention(query.to("meta"), key, value, dropout_p=P)


def test_double_backward_is_refused_not_wrong():
    query, key, value = case((1,), 2, 2, 3, 4)
    out = ft.scaled_dot_product_attention(query, key, value, dropout_p=P)
    (grad_query,) = torch.autograd.grad(out.sum(), query, create_graph=True)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        grad_query.sum().backward()
