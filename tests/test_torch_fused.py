"""fastdrop.torch's fused functions: the NumPy API's bits, opcheck, gradcheck in float64.

``dropout_add`` and ``bias_dropout_add`` on tensors equal `fastdrop.dropout_add` and
`fastdrop.bias_dropout_add` of the same memory with the call's (seed, stream), and the
unfused torch composition with ``fastdrop.torch.dropout``; their operators pass
``torch.library.opcheck``; their gradients pass gradcheck and gradgradcheck.
"""
import numpy as np
import pytest

from tests.util import assert_bits_equal, require

torch = require("torch", "torch")

import fastdrop  # noqa: E402
import fastdrop.torch  # noqa: E402

OPS = torch.ops.fastdrop
DTYPES = (torch.float16, torch.float32, torch.float64, torch.bfloat16)
OPERATIONS = ("dropout_add", "bias_dropout_add")
P = 0.3


def tensors(shape, dtype, layout="contiguous", seed=0):
    """x, bias (for the last axis) and residual: normals, in ``layout``."""
    generator = torch.Generator().manual_seed(seed)

    def one(size):
        return torch.randn(size, generator=generator, dtype=torch.float64).to(dtype)

    if layout == "transposed":
        x, residual = one(shape[::-1]).T, one(shape[::-1]).T
    else:
        x, residual = one(shape), one(shape)
    return x, one(shape[-1:]), residual


def fused(operation, x, bias, residual, p=P, **options):
    if operation == "dropout_add":
        return fastdrop.torch.dropout_add(x, residual, p, **options)
    return fastdrop.torch.bias_dropout_add(x, bias, residual, p, **options)


def numpy_of(tensor):
    """(array, dtype request): bfloat16 as uint16 bit patterns."""
    if tensor.dtype is torch.bfloat16:
        return tensor.detach().view(torch.int16).numpy().view(np.uint16), "bfloat16"
    return tensor.detach().numpy(), None


def key_tensor(seed, stream):
    return torch.tensor([seed - 2**64 if seed >= 2**63 else seed, stream], dtype=torch.int64)


def test_bits_equal_the_numpy_api_and_the_unfused_torch_calls(subtests):
    for operation in OPERATIONS:
        for dtype in DTYPES:
            for layout in ("contiguous", "transposed"):
                with subtests.test(operation=operation, dtype=str(dtype), layout=layout):
                    x, bias, residual = tensors((6, 70), dtype, layout)
                    seed, stream = fastdrop.torch.next_key(torch.Generator().manual_seed(5))
                    y = fused(operation, x, bias, residual,
                              generator=torch.Generator().manual_seed(5))
                    arrays = [numpy_of(t)[0] for t in (x, bias, residual)]
                    request = numpy_of(x)[1]
                    if operation == "dropout_add":
                        expected, _ = fastdrop.dropout_add(arrays[0], arrays[2], P, seed=seed,
                                                           stream=stream, dtype=request)
                    else:
                        expected, _ = fastdrop.bias_dropout_add(*arrays, P, seed=seed,
                                                                stream=stream, dtype=request)
                    assert_bits_equal(numpy_of(y)[0], expected)
                    shifted = x if operation == "dropout_add" else x + bias
                    dropped = fastdrop.torch.dropout(shifted, P,
                                                     generator=torch.Generator().manual_seed(5))
                    assert_bits_equal(numpy_of(y)[0], numpy_of(residual + dropped)[0])
                    assert y.stride() == x.stride()  # the layout torch would give it


OPCHECK_CASES = (  # (operation, shape, dtype, layout, requires_grad)
    ("dropout_add", (5, 7), torch.float32, "contiguous", False),
    ("dropout_add", (5, 7), torch.float64, "transposed", True),
    ("dropout_add", (3, 70), torch.bfloat16, "contiguous", True),
    ("bias_dropout_add", (5, 7), torch.float64, "contiguous", True),
    ("bias_dropout_add", (4, 9), torch.float16, "transposed", False),
    ("bias_dropout_add", (2, 3, 40), torch.float32, "contiguous", True),
)


@pytest.mark.parametrize("case", OPCHECK_CASES, ids=lambda c: f"{c[0]}-{c[2]}-{c[3]}-{c[4]}")
def test_opcheck(case):
    operation, shape, dtype, layout, requires_grad = case
    x, bias, residual = (t.requires_grad_(requires_grad) for t in tensors(shape, dtype, layout))
    key = key_tensor(0x5EED_F00D_0123_4567, 99)
    if operation == "dropout_add":
        torch.library.opcheck(OPS.dropout_add.default, (x, residual, P, key))
    else:
        torch.library.opcheck(OPS.bias_dropout_add.default, (x, bias, residual, P, key))


