"""Backward passes: grad * keep / (1 - p), from the stored mask or recomputed, bit for bit."""
import numpy as np
import pytest

import fastdrop
from tests.util import FLOAT_DTYPES, bits, for_each


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_backward_is_grad_times_mask_over_keep_probability(any_backend, dtype, subtests):
    for_each(subtests, check_backward, any_backend, dtype, p=(0.0, 0.2, 0.5, 0.85, 1.0),
             offset=(0, 33))


def check_backward(any_backend, dtype, p, offset):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((300, 70)).astype(dtype)
    grad = rng.standard_normal((300, 70)).astype(dtype)
    _, mask = fastdrop.dropout(x, p, seed=8, stream=9, offset=offset, backend=any_backend)
    keep = fastdrop.unpack_mask(mask.words, mask.n).reshape(grad.shape)
    scale = 0.0 if p == 1 else 1.0 / (1.0 - p)
    with np.errstate(all="ignore"):
        if dtype is np.float16:
            expected = (grad.astype(np.float32) * np.float32(np.float16(scale))).astype(dtype)
        else:
            expected = grad * dtype(scale)
    expected = np.where(keep, expected, dtype(0))
    stored = fastdrop.dropout_backward(grad, mask, backend=any_backend)
    assert np.array_equal(bits(stored), bits(expected))
    recomputed = fastdrop.dropout_backward_recompute(grad, p, seed=8, stream=9, offset=offset,
                                                     backend=any_backend)
    assert np.array_equal(bits(recomputed), bits(stored))


def test_backward_of_forward_is_the_same_elementwise_map(any_backend):
    """d/dx of dropout is the same scaling as the forward: backward(ones) == forward(ones)."""
    ones = np.ones(5000, np.float32)
    y, mask = fastdrop.dropout(ones, 0.3, seed=1, stream=5, backend=any_backend)
    assert np.array_equal(bits(fastdrop.dropout_backward(ones, mask, backend=any_backend)), bits(y))


def test_backward_accepts_raw_words_with_p(any_backend):
    grad = np.linspace(-1, 1, 1000)
    _, mask = fastdrop.dropout(grad, 0.6, seed=2, stream=2, backend=any_backend)
    from_object = fastdrop.dropout_backward(grad, mask, backend=any_backend)
    from_words = fastdrop.dropout_backward(grad, mask.words, p=0.6, backend=any_backend)
    assert np.array_equal(bits(from_object), bits(from_words))


def test_backward_inplace_and_out(any_backend):
    grad = np.linspace(-1, 1, 2000).reshape(40, 50)
    _, mask = fastdrop.dropout(grad, 0.5, seed=3, stream=3, backend=any_backend)
    expected = fastdrop.dropout_backward(grad, mask, backend="numpy")
    out = np.empty_like(grad)
    assert fastdrop.dropout_backward(grad, mask, out=out, backend=any_backend) is out
    assert np.array_equal(out, expected)
    view = np.linspace(-1, 1, 4000).reshape(40, 100)[:, ::2]  # in place through a strided view
    expected_view = fastdrop.dropout_backward(view.copy(), mask, backend="numpy")
    assert fastdrop.dropout_backward(view, mask, inplace=True, backend=any_backend) is view
    assert np.array_equal(view, expected_view)


def test_recompute_backward_of_a_slice_matches_the_whole(any_backend):
    grad = np.ones(10_000, np.float32)
    whole = fastdrop.dropout_backward_recompute(grad, 0.5, seed=4, stream=4, backend=any_backend)
    part = fastdrop.dropout_backward_recompute(grad[1234:5678], 0.5, seed=4, stream=4,
                                               offset=1234, backend=any_backend)
    assert np.array_equal(part, whole[1234:5678])
