"""softmax_dropout: dropout of the rounded softmax, bit for bit; the softmax within its bound.

The softmax's exponential is not bit-specified (docs/mask-stream.md, section 12), so each
backend's softmax is compared with the reference's in ulps of the dtype (`ULP_BOUND`, the
bound docs/fused.md states) over random and adversarial rows; everything after it is
exact: the result is `fastdrop.dropout` of the call's own softmax, the mask dropout's,
and both equal the reference's wherever the softmax bits do. Each C path (SIMD level) keeps
the bound, and gives the same bits on every thread count. The backward is exact on every
backend and path.
"""
import numpy as np
import pytest

import fastdrop
from fastdrop import _backends, reference
from fastdrop._config import MIN_ELEMENTS_PER_THREAD
from tests.util import BFLOAT16, FLOAT_DTYPES, assert_bits_equal, require, sample, unchanged

SEED, STREAM = 0x0123_4567_89AB_CDEF, 9
LENGTHS = (1, 3, 63, 65, 128, 200, 2100)  # 2100: longer than the C kernels' row block
OFFSETS = (0, 5, 64 * 3 + 61)
PS = (0.0, 0.1, 0.5, 1.0)
# |softmax - reference softmax| in ulps of the dtype (docs/fused.md states these)
ULP_BOUND = {"float64": 8, "float32": 8, "float16": 1, "bfloat16": 1, "bfloat16-bits": 1}
TWO_THREAD_ROWS = (2 * MIN_ELEMENTS_PER_THREAD) // 128 + 3  # rows of 128 that split in two


def dtype_forms():
    """(name, dtype, dtype= argument): each float dtype, and bfloat16 as uint16 bit patterns."""
    forms = [(np.dtype(dtype).name, dtype, None) for dtype in FLOAT_DTYPES]
    if BFLOAT16 is not None:
        forms.append(("bfloat16-bits", np.uint16, "bfloat16"))
    return forms


def forms_on(backend):
    """Numba compiles each dtype's loops (slow): float32 and float64 on it, every form elsewhere."""
    if backend == "numba":
        return [form for form in dtype_forms() if form[0] in ("float32", "float64")]
    return dtype_forms()


def make(shape, dtype, request, salt=0, scale=1.0):
    """Sample scores (uint16 bit patterns of a bfloat16 sample for the bits form)."""
    values = np.asarray(sample(shape, np.float64, salt) * scale)
    if request is None:
        return values.astype(dtype)
    return values.astype(BFLOAT16).view(np.uint16)


def as_float64(values):
    """Kernel-view values (bfloat16 as uint16 bits) as float64."""
    if values.dtype == np.uint16:
        return reference.bfloat16_to_float32(values).astype(np.float64)
    return values.astype(np.float64)


def ulps(actual, expected):
    """|actual - expected| in ulps of the dtype at expected; 0 where both are NaN."""
    a, b = as_float64(actual), as_float64(expected)
    with np.errstate(invalid="ignore"):  # NaN's spacing: replaced below
        if expected.dtype == np.uint16:  # bfloat16: float32's spacing, 16 bits coarser
            spacing = np.spacing(np.abs(b).astype(np.float32)).astype(np.float64) * 2**16
        else:
            spacing = np.spacing(np.abs(b).astype(expected.dtype)).astype(np.float64)
        distance = np.abs(a - b) / spacing
    both_nan = np.isnan(a) & np.isnan(b)
    return np.where(both_nan, 0.0, np.where(np.isnan(a) | np.isnan(b), np.inf, distance))


def assert_bits_equal_but_nans(actual, expected):
    """The same bits, except that a NaN may be any NaN (a NaN row's sign is not specified)."""
    nan = np.isnan(as_float64(actual))
    assert np.array_equal(nan, np.isnan(as_float64(expected)))
    assert_bits_equal(np.where(nan, 0, actual), np.where(nan, 0, expected))


