"""fastdrop.nn.engine, .functional: ops against finite differences, the in-place rule, dtypes."""
import inspect
import re

import numpy as np
import pytest

import fastdrop
from fastdrop.nn import (
    GradcheckError,
    Tensor,
    cross_entropy,
    dropout,
    engine,
    functional,
    gradcheck,
    log_softmax,
    no_grad,
)


def signed(*shape, seed=0):
    """Values with |v| in [0.2, 1.5]: away from the kinks of relu and from 0."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 1.5, shape) * rng.choice([-1.0, 1.0], shape)


def positive(*shape, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 2.0, shape)


LABELS = np.array([2, 0, 1, 2])

# One entry per op (and per broadcasting pattern): f and its inputs. Every op
# name recorded by `engine._result` (in engine.py and functional.py) must appear here
# or, for the dropout variants' ops, in tests/test_nn_variants.py's OP_CASES
# (test_every_op_has_a_case).
OP_CASES = {
    "add": (lambda a, b: a + b, [signed(3, 4), signed(3, 4, seed=1)]),
    "add row broadcast": (lambda a, b: a + b, [signed(3, 4), signed(4, seed=1)]),
    "add both stretched": (lambda a, b: a + b, [signed(3, 1), signed(1, 4, seed=1)]),
    "add scalar (reflected)": (lambda a: 2.5 + a, [signed(3)]),
    "sub": (lambda a, b: a - b, [signed(2, 3), signed(3, seed=1)]),
    "sub reflected": (lambda a: 1.0 - a, [signed(2, 3)]),
    "neg": (lambda a: -a, [signed(5)]),
    "mul": (lambda a, b: a * b, [signed(2, 3), signed(2, 1, seed=1)]),
    "mul by array (reflected)": (lambda a: np.arange(3.0) * a, [signed(2, 3)]),
    "div": (lambda a, b: a / b, [signed(2, 3), positive(2, 3, seed=1)]),
    "div reflected": (lambda a: 2.0 / a, [positive(4)]),
    "pow": (lambda a: a ** 3, [signed(4)]),
    "pow fractional": (lambda a: a ** 0.5, [positive(4)]),
    "matmul": (lambda a, b: a @ b, [signed(3, 4), signed(4, 2, seed=1)]),
    "matmul reflected": (lambda a: signed(2, 3, seed=5) @ a, [signed(3, 4)]),
    "sum all": (lambda a: a.sum(), [signed(3, 4)]),
    "sum axis": (lambda a: a.sum(axis=0), [signed(3, 4)]),
    "sum axes keepdims": (lambda a: a.sum(axis=(0, 2), keepdims=True), [signed(2, 3, 4)]),
    "mean axis": (lambda a: a.mean(axis=-1), [signed(3, 4)]),
    "exp": (lambda a: a.exp(), [signed(6)]),
    "log": (lambda a: a.log(), [positive(6)]),
    "relu": (lambda a: a.relu(), [signed(3, 5)]),
    "tanh": (lambda a: a.tanh(), [signed(3, 5)]),
    "reshape": (lambda a: a.reshape(6, 2) @ signed(2, 3, seed=4), [signed(3, 4)]),
    "transpose": (lambda a: a.T @ signed(3, 2, seed=4), [signed(3, 4)]),
    "getitem slice": (lambda a: a[1:, ::2], [signed(3, 4)]),
    "getitem repeated rows": (lambda a: a[[0, 0, 2]], [signed(3, 4)]),
    "log_softmax": (lambda a: log_softmax(a), [signed(4, 5)]),
    "cross_entropy": (lambda a: cross_entropy(a, LABELS), [signed(4, 3)]),
    "dropout": (lambda a: dropout(a, 0.3, seed=7, stream=2)[0], [signed(4, 50)]),
    "dropout recompute": (lambda a: dropout(a, 0.3, seed=7, stream=2, recompute=True)[0],
                          [signed(4, 50)]),
    "dropout with offset": (lambda a: dropout(a, 0.6, seed=3, stream=1, offset=37)[0],
                            [signed(70)]),
    "dropout in place after relu": (
        lambda a, w: dropout((a @ w).relu(), 0.5, seed=11, stream=0)[0].sum(axis=0),
        [signed(5, 3), signed(3, 70, seed=1)]),
    "dropout after tanh (copies)": (
        lambda a, w: dropout((a @ w).tanh(), 0.5, seed=11, stream=0)[0].sum(axis=0),
        [signed(5, 3), signed(3, 70, seed=1)]),
}


@pytest.mark.parametrize("name", OP_CASES)
def test_gradcheck_every_op(name):
    f, inputs = OP_CASES[name]
    assert gradcheck(f, inputs)


def test_every_op_has_a_case():
    from tests.test_nn_variants import OP_CASES as VARIANT_CASES  # the dropout variants' ops

    source = inspect.getsource(engine) + inspect.getsource(functional)
    declared = set(re.findall(r'_result\([^"]*?"([^"]+)"', source))
    seen = set()
    cases = list(OP_CASES.values()) + [(make("numpy"), inputs)
                                       for make, inputs in VARIANT_CASES.values()]
    for f, inputs in cases:
        output = f(*[Tensor(value, requires_grad=True) for value in inputs])
        seen |= {tensor._op for tensor in output._topological_order()}
    assert declared and declared <= seen, f"ops without a gradcheck case: {declared - seen}"


def test_gradcheck_catches_a_wrong_gradient():
    # Tensor(a.data) shares a's values but is a constant to the graph: backward misses half.
    with pytest.raises(GradcheckError, match="input 0"):
        gradcheck(lambda a: a * Tensor(a.data), [signed(3)])


def test_gradcheck_restores_its_inputs():
    weight = Tensor(signed(2, 3).astype(np.float32))
    before = weight.data.copy()
    gradcheck(lambda w: (w * w).sum(), [weight])
    assert weight.dtype == np.float32 and weight.grad is None and not weight.requires_grad
    assert np.array_equal(weight.data, before)


def test_gradients_accumulate_over_uses_and_backward_calls():
    x = Tensor([1.0, -2.0, 3.0], requires_grad=True)
    y = (x * x + x).sum()  # x used twice: both contributions add up
    y.backward()
    assert x.grad.tolist() == [3.0, -3.0, 7.0]
    y.backward()  # leaves accumulate; the intermediate tensors start again
    assert x.grad.tolist() == [6.0, -6.0, 14.0]
    assert y.grad is None  # only leaves keep a gradient


def test_broadcast_gradients_are_reduced_to_the_operand_shapes():
    a = Tensor(signed(3, 1), requires_grad=True)
    b = Tensor(signed(1, 4, seed=1), requires_grad=True)
    bias = Tensor(signed(4, seed=2), requires_grad=True)
    (a * b + bias).sum().backward()
    assert a.grad.shape == (3, 1) and b.grad.shape == (1, 4) and bias.grad.shape == (4,)
    assert np.allclose(a.grad[:, 0], b.data.sum()) and np.allclose(bias.grad, 3.0)


def test_backward_argument_errors():
    x = Tensor(signed(2, 2), requires_grad=True)
    with pytest.raises(RuntimeError, match="one-element"):
        (x * 2).backward()
    with pytest.raises(ValueError, match="shape"):
        (x * 2).backward(np.ones(3))
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor([1.0]).backward()


def test_no_grad_records_nothing_and_restores_the_mode():
    w = Tensor(signed(3), requires_grad=True)
    with no_grad():
        y = (w * 2).sum()
        with no_grad():
            pass
        z = w * 3  # still off after the inner block
    assert not y.requires_grad and not z.requires_grad
    with pytest.raises(RuntimeError):
        y.backward()
    assert (w * 2).sum().requires_grad

    @no_grad()
    def inference(tensor):
        return tensor * 2

    assert not inference(w).requires_grad


def test_dtypes():
    assert Tensor([1, 2]).dtype == np.float32  # ints, lists: float32
    assert Tensor(np.ones(2, np.float16)).dtype == np.float32
    data64 = np.ones(2)
    assert Tensor(data64).data is data64  # float64 kept, not copied
    x32 = Tensor(np.ones(3, np.float32), requires_grad=True)
    y = (x32 * 2.5 + np.ones(3) - 1.0 / x32).sum()  # constants take the tensor's dtype
    assert y.dtype == np.float32
    y.backward()
    assert x32.grad.dtype == np.float32
    assert (Tensor(np.ones(3)) * 2.5).dtype == np.float64
    with pytest.raises(TypeError):
        Tensor(np.ones(2, complex))
    with pytest.raises(TypeError):
        Tensor(np.ones(2), dtype=np.float16)


def test_cross_entropy_is_stable_and_checks_labels():
    logits = Tensor(np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]]), requires_grad=True)
    loss = cross_entropy(logits, [0, 1])
    assert np.isclose(loss.item(), np.log(3.0) / 2)
    loss.backward()
    assert np.all(np.isfinite(logits.grad))
    with pytest.raises(ValueError, match="labels must lie"):
        cross_entropy(logits, [0, 3])
    with pytest.raises(TypeError, match="integers"):
        cross_entropy(logits, [0.0, 1.0])
    with pytest.raises(ValueError, match="labels"):
        cross_entropy(logits, [0])


# -- the in-place dropout rule -------------------------------------------------------------


def hidden(activation, requires_grad=True):
    """An op output: activation(x @ w), with x a leaf."""
    x = Tensor(signed(4, 3).astype(np.float32))
    w = Tensor(signed(3, 64, seed=1).astype(np.float32), requires_grad=requires_grad)
    return getattr(x @ w, activation)()


def test_relu_output_is_overwritten_and_then_guarded():
    h = hidden("relu")
    y, _ = dropout(h, 0.5, seed=1, stream=0)
    assert np.shares_memory(y.data, h.data)
    with pytest.raises(RuntimeError, match="overwritten"):
        h + 1.0


@pytest.mark.parametrize("activation", ["tanh", "exp"])
def test_output_that_backward_reads_is_not_overwritten(activation):
    h = hidden(activation)
    before = h.data.copy()
    y, _ = dropout(h, 0.5, seed=1, stream=0)
    assert not np.shares_memory(y.data, h.data)
    assert np.array_equal(h.data, before)


def test_leaf_input_is_never_overwritten():
    data = signed(4, 64).astype(np.float32)
    before = data.copy()
    for requires_grad in (False, True):
        dropout(Tensor(data, requires_grad=requires_grad), 0.5, seed=1, stream=0)
        assert np.array_equal(data, before)


def test_tensor_already_read_by_an_op_is_not_overwritten():
    h = hidden("relu")
    total = h.sum()
    before = h.data.copy()
    dropout(h, 0.5, seed=1, stream=0)
    assert np.array_equal(h.data, before)
    (h * 2).sum().backward()  # still usable
    assert total.item() == pytest.approx(float(before.sum()))


def test_view_is_not_overwritten():
    h = hidden("relu")
    before = h.data.copy()
    dropout(h.reshape(-1), 0.5, seed=1, stream=0)
    assert np.array_equal(h.data, before)


def test_overwritten_under_no_grad_too():
    with no_grad():
        h = hidden("relu")
        y, _ = dropout(h, 0.5, seed=1, stream=0)
    assert np.shares_memory(y.data, h.data)


def network_gradients(inplace, recompute=False):
    """Linear -> ReLU -> Dropout -> Linear -> loss: the loss and every gradient."""
    x = Tensor(signed(8, 5).astype(np.float32))
    w1 = Tensor(signed(5, 96, seed=1).astype(np.float32), requires_grad=True)
    w2 = Tensor(signed(96, 3, seed=2).astype(np.float32), requires_grad=True)
    dropped, mask = dropout((x @ w1).relu(), 0.5, seed=5, stream=9, inplace=inplace,
                            recompute=recompute)
    loss = cross_entropy(dropped @ w2, [0, 1, 2, 0, 1, 2, 0, 1])
    loss.backward()
    return loss.item(), w1.grad, w2.grad, mask


def test_in_place_and_copying_dropout_give_identical_gradients():
    loss_in_place, w1_in_place, w2_in_place, _ = network_gradients(inplace=True)
    loss_copy, w1_copy, w2_copy, _ = network_gradients(inplace=False)
    assert loss_in_place == loss_copy
    assert np.array_equal(w1_in_place, w1_copy) and np.array_equal(w2_in_place, w2_copy)


def test_recompute_stores_no_mask_and_gives_identical_gradients():
    loss_stored, w1_stored, w2_stored, mask = network_gradients(inplace=True)
    loss_recomputed, w1_recomputed, w2_recomputed, no_mask = network_gradients(
        inplace=True, recompute=True)
    assert isinstance(mask, fastdrop.DropoutMask) and no_mask is None
    assert loss_stored == loss_recomputed
    assert np.array_equal(w1_stored, w1_recomputed) and np.array_equal(w2_stored, w2_recomputed)


def test_dropout_op_matches_fastdrop_dropout():
    data = signed(6, 40).astype(np.float32)
    y, mask = dropout(Tensor(data), 0.25, seed=4, stream=3)
    expected, expected_mask = fastdrop.dropout(data, 0.25, seed=4, stream=3)
    assert np.array_equal(y.data, expected)
    assert np.array_equal(mask.words, expected_mask.words)
    same, no_mask = dropout(Tensor(data), 0.25, seed=4, stream=3, training=False)
    assert np.array_equal(same.data, data) and no_mask is None
