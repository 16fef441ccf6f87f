"""Fused dropout: ``dropout_add`` is the unfused composition, bit for bit, with dropout's mask.

The expected values are the composition a user would write, in NumPy (ml_dtypes for
bfloat16): ``residual + fastdrop.dropout(x, ...)[0]``. Each backend (the reference
included) is checked against it over every dtype, sizes around word boundaries,
offsets, layouts, in place, ``out=``, one and two threads; the mask against
`fastdrop.dropout`'s; the backward (`dropout_backward` for x, grad for the residual)
against the reference and a directional derivative; bad input against "nothing written".
"""
import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from fastdrop._config import MIN_ELEMENTS_PER_THREAD
from tests.util import (
    BFLOAT16,
    FLOAT_DTYPES,
    LAYOUTS,
    assert_bits_equal,
    assert_same_record,
    numba_twin,
    require,
    sample,
    unchanged,
)

SEED, STREAM = 0x0123_4567_89AB_CDEF, 9
SIZES = (1, 63, 64, 65, 1000, 4097)
OFFSETS = (0, 5, 64 * 3 + 61)
PS = (0.0, 0.1, 0.5, 1.0)
OPERATIONS = ("dropout_add", "bias_dropout_add")
TWO_THREAD_SIZE = 2 * MIN_ELEMENTS_PER_THREAD + 77  # large enough to split across two threads


def dtype_forms():
    """(name, dtype, dtype= argument): each float dtype, and bfloat16 as uint16 bit patterns."""
    forms = [(np.dtype(dtype).name, dtype, None) for dtype in FLOAT_DTYPES]
    if BFLOAT16 is not None:
        forms.append(("bfloat16-bits", np.uint16, "bfloat16"))
    return forms


def make(shape, dtype, dtype_request, salt=0):
    """A sample array (uint16 bit patterns of a bfloat16 sample for the bits form)."""
    if dtype_request is None:
        return sample(shape, dtype, salt)
    return sample(shape, BFLOAT16, salt).view(np.uint16)


def inputs(shape, dtype, dtype_request):
    """x, a bias for its last axis (any for 0-d x) and a residual, of one dtype."""
    return (make(shape, dtype, dtype_request), make(shape[-1:] or (1,), dtype, dtype_request, 2),
            make(shape, dtype, dtype_request, 1))


def numpy_add(a, b):
    """The user's ``a + b`` in NumPy (bfloat16 bits added as ml_dtypes bfloat16)."""
    with np.errstate(all="ignore"):
        if a.dtype == np.uint16:
            return (a.view(BFLOAT16) + b.view(BFLOAT16)).view(np.uint16)
        return a + b


def fused(operation, x, bias, residual, p, **options):
    """The fused call: ``dropout_add(x, residual, p)`` or ``bias_dropout_add(x, bias, ...)``."""
    if operation == "dropout_add":
        return fastdrop.dropout_add(x, residual, p, **options)
    return fastdrop.bias_dropout_add(x, bias, residual, p, **options)


def composition(operation, x, bias, residual, p, backend, dtype_request=None, **keys):
    """The unfused calls: ``residual + dropout(x (+ bias))``, and the dropout's mask."""
    shifted = x.copy() if operation == "dropout_add" else numpy_add(x, bias)
    dropped, mask = fastdrop.dropout(shifted, p, dtype=dtype_request, backend=backend, **keys)
    return numpy_add(residual.copy(), dropped), mask


