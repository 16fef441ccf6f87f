"""Fused dropout: ``dropout_add`` is the unfused composition, bit for bit, with dropout's mask.

The expected values are the composition a user would write, in NumPy (ml_dtypes for
bfloat16): ``residual + fastdrop.dropout(x, ...)[0]``. Each backend (the reference
included) is checked against it over every dtype, sizes around word boundaries,
offsets, layouts, in place, ``out=``, one and two threads; the mask against
`fastdrop.dropout`'s; the backward (`dropout_backward` for x, grad for the residual)
against the reference and a directional derivative; bad input against "nothing written".
"""
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
    sample,
    unchanged,
)

SEED, STREAM = 0x0123_4567_89AB_CDEF, 9
SIZES = (1, 63, 64, 65, 1000, 4097)
OFFSETS = (0, 5, 64 * 3 + 61)
PS = (0.0, 0.1, 0.5, 1.0)
TWO_THREAD_SIZE = 2 * MIN_ELEMENTS_PER_THREAD + 77  # large enough to split across two threads


def dtype_forms():
    """(name, dtype, dtype= argument): each float dtype, and bfloat16 as uint16 bit patterns."""
    forms = [(np.dtype(dtype).name, dtype, None) for dtype in FLOAT_DTYPES]
    if BFLOAT16 is not None:
        forms.append(("bfloat16-bits", np.uint16, "bfloat16"))
    return forms


def inputs(shape, dtype, dtype_request):
    """x and a residual of ``shape`` (uint16 bit patterns of bfloat16 samples for the bits form)."""
    if dtype_request is None:
        return sample(shape, dtype), sample(shape, dtype, salt=1)
    return (sample(shape, BFLOAT16).view(np.uint16),
            sample(shape, BFLOAT16, salt=1).view(np.uint16))


def numpy_add(residual, dropped):
    """The user's ``residual + dropped`` in NumPy (bfloat16 bits added as ml_dtypes bfloat16)."""
    with np.errstate(all="ignore"):
        if residual.dtype == np.uint16:
            return (residual.view(BFLOAT16) + dropped.view(BFLOAT16)).view(np.uint16)
        return residual + dropped


def composition(x, residual, p, backend, dtype_request=None, **keys):
    """``residual + dropout(x)`` as two calls: (y, the dropout's mask)."""
    dropped, mask = fastdrop.dropout(x.copy(), p, dtype=dtype_request, backend=backend, **keys)
    return numpy_add(residual.copy(), dropped), mask


def test_dropout_add_is_the_unfused_composition(any_backend, threads, subtests):
    compiled = any_backend != "numpy"  # the reference runs no threads
    sizes = SIZES + ((TWO_THREAD_SIZE,) if compiled else ())
    for thread_count in (1, 2) if compiled else (1,):
        fastdrop.set_num_threads(thread_count)
        for name, dtype, request in dtype_forms():
            for n in sizes:
                x, residual = inputs(n, dtype, request)
                for offset in OFFSETS:
                    for p in PS:
                        with subtests.test(threads=thread_count, dtype=name, n=n, offset=offset,
                                           p=p):
                            keys = dict(seed=SEED, stream=STREAM, offset=offset)
                            with unchanged(x, residual):
                                y, mask = fastdrop.dropout_add(x, residual, p, dtype=request,
                                                               backend=any_backend, **keys)
                            expected, expected_mask = composition(x, residual, p, any_backend,
                                                                  request, **keys)
                            assert_bits_equal(y, expected)
                            assert_same_record(mask, expected_mask)
                            assert_bits_equal(mask.words, reference.bernoulli_mask(n, p, **keys))


def special_values(dtype):
    """x and residual: every pair of signed zeros, finite values, infinities and NaN.

    A NaN of either sign meets only non-NaN values, since which of two NaNs a sum
    returns is the hardware's choice (docs/mask-stream.md, section 11).
    """
    values = [0.0, -0.0, 1.5, -2.0, np.inf, -np.inf, np.nan]
    pairs = [(a, b) for a in values for b in values]
    pairs += [(-np.nan, 1.5), (1.5, -np.nan), (-np.nan, -np.inf), (np.inf, -np.nan)]
    x, residual = np.array(pairs).T
    return x.astype(dtype), residual.astype(dtype)


def test_special_values_add_as_numpy_adds_them(any_backend, subtests):
    """inf - inf, NaN, -0.0 + +0.0: the composition's bits (a NaN pair: both NaNs equal)."""
    for name, dtype, _ in dtype_forms():
        if dtype == np.uint16:
            continue  # the bits form is the same kernel as ml_dtypes' bfloat16
        x, residual = special_values(dtype)
        for p in (0.0, 0.5):  # 0.5 drops about half: dropped lanes add +0.0
            with subtests.test(dtype=name, p=p):
                y, _ = fastdrop.dropout_add(x, residual, p, seed=3, backend=any_backend)
                assert_bits_equal(y, composition(x, residual, p, any_backend, seed=3)[0])