def test_gradcheck_and_gradgradcheck_in_float64(subtests):
    x, bias, residual = (t.requires_grad_(True) for t in tensors((6, 11), torch.float64))
    key = key_tensor(7, 3)
    for operation in OPERATIONS:
        def eager(x, bias, residual, operation=operation):  # the same mask every evaluation
            return fused(operation, x, bias, residual, generator=torch.Generator().manual_seed(2))

        def operator(x, bias, residual, operation=operation):
            if operation == "dropout_add":
                return OPS.dropout_add(x, residual, P, key)[0]
            return OPS.bias_dropout_add(x, bias, residual, P, key)[0]

        for name, function in (("eager", eager), ("operator", operator)):
            with subtests.test(operation=operation, path=name):
                inputs = (x, bias, residual)
                if operation == "dropout_add":  # bias is not an input: no gradient to check
                    inputs = (x, residual)
                    function = (lambda f: lambda x, residual: f(x, None, residual))(function)
                slope = torch.autograd.grad(function(*inputs).sum(), inputs[0])[0]
                assert (slope == 0).any() and (slope != 0).any()  # kept and dropped elements
                assert torch.autograd.gradcheck(function, inputs)
                assert torch.autograd.gradgradcheck(function, inputs)


def test_gradients_are_the_numpy_backward(subtests):
    for dtype in DTYPES:
        with subtests.test(dtype=str(dtype)):
            x, bias, residual = (t.requires_grad_(True) for t in tensors((6, 70), dtype))
            seed, stream = fastdrop.torch.next_key(torch.Generator().manual_seed(4))
            y = fastdrop.torch.bias_dropout_add(x, bias, residual, P,
                                                generator=torch.Generator().manual_seed(4))
            grad = tensors((6, 70), dtype, seed=1)[0]
            y.backward(grad)
            arrays, request = [numpy_of(t)[0] for t in (x, bias, residual)], numpy_of(x)[1]
            _, mask = fastdrop.bias_dropout_add(*arrays, P, seed=seed, stream=stream,
                                                dtype=request)
            grad_x, grad_bias = fastdrop.bias_dropout_add_backward(numpy_of(grad)[0], mask,
                                                                   dtype=request)
            assert_bits_equal(numpy_of(x.grad)[0], grad_x)
            assert_bits_equal(numpy_of(residual.grad)[0], numpy_of(grad)[0])
            # torch sums in its own order: within a few roundings of the dtype
            tolerance = 1e-12 if dtype is torch.float64 else 3e-2
            expected_bias = torch.from_numpy(grad_x.view(np.int16)).view(torch.bfloat16) \
                if request else torch.from_numpy(grad_x)
            torch.testing.assert_close(bias.grad.double(),
                                       expected_bias.double().sum(0), rtol=tolerance,
                                       atol=tolerance)


def test_inplace_writes_the_residual_and_training_off_adds(subtests):
    for operation in OPERATIONS:
        with subtests.test(operation=operation, case="inplace"):
            x, bias, residual = tensors((4, 65), torch.float32)
            x_before = x.clone()
            expected = fused(operation, x, bias, residual,
                             generator=torch.Generator().manual_seed(9))
            y = fused(operation, x, bias, residual, inplace=True,
                      generator=torch.Generator().manual_seed(9))
            assert y is residual and torch.equal(residual, expected)
            assert torch.equal(x, x_before)
        with subtests.test(operation=operation, case="leaf that requires grad"):
            x, bias, residual = tensors((4, 65), torch.float32)
            with pytest.raises(RuntimeError, match="leaf Variable"):
                fused(operation, x, bias, residual.requires_grad_(True), inplace=True)
        with subtests.test(operation=operation, case="training off"):
            x, bias, residual = tensors((4, 65), torch.float32)
            y = fused(operation, x, bias, residual, training=False)
            assert torch.equal(y, residual + (x if operation == "dropout_add" else x + bias))


def test_errors(subtests):
    x, bias, residual = tensors((4, 5), torch.float32)
    cases = [
        ("p", ValueError, "dropout probability",
         lambda: fastdrop.torch.dropout_add(x, residual, 1.5)),
        ("dtypes", TypeError, "one dtype",
         lambda: fastdrop.torch.dropout_add(x, residual.double())),
        ("shape", ValueError, "residual has shape",
         lambda: fastdrop.torch.dropout_add(x, residual.T.contiguous())),
        ("bias shape", ValueError, "bias has shape",
         lambda: fastdrop.torch.bias_dropout_add(x, bias[:3], residual)),
        ("not a tensor", TypeError, "must be a torch.Tensor",
         lambda: fastdrop.torch.dropout_add(x, residual.numpy())),
    ]
    for name, error, message, call in cases:
        with subtests.test(name):
            with pytest.raises(error, match=message):
                call()