def shape_of(operation, n):
    """x's shape for n: (n,) for dropout_add; a bias's x has rows (about n of them in all)."""
    if operation == "dropout_add":
        return (n,)
    return (3, n) if n < TWO_THREAD_SIZE else (n // 101 + 1, 101)


def composition_cases(sizes):
    """(operation, dtype form, n, offset, p) to check: every axis whole, not their product.

    Each dtype meets every size, with the (offset, p) pairs taken in turn (the kernels
    differ by dtype and by where a size ends in a word); every (offset, p) pair meets
    every size at float32 (the mask's word alignment and the p = 0 and 1 cases).
    """
    pairs = list(itertools.product(OFFSETS, PS))
    for operation in OPERATIONS:
        for form_index, form in enumerate(dtype_forms()):
            for size_index, n in enumerate(sizes):
                offset, p = pairs[(form_index * len(sizes) + size_index) % len(pairs)]
                yield operation, form, n, offset, p
        float32 = next(form for form in dtype_forms() if form[0] == "float32")
        for n in sizes:
            for offset, p in pairs:
                yield operation, float32, n, offset, p


def test_fused_is_the_unfused_composition(any_backend, threads, subtests):
    compiled = any_backend != "numpy"  # the reference runs no threads
    sizes = SIZES + ((TWO_THREAD_SIZE,) if compiled else ())
    for thread_count in (1, 2) if compiled else (1,):
        fastdrop.set_num_threads(thread_count)
        for operation, (name, dtype, request), n, offset, p in composition_cases(sizes):
            if name != "float32" and numba_twin(any_backend, thread_count):
                continue  # one thread checks every dtype (`dtypes_on`)
            shape = shape_of(operation, n)
            x, bias, residual = inputs(shape, dtype, request)
            with subtests.test(threads=thread_count, operation=operation, dtype=name,
                               shape=shape, offset=offset, p=p):
                keys = dict(seed=SEED, stream=STREAM, offset=offset)
                with unchanged(x, bias, residual):
                    y, mask = fused(operation, x, bias, residual, p, dtype=request,
                                    backend=any_backend, **keys)
                expected, expected_mask = composition(operation, x, bias, residual, p,
                                                      any_backend, request, **keys)
                assert_bits_equal(y, expected)
                assert_same_record(mask, expected_mask)
                assert_bits_equal(mask.words, reference.bernoulli_mask(x.size, p, **keys))


def special_values(dtype):
    """x, bias and residual: every triple of signed zeros, finite values, infinities and NaN.

    No sum meets two NaNs (x + bias with both NaN; x + bias NaN, inf - inf included, with
    a NaN residual), since which of two NaNs a sum returns is the hardware's choice
    (docs/mask-stream.md, section 11); a negative NaN appears alone.
    """
    values = [0.0, -0.0, 1.5, -2.0, 65504.0, np.inf, -np.inf, np.nan]
    with np.errstate(invalid="ignore"):
        triples = [(x, bias, residual)
                   for x, bias, residual in itertools.product(values, repeat=3)
                   if not (np.isnan(x) and np.isnan(bias))
                   and not (np.isnan(x + bias) and np.isnan(residual))]
    triples += [(-np.nan, 1.5, 0.5), (1.5, -np.nan, -np.inf), (0.0, 1.0, -np.nan)]
    with np.errstate(over="ignore"):  # 65504 overflows bfloat16's neighbours: fine
        return tuple(np.array(column).astype(dtype) for column in zip(*triples))


def test_special_values_add_as_numpy_adds_them(any_backend, subtests):
    """inf - inf, NaN, -0.0 + +0.0, overflow: the composition's bits."""
    for operation in OPERATIONS:
        for name, dtype, _ in dtype_forms():
            if dtype == np.uint16:
                continue  # the bits form is the same kernel as ml_dtypes' bfloat16
            x, bias, residual = special_values(dtype)
            for p in (0.0, 0.5):  # 0.5 drops about half: dropped lanes add +0.0
                with subtests.test(operation=operation, dtype=name, p=p):
                    y, _ = fused(operation, x, bias, residual, p, seed=3, backend=any_backend)
                    expected, _ = composition(operation, x, bias, residual, p, any_backend,
                                              seed=3)
                    assert_bits_equal(y, expected)


def test_every_simd_level_gives_the_composition(threads, subtests):
    """The portable and the AVX2 kernels (the CPU's best, capped) give the same bits."""
    if "cython" not in fastdrop.available_backends():
        pytest.skip("the cython backend is not here")
    from fastdrop.kernels.cython import kernels

    level = kernels.simd_enabled()
    fastdrop.set_num_threads(2)
    try:
        for operation in OPERATIONS:
            for name, dtype, request in dtype_forms():
                # whole words, a part word, bias rows that start inside a word
                shape = (5, 197) if operation == "bias_dropout_add" else (TWO_THREAD_SIZE,)
                x, bias, residual = inputs(shape, dtype, request)
                expected, _ = composition(operation, x, bias, residual, 0.3, "cython", request,
                                          seed=SEED, stream=STREAM, offset=5)
                for simd in sorted({0, min(level, 1), level}):
                    with subtests.test(operation=operation, dtype=name, simd=simd):
                        kernels.set_simd(simd)
                        y, _ = fused(operation, x, bias, residual, 0.3, dtype=request,
                                     backend="cython", seed=SEED, stream=STREAM, offset=5)
                        assert_bits_equal(y, expected)
    finally:
        kernels.set_simd(level)


def test_layouts_in_place_and_out(any_backend, subtests):
    """Strided, transposed, 0-d, empty... x, bias and residual; the result new, in out, in place."""
    for operation, kind in itertools.product(OPERATIONS, LAYOUTS):
        if operation == "bias_dropout_add" and kind.name == "0-d":
            continue  # no last axis for a bias (test_bad_input_...)
        for name, dtype, request in dtype_forms()[:2]:  # layouts do not depend on the dtype
            x, _ = kind.make(dtype)
            residual, residual_owner = kind.make(dtype, salt=1)
            bias = sample(x.shape[-1:] or (1,), dtype, salt=2)[::-1]  # a negative stride
            expected, expected_mask = composition(operation, x, bias, residual, 0.3, any_backend,
                                                  request, seed=SEED)
            context = dict(operation=operation, kind=str(kind), dtype=name)
            with subtests.test(target="new", **context):
                y, mask = fused(operation, x, bias, residual, 0.3, seed=SEED, dtype=request,
                                backend=any_backend)
                assert_bits_equal(y, expected)
                assert_same_record(mask, expected_mask)
            with subtests.test(target="out", **context):
                out = np.full(x.shape, 7, dtype)
                y, _ = fused(operation, x, bias, residual, 0.3, seed=SEED, out=out,
                             dtype=request, backend=any_backend)
                assert y is out
                assert_bits_equal(out, expected)
            if not residual.flags.writeable:
                continue
            with subtests.test(target="residual", **context):
                outside = unchanged()
                outside.keep(residual_owner, where=~kind.written())
                with unchanged(x, bias):
                    y, _ = fused(operation, x, bias, residual, 0.3, seed=SEED, inplace=True,
                                 dtype=request, backend=any_backend)
                assert y is residual
                assert_bits_equal(residual.copy(), expected)
                outside.check("inplace wrote outside the residual")


OVERLAPS = {  # name: (x, bias, residual, out) of three arrays a, b, c of 2001 elements
    "out is x": lambda a, b, c: (a[:1000], c[:1000], b[:1000], a[:1000]),
    "out is the residual": lambda a, b, c: (a[:1000], c[:1000], b[:1000], b[:1000]),
    "x and the residual are one array": lambda a, b, c: (a[:1000], c[:1000], a[:1000], b[:1000]),
    "out overlaps x, shifted": lambda a, b, c: (a[1:1001], c[:1000], b[:1000], a[:1000]),
    "out overlaps the residual, shifted": lambda a, b, c: (a[:1000], c[:1000], b[1:1001],
                                                          b[:1000]),
    "out overlaps x backwards": lambda a, b, c: (a[1000:], c[:1001], b[:1001], a[::-1][:1001]),
    "out overlaps the bias": lambda a, b, c: (a[:1000], c[1:1001], b[:1000], c[:1000]),
}


def test_out_may_be_or_overlap_an_input(any_backend, subtests):
    for operation, (name, make) in itertools.product(OPERATIONS, OVERLAPS.items()):
        with subtests.test(operation=operation, case=name):
            x, bias, residual, out = make(*(sample(2001, np.float32, salt) for salt in range(3)))
            expected, _ = composition(operation, x.copy(), bias.copy(), residual.copy(), 0.4,
                                      any_backend, seed=SEED)
            y, _ = fused(operation, x, bias, residual, 0.4, seed=SEED, out=out,
                         backend=any_backend)
            assert y is out
            assert_bits_equal(out, expected)


def test_training_off_adds_and_takes_no_stream(any_backend, subtests):
    for operation, (name, dtype, request) in itertools.product(OPERATIONS, dtype_forms()):
        with subtests.test(operation=operation, dtype=name):
            x, bias, residual = inputs((10, 100), dtype, request)
            generator = fastdrop.Generator(5)
            with unchanged(generator, x, bias, residual):
                y, mask = fused(operation, x, bias, residual, 0.5, seed=generator,
                                training=False, dtype=request, backend=any_backend)
            assert mask is None
            shifted = x if operation == "dropout_add" else numpy_add(x, bias)
            assert_bits_equal(y, numpy_add(residual, shifted))


def test_a_generator_hands_out_one_stream_as_for_dropout(any_backend, subtests):
    x, bias, residual = inputs((3, 100), np.float64, None)
    for operation in OPERATIONS:
        with subtests.test(operation=operation):
            y, mask = fused(operation, x, bias, residual, 0.5, seed=fastdrop.Generator(8),
                            backend=any_backend)
            expected, expected_mask = composition(operation, x, bias, residual, 0.5, any_backend,
                                                  seed=fastdrop.Generator(8))
            assert_bits_equal(y, expected)
            assert_same_record(mask, expected_mask)


def along(operation, arguments, name, direction, grad, backend, step=1e-3):
    """<grad, dy> / (2 step) for y moved along ``direction`` in argument ``name`` (float64)."""
    def y(sign):
        moved = {**arguments, name: arguments[name] + sign * step * direction}
        return fused(operation, moved["x"], moved["bias"], moved["residual"], 0.3, seed=SEED,
                     backend=backend)[0]
    return np.sum(grad * (y(1) - y(-1))) / (2 * step)


def test_backward_against_the_reference_and_derivatives(any_backend, subtests):
    """dy/dx is dropout's backward, dy/dbias its sum over rows, dy/dresidual the identity."""
    rng = np.random.default_rng(4)
    x, residual, grad, direction = (rng.standard_normal((40, 33)) for _ in range(4))
    bias, bias_direction = rng.standard_normal(33), rng.standard_normal(33)
    arguments = dict(x=x, bias=bias, residual=residual)
    for operation in OPERATIONS:
        _, mask = fused(operation, x, bias, residual, 0.3, seed=SEED, backend=any_backend)
        grad_x = fastdrop.dropout_backward(grad, mask, backend=any_backend)
        with subtests.test(operation=operation, check="the reference"):
            assert_bits_equal(grad_x, reference.dropout_backward(grad, mask))
        with subtests.test(operation=operation, check="directional derivatives"):
            assert along(operation, arguments, "x", direction, grad, any_backend) == \
                pytest.approx(np.sum(grad_x * direction), rel=1e-9)
            assert along(operation, arguments, "residual", direction, grad, any_backend) == \
                pytest.approx(np.sum(grad * direction), rel=1e-9)
        if operation == "bias_dropout_add":
            with subtests.test(check="the bias's derivative"):
                grad_x_too, grad_bias = fastdrop.bias_dropout_add_backward(grad, mask,
                                                                           backend=any_backend)
                assert_bits_equal(grad_x_too, grad_x)
                assert along(operation, arguments, "bias", bias_direction, grad, any_backend) \
                    == pytest.approx(np.sum(grad_bias * bias_direction), rel=1e-9)


def test_bias_gradient_is_the_specified_sum(any_backend, subtests):
    """The same bits as the reference, and the exact sum within the rounding it allows.

    float32 accumulation (float64 for float64) over R rows errs by at most R u sum|g|
    (u the accumulator's unit roundoff), then one rounding to the dtype, half its ulp.
    """
    for (name, dtype, request), shape in itertools.product(
            dtype_forms(), [(1, 5), (7, 3, 65), (1000, 33), (0, 4)]):
        with subtests.test(dtype=name, shape=shape):
            x, bias, residual = inputs(shape, dtype, request)
            grad = make(shape, dtype, request, salt=3)
            finite = np.isfinite(grad.view(BFLOAT16) if request else grad)
            grad[~finite] = 0  # a sum with inf or NaN has nothing to bound
            _, mask = fastdrop.bias_dropout_add(x, bias, residual, 0.3, seed=SEED, dtype=request,
                                                backend=any_backend)
            grad_x, grad_bias = fastdrop.bias_dropout_add_backward(grad, mask, dtype=request,
                                                                   backend=any_backend)
            expected_x, expected_bias = reference.bias_dropout_add_backward(grad, mask,
                                                                            dtype=request)
            assert_bits_equal(grad_x, expected_x)
            assert_bits_equal(grad_bias, expected_bias)
            values = (grad_x.view(BFLOAT16) if request else grad_x).astype(np.float64)
            values = values.reshape(-1, shape[-1])
            exact = np.array([math.fsum(column) for column in values.T])
            result = (grad_bias.view(BFLOAT16) if request else grad_bias).astype(np.float64)
            unit = np.finfo(np.float64 if dtype == np.float64 else np.float32).eps / 2
            resolution = float(np.finfo(BFLOAT16 if request or dtype == BFLOAT16 else dtype).eps)
            bound = (len(values) * unit * np.abs(values).sum(axis=0)
                     + resolution * np.abs(exact))
            assert np.all(np.abs(result - exact) <= bound)


def bad_calls():
    """(name, error, message, call(x, bias, residual, out, generator, backend))."""
    def dropout_add(x, residual, backend, **options):
        return fastdrop.dropout_add(x, residual, 0.5, backend=backend, **options)

    def bias_dropout_add(x, bias, residual, backend, **options):
        return fastdrop.bias_dropout_add(x, bias, residual, 0.5, backend=backend, **options)

    return [
        ("residual shape", ValueError, "residual has shape (9, 8), expected x's shape (8, 9)",
         lambda x, c, r, o, g, b: dropout_add(x, r.T, b, seed=g)),
        ("residual broadcast", ValueError, "residual has shape (9,)",
         lambda x, c, r, o, g, b: dropout_add(x, r[0], b, seed=g)),
        ("residual dtype", TypeError, "residual has dtype float64, expected x's dtype float32",
         lambda x, c, r, o, g, b: dropout_add(x, r.astype(np.float64), b, seed=g)),
        ("residual integer", TypeError, "residual must be a float16, float32",
         lambda x, c, r, o, g, b: dropout_add(x, np.zeros((8, 9), np.int32), b, seed=g)),
        ("x integer", TypeError, "x must be a float16, float32",
         lambda x, c, r, o, g, b: dropout_add(np.zeros((8, 9), np.int64), r, b, seed=g)),
        ("bits without dtype=", TypeError, "dtype='bfloat16'",
         lambda x, c, r, o, g, b: dropout_add(x.view(np.uint16)[:, :9], r, b, seed=g)),
        ("inplace read-only residual", ValueError, "inplace=True but residual is read-only",
         lambda x, c, r, o, g, b: dropout_add(x, read_only(r), b, seed=g, inplace=True)),
        ("inplace list residual", TypeError, "inplace=True needs a NumPy array for residual",
         lambda x, c, r, o, g, b: dropout_add(x, r.tolist(), b, seed=g, inplace=True)),
        ("inplace and out", ValueError, "pass either inplace=True or out=",
         lambda x, c, r, o, g, b: dropout_add(x, r, b, seed=g, inplace=True, out=o)),
        ("out shape", ValueError, "out has shape (9, 8)",
         lambda x, c, r, o, g, b: dropout_add(x, r, b, seed=g, out=o.T)),
        ("out dtype", TypeError, "out has dtype float64",
         lambda x, c, r, o, g, b: dropout_add(x, r, b, seed=g, out=o.astype(np.float64))),
        ("out read-only", ValueError, "out is read-only",
         lambda x, c, r, o, g, b: dropout_add(x, r, b, seed=g, out=read_only(o))),
        ("p", ValueError, "p=1.5",
         lambda x, c, r, o, g, b: fastdrop.dropout_add(x, r, 1.5, seed=g, out=o, backend=b)),
        ("seed", ValueError, "seed=-1",
         lambda x, c, r, o, g, b: dropout_add(x, r, b, seed=-1, out=o)),
        ("offset", ValueError, "offset",
         lambda x, c, r, o, g, b: dropout_add(x, r, b, seed=g, offset=2**63 - 5, out=o)),
        ("dtype=", TypeError, "dtype='float32'",
         lambda x, c, r, o, g, b: dropout_add(x, r, b, seed=g, dtype="float32", out=o)),
        ("backend", ValueError, "unknown backend 'fast'",
         lambda x, c, r, o, g, b: dropout_add(x, r, "fast", seed=g, out=o)),
        ("bias shape", ValueError, "bias has shape (8,), expected (9,)",
         lambda x, c, r, o, g, b: bias_dropout_add(x, c[:8], r, b, seed=g, out=o)),
        ("bias of x's shape", ValueError, "bias has shape (8, 9), expected (9,)",
         lambda x, c, r, o, g, b: bias_dropout_add(x, r, r, b, seed=g, out=o)),
        ("bias dtype", TypeError, "bias has dtype float16, expected x's dtype float32",
         lambda x, c, r, o, g, b: bias_dropout_add(x, c.astype(np.float16), r, b, seed=g,
                                                   out=o)),
        ("bias integer", TypeError, "bias must be a float16, float32",
         lambda x, c, r, o, g, b: bias_dropout_add(x, np.arange(9), r, b, seed=g, out=o)),
        ("bias on 0-d x", ValueError, "x is 0-d",
         lambda x, c, r, o, g, b: bias_dropout_add(x[0, 0], c, r[0, 0], b, seed=g)),
        ("bias and inplace read-only", ValueError, "inplace=True but residual is read-only",
         lambda x, c, r, o, g, b: bias_dropout_add(x, c, read_only(r), b, seed=g,
                                                   inplace=True)),
        ("backward grad shape", ValueError, "grad has shape (9, 8), expected the mask's",
         lambda x, c, r, o, g, b: fastdrop.bias_dropout_add_backward(o.T, forward_mask(x),
                                                                     backend=b)),
        ("backward mask", TypeError, "mask must be a DropoutMask",
         lambda x, c, r, o, g, b: fastdrop.bias_dropout_add_backward(o, forward_mask(x).words,
                                                                     backend=b)),
        ("backward backend", ValueError, "unknown backend 'fast'",
         lambda x, c, r, o, g, b: fastdrop.bias_dropout_add_backward(o, forward_mask(x),
                                                                     backend="fast")),
    ]


def forward_mask(x):
    return fastdrop.dropout(x, 0.5, seed=1, backend="numpy")[1]


def read_only(array):
    view = array.view()
    view.flags.writeable = False
    return view


def test_bad_input_raises_and_writes_nothing(any_backend, subtests):
    for name, error, message, call in bad_calls():
        with subtests.test(name):
            x, residual = sample((8, 9), np.float32), sample((8, 9), np.float32, salt=1)
            bias, out = sample(9, np.float32, salt=2), np.zeros((8, 9), np.float32)
            generator = fastdrop.Generator(2)
            with unchanged(x, bias, residual, out, generator):
                with pytest.raises(error, match=re.escape(message)):
                    call(x, bias, residual, out, generator, any_backend)


def test_the_docs_page_example_runs():
    """docs/fused.md's Python blocks run as written (their asserts are the claims)."""
    page = Path(__file__).resolve().parent.parent / "docs" / "fused.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace = {}
    exec(compile(blocks[0], "docs/fused.md", "exec"), namespace)  # noqa: S102
    assert namespace["out"] is namespace["residual"]
    exec(compile(blocks[1], "docs/fused.md", "exec"), namespace)  # noqa: S102
    assert namespace["grad_bias"].shape == (64,)
    require("torch", "torch")
    for block in blocks[2:]:  # fastdrop.torch
        exec(compile(block, "docs/fused.md", "exec"), namespace)  # noqa: S102
    assert namespace["bias"].grad.shape == (64,)