def test_layouts_in_place_and_out(any_backend, subtests):
    """Strided, transposed, 0-d, empty... x and residual; the result into the residual, or out."""
    for kind in LAYOUTS:
        for name, dtype, request in dtype_forms()[:2]:  # layouts do not depend on the dtype
            x, _ = kind.make(dtype)
            residual, residual_owner = kind.make(dtype, salt=1)
            expected, expected_mask = composition(x, residual, 0.3, any_backend, request, seed=SEED)
            with subtests.test(kind=str(kind), dtype=name, target="new"):
                y, mask = fastdrop.dropout_add(x, residual, 0.3, seed=SEED, dtype=request,
                                               backend=any_backend)
                assert_bits_equal(y, expected)
                assert_same_record(mask, expected_mask)
            with subtests.test(kind=str(kind), dtype=name, target="out"):
                out = np.full(x.shape, 7, dtype)
                y, _ = fastdrop.dropout_add(x, residual, 0.3, seed=SEED, out=out, dtype=request,
                                            backend=any_backend)
                assert y is out
                assert_bits_equal(out, expected)
            if not residual.flags.writeable:
                continue
            with subtests.test(kind=str(kind), dtype=name, target="residual"):
                outside = unchanged()
                outside.keep(residual_owner, where=~kind.written())
                with unchanged(x):
                    y, _ = fastdrop.dropout_add(x, residual, 0.3, seed=SEED, inplace=True,
                                                dtype=request, backend=any_backend)
                assert y is residual
                assert_bits_equal(residual.copy(), expected)
                outside.check("inplace wrote outside the residual")


def test_out_may_be_or_overlap_an_input(any_backend, subtests):
    memory = sample(2001, np.float32)
    cases = {  # name: (x, residual, out), views of `memory`'s copies
        "out is x": lambda a, b: (a[:1000], b[:1000], a[:1000]),
        "out is the residual": lambda a, b: (a[:1000], b[:1000], b[:1000]),
        "x and the residual are one array": lambda a, b: (a[:1000], a[:1000], b[:1000]),
        "out overlaps x, shifted": lambda a, b: (a[1:1001], b[:1000], a[:1000]),
        "out overlaps the residual, shifted": lambda a, b: (a[:1000], b[1:1001], b[:1000]),
        "out overlaps x backwards": lambda a, b: (a[1000:], b[:1001], a[::-1][:1001]),
    }
    for name, make in cases.items():
        with subtests.test(name):
            x, residual, out = make(memory.copy(), sample(2001, np.float32, salt=1))
            expected, _ = composition(x.copy(), residual.copy(), 0.4, any_backend, seed=SEED)
            y, _ = fastdrop.dropout_add(x, residual, 0.4, seed=SEED, out=out, backend=any_backend)
            assert y is out
            assert_bits_equal(out, expected)


def test_training_off_adds_and_takes_no_stream(any_backend, subtests):
    for name, dtype, request in dtype_forms():
        with subtests.test(dtype=name):
            x, residual = inputs(1000, dtype, request)
            generator = fastdrop.Generator(5)
            with unchanged(generator, x, residual):
                y, mask = fastdrop.dropout_add(x, residual, 0.5, seed=generator, training=False,
                                               dtype=request, backend=any_backend)
            assert mask is None
            assert_bits_equal(y, numpy_add(residual, x))


def test_a_generator_hands_out_one_stream_as_for_dropout(any_backend):
    x, residual = sample(300, np.float64), sample(300, np.float64, salt=1)
    y, mask = fastdrop.dropout_add(x, residual, 0.5, seed=fastdrop.Generator(8),
                                   backend=any_backend)
    expected, expected_mask = composition(x, residual, 0.5, any_backend,
                                          seed=fastdrop.Generator(8))
    assert_bits_equal(y, expected)
    assert_same_record(mask, expected_mask)


def test_backward_is_dropout_backward_and_the_identity(any_backend, subtests):
    """dy/dx is dropout's backward (reference's bits); a directional derivative agrees."""
    rng = np.random.default_rng(4)
    x, residual, grad, direction = (rng.standard_normal((40, 33)) for _ in range(4))
    _, mask = fastdrop.dropout_add(x, residual, 0.3, seed=SEED, backend=any_backend)
    grad_x = fastdrop.dropout_backward(grad, mask, backend=any_backend)
    with subtests.test("against the reference"):
        assert_bits_equal(grad_x, reference.dropout_backward(grad, mask))
    with subtests.test("a directional derivative"):
        step = 1e-3
        y_plus, _ = fastdrop.dropout_add(x + step * direction, residual, 0.3, seed=SEED,
                                         backend=any_backend)
        y_minus, _ = fastdrop.dropout_add(x - step * direction, residual, 0.3, seed=SEED,
                                          backend=any_backend)
        along_x = np.sum(grad * (y_plus - y_minus)) / (2 * step)
        assert along_x == pytest.approx(np.sum(grad_x * direction), rel=1e-9)
        y_plus, _ = fastdrop.dropout_add(x, residual + step * direction, 0.3, seed=SEED,
                                         backend=any_backend)
        y_minus, _ = fastdrop.dropout_add(x, residual - step * direction, 0.3, seed=SEED,
                                          backend=any_backend)
        along_residual = np.sum(grad * (y_plus - y_minus)) / (2 * step)
        assert along_residual == pytest.approx(np.sum(grad * direction), rel=1e-9)