def adversarial_rows(length):
    """Rows that stress the exponential and the sum: wide spreads, -inf entries, ties."""
    rng = np.random.default_rng(length)
    rows = [rng.standard_normal(length) * scale for scale in (1e-3, 1, 10, 40, 200)]
    rows.append(np.zeros(length))  # equal entries: 1 / length each
    spread = np.linspace(-120.0, 0.0, length)  # exponentials down to subnormal and zero
    rows.append(spread)
    holes = rng.standard_normal(length)
    holes[::3] = -np.inf  # masked-out scores (attention masks)
    holes[0] = 1.0
    rows.append(holes)
    rows.append(np.full(length, 60000.0) - np.arange(length))  # large, float16's top
    rows.append(np.full(length, -np.inf))  # NaN, as torch
    special = rng.standard_normal(length)
    special[length // 2] = np.inf  # NaN, as torch
    rows.append(special)
    return np.stack(rows)


def softmax_of(x, backend, request=None, axis=-1, **options):
    """(y, mask, softmax) of one call."""
    softmax = np.empty_like(x)
    y, mask = fastdrop.softmax_dropout(x, 0.1, axis, seed=SEED, stream=STREAM, dtype=request,
                                       backend=backend, softmax_out=softmax, **options)
    return y, mask, softmax


def test_the_softmax_is_within_the_bound_of_the_reference(compiled_backend, subtests):
    for name, dtype, request in forms_on(compiled_backend):
        for length in LENGTHS:
            for kind, scores in (("random", make((40, length), np.float64, None, scale=4.0)),
                                 ("adversarial", adversarial_rows(length))):
                with subtests.test(dtype=name, length=length, rows=kind):
                    x = (scores.astype(BFLOAT16).view(np.uint16) if request
                         else scores.astype(dtype))
                    _, _, softmax = softmax_of(x, compiled_backend, request)
                    expected = reference.softmax(x, -1)
                    assert ulps(softmax, expected).max() <= ULP_BOUND[name]


def test_the_result_is_dropout_of_its_softmax_and_the_mask_dropouts(any_backend, subtests):
    for name, dtype, request in forms_on(any_backend):
        for shape, axis in (((4, 65), -1), ((3, 1), -1), ((2, 3, 63), 1), ((5, 7, 3), 0),
                            ((2, 200), -1), ((1, 2100), -1)):
            x = make(shape, dtype, request, scale=3.0)
            for offset in OFFSETS:
                for p in PS:
                    with subtests.test(dtype=name, shape=shape, axis=axis, offset=offset, p=p):
                        keys = dict(seed=SEED, stream=STREAM, offset=offset)
                        softmax = np.empty_like(x)
                        with unchanged(x):
                            y, mask = fastdrop.softmax_dropout(
                                x, p, axis, dtype=request, backend=any_backend,
                                softmax_out=softmax, **keys)
                        dropped, dropout_mask = reference.dropout(softmax, p, dtype=request,
                                                                  **keys)
                        assert_bits_equal(y, dropped)
                        assert_bits_equal(mask.words, dropout_mask.words)
                        assert (mask.shape, mask.p, mask.offset) == (x.shape, p, offset)
                        # and the reference's result wherever the softmax bits agree
                        expected, _ = reference.softmax_dropout(x, p, axis, dtype=request, **keys)
                        same = reference.softmax(x, axis).view(np.uint8) == softmax.view(np.uint8)
                        same = same.reshape(x.shape + (-1,)).all(axis=-1)
                        assert np.array_equal(y[same].view(np.uint8),
                                              expected[same].view(np.uint8))


def test_layouts_give_the_bits_of_a_c_ordered_copy(compiled_backend, subtests):
    """Strided rows, a non-last axis, out= and in place: the bits of the plain call."""
    x = make((6, 10, 70), np.float32, None, scale=3.0)
    layouts = {
        "sliced": (x[:, ::2, 1::2], -1),
        "transposed": (x.transpose(2, 1, 0), -1),
        "reversed": (x[::-1, :, ::-1], -1),
        "axis 1 of a transpose": (x.transpose(0, 2, 1), 1),
        "axis 0": (x, 0),
        "axis 1, unmergeable": (x[:, :, ::3], 1),
    }
    for name, (view, axis) in layouts.items():
        with subtests.test(layout=name):
            copy = np.ascontiguousarray(view)
            y, mask, softmax = softmax_of(view, compiled_backend, axis=axis)
            expected, expected_mask, expected_softmax = softmax_of(copy, compiled_backend,
                                                                   axis=axis)
            assert_bits_equal(y, expected)
            assert_bits_equal(softmax, expected_softmax)
            assert_bits_equal(mask.words, expected_mask.words)
    with subtests.test(layout="out= strided, and in place"):
        expected, _, _ = softmax_of(x, compiled_backend)
        out = np.empty((6, 10, 140), np.float32)[:, :, ::2]
        y, _, _ = softmax_of(x, compiled_backend, out=out)
        assert y is out
        assert_bits_equal(out, expected)
        in_place = x.copy()
        softmax_of(in_place, compiled_backend, out=in_place)
        assert_bits_equal(in_place, expected)


def test_simd_levels_and_threads_agree(subtests, threads):
    """Every C path (portable, AVX2, AVX-512) and 1 or 2 threads agree where the spec asks.

    Each path's softmax is within the bound and its result the dropout of that softmax; the
    mask and the backward are one on every path; the threads of a path give one result.
    """
    if not _backends.backend_available("cython"):
        pytest.skip("the cython backend is not here")
    from fastdrop.kernels.cython import kernels

    level = kernels.simd_enabled()
    try:
        for name, dtype, request in dtype_forms():
            x = make((TWO_THREAD_ROWS, 128), dtype, request, scale=4.0)
            grad = make(x.shape, dtype, request, salt=1)
            expected_softmax = reference.softmax(x, -1)
            first, per_path = None, {}
            for simd in sorted({0, min(level, 1), level}):
                for thread_count in (1, 2):
                    with subtests.test(dtype=name, simd=simd, threads=thread_count):
                        kernels.set_simd(simd)
                        fastdrop.set_num_threads(thread_count)
                        y, mask, softmax = softmax_of(x, "cython", request)
                        assert ulps(softmax, expected_softmax).max() <= ULP_BOUND[name]
                        dropped, _ = reference.dropout(softmax, 0.1, seed=SEED, stream=STREAM,
                                                       dtype=request)
                        assert_bits_equal(y, dropped)
                        for got, expected in zip((y, softmax),
                                                 per_path.setdefault(simd, (y, softmax))):
                            assert_bits_equal(got, expected)
                        # the backward of one softmax and mask: the same bits on every path
                        first = first or (mask, softmax, fastdrop.softmax_dropout_backward(
                            grad, softmax, mask, dtype=request))
                        assert_bits_equal(mask.words, first[0].words)
                        assert_bits_equal_but_nans(fastdrop.softmax_dropout_backward(
                            grad, first[1], first[0], dtype=request), first[2])
    finally:
        kernels.set_simd(level)


def test_two_threads_on_numba_give_the_bits_of_one(threads):
    x = make((TWO_THREAD_ROWS, 128), np.float32, None, scale=4.0)
    fastdrop.set_num_threads(1)
    one = softmax_of(x, "numba")
    fastdrop.set_num_threads(2)
    two = softmax_of(x, "numba")
    for got, expected in zip((two[0], two[1].words, two[2]), (one[0], one[1].words, one[2])):
        assert_bits_equal(got, expected)


def test_training_off_is_the_softmax_alone(any_backend):
    x = make((3, 70), np.float32, None, scale=3.0)
    softmax = np.empty_like(x)
    with unchanged(fastdrop.default_generator()):
        y, mask = fastdrop.softmax_dropout(x, 0.3, training=False, backend=any_backend,
                                           softmax_out=softmax)
    assert mask is None
    assert_bits_equal(y, softmax)
    assert ulps(y, reference.softmax(x, -1)).max() <= ULP_BOUND["float32"]


def test_backward_is_the_references_bits(any_backend, subtests):
    for name, dtype, request in forms_on(any_backend):
        for shape, axis in (((4, 65), -1), ((3, 1), -1), ((2, 37, 3), 1), ((1, 2100), -1)):
            x = make(shape, dtype, request, scale=3.0)
            grad = make(shape, dtype, request, salt=1)
            softmax = np.empty_like(x)
            _, mask = fastdrop.softmax_dropout(x, 0.2, axis, seed=SEED, dtype=request,
                                               softmax_out=softmax)
            for which in ("mask", "none"):
                with subtests.test(dtype=name, shape=shape, axis=axis, mask=which):
                    used = mask if which == "mask" else None
                    with unchanged(grad, softmax):
                        dx = fastdrop.softmax_dropout_backward(grad, softmax, used, axis,
                                                               dtype=request, backend=any_backend)
                    expected = reference.softmax_dropout_backward(grad, softmax, used, axis,
                                                                  dtype=request)
                    assert_bits_equal_but_nans(dx, expected)


def test_backward_is_the_derivative(compiled_backend):
    """Float64 central differences of sum(w * y) along a random direction."""
    rng = np.random.default_rng(3)
    x, weights, direction = (rng.standard_normal((5, 33)) for _ in range(3))

    def loss(values):
        y, _ = fastdrop.softmax_dropout(values, 0.25, 0, seed=SEED, backend=compiled_backend)
        return float(np.sum(weights * y))

    softmax = np.empty_like(x)
    _, mask = fastdrop.softmax_dropout(x, 0.25, 0, seed=SEED, softmax_out=softmax,
                                       backend=compiled_backend)
    dx = fastdrop.softmax_dropout_backward(weights, softmax, mask, 0, backend=compiled_backend)
    step = 1e-6
    numeric = (loss(x + step * direction) - loss(x - step * direction)) / (2 * step)
    assert np.isclose(np.sum(dx * direction), numeric, rtol=1e-6, atol=1e-9)


def test_bad_input_is_refused_before_anything_is_written(any_backend, subtests):
    x = make((4, 70), np.float32, None)
    out, softmax = np.zeros_like(x), np.zeros_like(x)
    read_only = np.zeros_like(x)
    read_only.flags.writeable = False
    generator = fastdrop.Generator(7)
    calls = {
        "axis out of range": (ValueError, "axis=2", dict(axis=2)),
        "0-d x": (ValueError, "axis=-1", dict(x=np.float32(1.0), out=None, softmax_out=None)),
        "p above 1": (ValueError, "p", dict(p=1.5)),
        "int x": (TypeError, "int64", dict(x=np.ones((4, 70), np.int64))),
        "softmax_out dtype": (TypeError, "softmax_out", dict(softmax_out=np.zeros((4, 70)))),
        "softmax_out shape": (ValueError, "softmax_out",
                              dict(softmax_out=np.zeros((4, 71), np.float32))),
        "softmax_out read-only": (ValueError, "softmax_out", dict(softmax_out=read_only)),
        "softmax_out is out": (ValueError, "overlap", dict(softmax_out=out)),
        "out shape": (ValueError, "out", dict(out=np.zeros((70, 4), np.float32))),
        "offset": (ValueError, "offset", dict(offset=-1)),
        "training": (TypeError, "training", dict(training="yes")),
    }
    for name, (error, words, changes) in calls.items():
        with subtests.test(call=name):
            arguments = dict(x=x, p=0.5, axis=-1, out=out, softmax_out=softmax)
            arguments.update(changes)
            with unchanged(x, out, softmax, generator), pytest.raises(error, match=words):
                fastdrop.softmax_dropout(arguments.pop("x"), arguments.pop("p"),
                                         arguments.pop("axis"), seed=generator,
                                         backend=any_backend, **arguments)
    _, mask = fastdrop.softmax_dropout(x, 0.5, seed=1)
    _, rows_mask = fastdrop.softmax_dropout(x[:2], 0.5, seed=1)
    backward_calls = {
        "softmax shape": (ValueError, "softmax", (x, x[:, :69], mask)),
        "softmax dtype": (TypeError, "softmax", (x, x.astype(np.float64), mask)),
        "mask shape": (ValueError, "mask", (x, x, rows_mask)),
        "mask type": (TypeError, "DropoutMask", (x, x, mask.words)),
    }
    for name, (error, words, arguments) in backward_calls.items():
        with subtests.test(call=f"backward: {name}"):
            with unchanged(x, out), pytest.raises(error, match=words):
                fastdrop.softmax_dropout_backward(*arguments, out=out, backend=any_backend)


# ---------------------------------------------------------------- fastdrop.torch.softmax_dropout

TORCH_DTYPES = ("float64", "float32", "float16", "bfloat16")


def test_torch_gives_the_numpy_calls_bits_with_the_same_key(subtests):
    torch = require("torch", "torch")
    import fastdrop.torch

    scores = make((3, 5, 70), np.float32, None, scale=3.0)
    for name in TORCH_DTYPES:
        for dim in (-1, 1, 0):
            for layout in ("contiguous", "transposed"):
                with subtests.test(dtype=name, dim=dim, layout=layout):
                    x = torch.from_numpy(scores).to(getattr(torch, name))
                    if layout == "transposed":
                        x = x.transpose(0, 2)
                    seed, stream = fastdrop.torch.next_key()
                    y = fastdrop.torch.softmax_dropout(x, 0.3, dim)
                    array = x.contiguous().view(torch.int16).numpy().view(np.uint16) \
                        if name == "bfloat16" else x.contiguous().numpy()
                    expected, _ = fastdrop.softmax_dropout(
                        array, 0.3, dim, seed=seed, stream=stream,
                        dtype="bfloat16" if name == "bfloat16" else None)
                    got = y.contiguous().view(torch.int16).numpy().view(np.uint16) \
                        if name == "bfloat16" else y.contiguous().numpy()
                    assert y.shape == x.shape and y.dtype == x.dtype
                    assert_bits_equal(got, expected)
    with subtests.test(case="training off and p = 0 draw no key"):
        x = torch.from_numpy(scores)
        before = torch.get_rng_state()
        for y in (fastdrop.torch.softmax_dropout(x, 0.3, training=False),
                  fastdrop.torch.softmax_dropout(x, 0.0)):
            assert torch.equal(torch.get_rng_state(), before)
            assert torch.allclose(y, torch.softmax(x, -1), rtol=1e-6, atol=1e-7, equal_nan=True)
    with subtests.test(case="torch's checks"):
        with pytest.raises(IndexError, match="Dimension out of range"):
            fastdrop.torch.softmax_dropout(x, 0.3, 3)
        with pytest.raises(ValueError, match="dropout probability"):
            fastdrop.torch.softmax_dropout(x, 1.5)
        with pytest.raises(TypeError, match="float"):
            fastdrop.torch.softmax_dropout(x.to(torch.int32), 0.3)


def test_torch_gradcheck_opcheck_and_double_backward(subtests):
    torch = require("torch", "torch")
    import fastdrop.torch

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 9, dtype=torch.float64, generator=generator, requires_grad=True)
    for dim in (-1, 1):
        with subtests.test(check="gradcheck", dim=dim):
            def function(values, dim=dim):
                return fastdrop.torch.softmax_dropout(
                    values, 0.3, dim, generator=torch.Generator().manual_seed(5))
            assert torch.autograd.gradcheck(function, (x,))
    ops = torch.ops.fastdrop
    key = torch.tensor([3, 4], dtype=torch.int64)
    for save in (True, False):
        with subtests.test(check="opcheck", save_softmax=save):
            torch.library.opcheck(ops.softmax_dropout.default,
                                  (x.detach().float().requires_grad_(save), 0.25, key, 1, save))
    with subtests.test(check="opcheck of the backward"):
        _, softmax, words = ops.softmax_dropout(x.detach(), 0.25, key, 2, True)
        torch.library.opcheck(ops.softmax_dropout_backward.default,
                              (torch.randn_like(x), softmax, words, 0.25, 2))
    with subtests.test(check="double backward raises"):
        y = fastdrop.torch.softmax_dropout(x, 0.3)
        (grad,) = torch.autograd.grad(y.sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="double backward"):
            grad.sum().backward()


def test_torch_compile_gives_eagers_result():
    torch = require("torch", "torch")
    import fastdrop.torch

    def attention_probabilities(scores):
        return fastdrop.torch.softmax_dropout(scores * 0.5, 0.1, -1) * 2

    scores = torch.randn(2, 4, 16, 16, requires_grad=True)
    torch.manual_seed(7)
    eager = attention_probabilities(scores)
    eager.sum().backward()
    eager_grad, scores.grad = scores.grad, None
    compiled_function = torch.compile(attention_probabilities, fullgraph=True, backend="aot_eager")
    torch.manual_seed(7)
    compiled = compiled_function(scores)
    compiled.sum().backward()
    assert torch.equal(compiled, eager)
    assert torch.equal(scores.grad, eager_grad)