def bad_calls():
    """(name, error, message, call(x, residual, out, generator, backend))."""
    def dropout_add(x, residual, backend, **options):
        return fastdrop.dropout_add(x, residual, 0.5, backend=backend, **options)

    return [
        ("residual shape", ValueError, "residual has shape (9, 8), expected x's shape (8, 9)",
         lambda x, r, o, g, b: dropout_add(x, r.T, b, seed=g)),
        ("residual broadcast", ValueError, "residual has shape (9,)",
         lambda x, r, o, g, b: dropout_add(x, r[0], b, seed=g)),
        ("residual dtype", TypeError, "residual has dtype float64, expected x's dtype float32",
         lambda x, r, o, g, b: dropout_add(x, r.astype(np.float64), b, seed=g)),
        ("residual integer", TypeError, "residual must be a float16, float32",
         lambda x, r, o, g, b: dropout_add(x, np.zeros((8, 9), np.int32), b, seed=g)),
        ("x integer", TypeError, "x must be a float16, float32",
         lambda x, r, o, g, b: dropout_add(np.zeros((8, 9), np.int64), r, b, seed=g)),
        ("bits without dtype=", TypeError, "dtype='bfloat16'",
         lambda x, r, o, g, b: dropout_add(x.view(np.uint16)[:, :9], r, b, seed=g)),
        ("inplace read-only residual", ValueError, "inplace=True but residual is read-only",
         lambda x, r, o, g, b: dropout_add(x, read_only(r), b, seed=g, inplace=True)),
        ("inplace list residual", TypeError, "inplace=True needs a NumPy array for residual",
         lambda x, r, o, g, b: dropout_add(x, r.tolist(), b, seed=g, inplace=True)),
        ("inplace and out", ValueError, "pass either inplace=True or out=",
         lambda x, r, o, g, b: dropout_add(x, r, b, seed=g, inplace=True, out=o)),
        ("out shape", ValueError, "out has shape (9, 8)",
         lambda x, r, o, g, b: dropout_add(x, r, b, seed=g, out=o.T)),
        ("out dtype", TypeError, "out has dtype float64",
         lambda x, r, o, g, b: dropout_add(x, r, b, seed=g, out=o.astype(np.float64))),
        ("out read-only", ValueError, "out is read-only",
         lambda x, r, o, g, b: dropout_add(x, r, b, seed=g, out=read_only(o))),
        ("p", ValueError, "p=1.5",
         lambda x, r, o, g, b: fastdrop.dropout_add(x, r, 1.5, seed=g, out=o, backend=b)),
        ("seed", ValueError, "seed=-1",
         lambda x, r, o, g, b: dropout_add(x, r, b, seed=-1, out=o)),
        ("offset", ValueError, "offset",
         lambda x, r, o, g, b: dropout_add(x, r, b, seed=g, offset=2**63 - 5, out=o)),
        ("dtype=", TypeError, "dtype='float32'",
         lambda x, r, o, g, b: dropout_add(x, r, b, seed=g, dtype="float32", out=o)),
        ("backend", ValueError, "unknown backend 'fast'",
         lambda x, r, o, g, b: dropout_add(x, r, "fast", seed=g, out=o)),
    ]


def read_only(array):
    view = array.view()
    view.flags.writeable = False
    return view


def test_bad_input_raises_and_writes_nothing(any_backend, subtests):
    for name, error, message, call in bad_calls():
        with subtests.test(name):
            x, residual = sample((8, 9), np.float32), sample((8, 9), np.float32, salt=1)
            out = np.zeros((8, 9), np.float32)
            generator = fastdrop.Generator(2)
            with unchanged(x, residual, out, generator):
                with pytest.raises(error, match=re.escape(message)):
                    call(x, residual, out, generator, any_backend)


def test_the_docs_page_example_runs():
    """docs/fused.md's Python blocks run as written (their asserts are the claims)."""
    page = Path(__file__).resolve().parent.parent / "docs" / "fused.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert blocks
    namespace = {}
    for block in blocks:
        exec(compile(block, "docs/fused.md", "exec"), namespace)  # noqa: S102
    assert namespace["out"] is namespace["residual"]
