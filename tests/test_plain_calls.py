"""The usual call takes one kernel step, any other call the general path; both give the same bits.

`fastdrop._fastpath` is the one body of the usual call. Where x (or grad) needs no
layout work -- an exact ndarray, C-contiguous, aligned, native float16/32/64, or uint16
bfloat16 bits with ``dtype="bfloat16"``, writeable in place -- and the call has no
``out=``, noise shape or block, it checks the scalars with the general path's own checks
(`fastdrop._checks`, `fastdrop.streams`), takes the stream and makes one kernel call:
the backend's ``dropout_plain`` forward, ``scale_by_mask`` backward. Every other call
takes the general path (`fastdrop._calls`). These tests watch which path each call
takes and compare its result with `fastdrop.reference`; a bad scalar raises the general
path's error from either path, since both run the same check.

Without the extension the one body is not there and every call takes the general path;
the modules it is compiled with (`fastdrop._checks`, `fastdrop.streams`,
`fastdrop.kernels.records`) then run as the plain Python they are written in.
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastdrop
from fastdrop import _api, _backends, _calls, reference
from tests.util import BFLOAT16, Unchanged, bits, numba_twin, sample

SETUP = Path(__file__).resolve().parent.parent / "setup.py"
INSTALLED = Path(fastdrop.__file__).resolve().parent.parent  # where fastdrop/ is imported from
needs_one_step = pytest.mark.skipif(_api.usual_dropout is None,
                                    reason="the Cython extension is not built")
ONE_STEP_BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(
                         not _backends.backend_available(name), reason=f"no {name} backend"))
                     for name in ("cython", "numba")]

USUAL_CASES = [
    # shape, p, seed, stream, offset
    ((1024,), 0.5, 1, None, 0),
    ((3, 5, 7), 0.1, 2**64 - 1, 2**64 - 1, 5),
    ((), 0.3, 9, 4, 63),
    ((0, 4), 0.5, 1, 2, 0),
    ((1000,), 0.0, 3, None, 2**63 - 1000),
    ((130,), 1.0, 3, 8, 64 * 7 + 1),
    ((65,), 1 - 2**-53, 0, 0, 2**40 + 3),
    ((513, 520), 0.1, 2**63 + 5, 2**63, 7),  # 266760 elements: threaded at 2 threads
]

# bfloat16 takes the one step as uint16 bits with dtype="bfloat16" (the PyTorch adapter's
# form, "bfloat16 bits" here); ml_dtypes' arrays take the general path
BITS16 = "bfloat16 bits"
ONE_STEP_FORMS = [np.float16, np.float32, np.float64, BITS16]


def one_thread_unless_float32(backend, form):
    """Numba's other forms on one thread: its parallel twins run float32 alone (`dtypes_on`)."""
    if form is not np.float32 and numba_twin(backend, fastdrop.get_num_threads()):
        fastdrop.set_num_threads(1)


def one_step_sample(shape, form, salt=0):
    """(array, dtype= of the call): a sample of ``form``, bfloat16 bits as uint16."""
    if form == BITS16:
        top_halves = sample(shape, np.float32, salt).view(np.uint32) >> 16  # 0-d: a scalar
        return np.array(top_halves, dtype=np.uint16), "bfloat16"
    return sample(shape, form, salt), None


class Paths:
    """Which path the calls since `reset` took: the one step (and its kernel) or the general.

    It watches the one body's answers, the general path's first step (which the
    reference takes too: reset after computing an expected result) and the one step's
    forward kernel; all are passed through, so results are unchanged.
    """

    def __init__(self, monkeypatch, backend="auto"):
        kernels = _backends.kernels(backend)
        for module, name, counter in ((_api, "usual_dropout", "one_step"),
                                      (_api, "usual_backward", "one_step"),
                                      (kernels, "dropout_plain", "kernel_steps"),
                                      (_calls, "masked", "general"),
                                      (_calls, "stored_mask", "general")):
            monkeypatch.setattr(module, name, self._counting(getattr(module, name), counter))
        self.reset()

    def _counting(self, function, counter):
        def counted(*arguments):
            if counter == "general":  # counted on entry: it may raise
                self.general += 1
            result = function(*arguments)
            if counter != "general" and result is not None:  # the one body's None: declined
                setattr(self, counter, getattr(self, counter) + 1)
            return result
        return counted

    def reset(self):
        self.one_step = self.kernel_steps = self.general = 0

    @property
    def path(self):
        """"one step", "general", or "neither" (a bad call that raised before either)."""
        return {(1, 0): "one step", (0, 1): "general", (0, 0): "neither"}.get(
            (self.one_step, self.general), "both")


def same_mask(mask, expected):
    fields = ("shape", "n", "p", "seed", "stream", "offset")
    return ([getattr(mask, f) for f in fields] == [getattr(expected, f) for f in fields]
            and np.array_equal(mask.words, expected.words))


@needs_one_step
@pytest.mark.parametrize("backend", ONE_STEP_BACKENDS)
@pytest.mark.parametrize("form", ONE_STEP_FORMS, ids=str)
def test_usual_calls_take_one_step_and_give_the_references_bits(monkeypatch, subtests, threads,
                                                                backend, form):
    paths = Paths(monkeypatch, backend)
    one_thread_unless_float32(backend, form)
    for (shape, p, seed, stream, offset), inplace in [(case, inplace) for case in USUAL_CASES
                                                      for inplace in (False, True)]:
        with subtests.test(shape=shape, p=p, offset=offset, inplace=inplace):
            x, request = one_step_sample(shape, form)
            expected, expected_mask = reference.dropout(x, p, seed=seed, stream=stream,
                                                        offset=offset, dtype=request)
            z = x.copy()
            paths.reset()
            y, mask = fastdrop.dropout(z, p, seed=seed, stream=stream, offset=offset,
                                       inplace=inplace, dtype=request, backend=backend)
            assert paths.path == "one step" and paths.kernel_steps == 1
            assert (y is z) == inplace and y.flags.c_contiguous
            assert y.shape == x.shape and y.dtype == x.dtype
            assert np.array_equal(bits(y), bits(expected)) and same_mask(mask, expected_mask)


@needs_one_step
@pytest.mark.parametrize("backend", ONE_STEP_BACKENDS)
@pytest.mark.parametrize("form", ONE_STEP_FORMS, ids=str)
def test_usual_backward_takes_one_step_and_gives_the_references_bits(monkeypatch, subtests,
                                                                     threads, backend, form):
    paths = Paths(monkeypatch, backend)
    one_thread_unless_float32(backend, form)
    for (shape, p, seed, stream, offset), raw, inplace in [
            (case, raw, inplace) for case in USUAL_CASES for raw in (False, True)
            for inplace in (False, True)]:
        with subtests.test(shape=shape, p=p, raw_words=raw, inplace=inplace):
            x, request = one_step_sample(shape, form)
            _, mask = reference.dropout(x, p, seed=seed, stream=stream, offset=offset,
                                        dtype=request)
            grad, _ = one_step_sample(shape, form, salt=1)
            expected = reference.dropout_backward(grad, mask, dtype=request)
            given, given_p = (mask.words, p) if raw else (mask, None)
            argument = grad.copy()
            paths.reset()
            result = fastdrop.dropout_backward(argument, given, p=given_p, inplace=inplace,
                                               dtype=request, backend=backend)
            assert paths.path == "one step"
            assert (result is argument) == inplace and result.shape == grad.shape
            assert np.array_equal(bits(result), bits(expected))


@needs_one_step
@pytest.mark.parametrize("backend", ONE_STEP_BACKENDS)
def test_every_seed_form_takes_the_one_step(monkeypatch, backend):
    paths = Paths(monkeypatch, backend)
    x = sample((1000,), np.float32)
    gen = fastdrop.Generator(12)
    default = fastdrop.default_generator()
    start = default.state["stream"]
    y, mask = fastdrop.dropout(x, 0.3, backend=backend)
    assert paths.path == "one step" and (mask.seed, mask.stream) == (default.seed, start)
    assert np.array_equal(bits(y), bits(reference.dropout(x, 0.3, seed=mask.seed,
                                                          stream=mask.stream)[0]))
    for call in (lambda: fastdrop.dropout(x, 0.3, seed=gen, backend=backend),
                 lambda: gen.dropout(x, 0.3, backend=backend),
                 lambda: fastdrop.dropout(x, 0.3, seed=12, stream=2, backend=backend)):
        paths.reset()
        y, mask = call()
        assert paths.path == "one step"
        assert np.array_equal(bits(y), bits(reference.dropout(x, 0.3, seed=12,
                                                              stream=mask.stream)[0]))
    assert gen.state["stream"] == 2


@needs_one_step
def test_scalars_of_any_accepted_type_take_the_one_step(monkeypatch, subtests):
    """The one step converts its scalars with the general path's checks: NumPy numbers too."""
    paths = Paths(monkeypatch)
    x = sample((200,), np.float32)
    for p, seed, stream, offset in [(np.float64(0.25), 1, None, 0), (np.float32(0.5), 1, 2, 3),
                                    (1, 1, None, 0), (0, 1, None, 0),
                                    (0.3, np.uint64(2**64 - 1), np.int8(3), np.int64(64))]:
        with subtests.test(p=repr(p), seed=repr(seed), stream=repr(stream),
                           offset=repr(offset)):
            paths.reset()
            y, mask = fastdrop.dropout(x, p, seed=seed, stream=stream, offset=offset)
            assert paths.path == "one step"
            expected, expected_mask = reference.dropout(x, p, seed=seed, stream=stream,
                                                        offset=offset)
            assert np.array_equal(bits(y), bits(expected)) and same_mask(mask, expected_mask)
            assert [type(value) for value in (mask.p, mask.seed, mask.stream, mask.offset)] == \
                [float, int, int, int]


BAD_SCALARS = [  # p, seed, stream, offset
    (1.5, 1, None, 0), (float("nan"), 1, None, 0), (-1e-300, 1, None, 0), ("0.5", 1, None, 0),
    (True, 1, None, 0), (0.5, True, None, 0), (0.5, -1, None, 0), (0.5, 2**64, None, 0),
    (0.5, 1.0, None, 0), (0.5, 1, -1, 0), (0.5, 1, 2**64, 0), (0.5, 1, 1.0, 0),
    (0.5, None, 3, 0), (0.5, "generator", 3, 0), (0.5, 1, None, -1),
    (0.5, 1, None, 2**63 - 99), (0.5, 1, None, 1.0), (0.5, 1, None, False),
    (1.5, -1, -1, -1),  # the first check's error: p's
]


@needs_one_step
@pytest.mark.parametrize("inplace", [False, True])
def test_bad_scalars_on_usual_arrays_raise_the_general_paths_errors(monkeypatch, subtests,
                                                                    inplace):
    paths = Paths(monkeypatch)
    x = sample((100,), np.float32)
    for p, seed, stream, offset in BAD_SCALARS:
        with subtests.test(p=repr(p), seed=repr(seed), stream=repr(stream),
                           offset=repr(offset)):
            gen = fastdrop.Generator(4)
            seed = gen if isinstance(seed, str) else seed
            with pytest.raises((TypeError, ValueError)) as general:  # the general path's
                reference.dropout(x, p, seed=seed, stream=stream, offset=offset)
            default_state = fastdrop.default_generator().state
            paths.reset()
            with Unchanged(x, gen), pytest.raises(general.type) as one_step:
                fastdrop.dropout(x, p, seed=seed, stream=stream, offset=offset,
                                 inplace=inplace)
            assert str(one_step.value) == str(general.value)
            assert paths.path == "neither"  # raised in the one body, before any step
            assert fastdrop.default_generator().state == default_state


def not_usual():
    """Valid calls the one step leaves to the general path: (name, x, keywords)."""
    x = sample((40, 30), np.float32)
    read_only = x.copy()
    read_only.flags.writeable = False

    class Subclass(np.ndarray):
        pass

    calls = [
        ("a list", x.tolist(), {}),
        ("Fortran order", np.asfortranarray(x), {}),
        ("a strided view, in place", x.copy()[:, ::2], dict(inplace=True)),
        ("byte-swapped", x.astype(x.dtype.newbyteorder()), {}),
        ("a subclass", x.copy().view(Subclass), {}),
        ("out=", x, dict(out=np.empty_like(x))),
        ("a noise shape", x, dict(noise_shape=(40, 1))),
        ("broadcast_dims", x, dict(broadcast_dims=1)),
        ("a block", x, dict(origin=(40, 0), global_shape=(80, 30))),
        ("training off", x, dict(training=False)),
        ("read-only, not in place", read_only, {}),
    ]
    if BFLOAT16 is not None:
        calls += [("ml_dtypes' bfloat16", x.astype(BFLOAT16), {}),
                  ("dtype=ml_dtypes.bfloat16", x.astype(BFLOAT16).view(np.uint16),
                   dict(dtype=BFLOAT16))]
    return calls


@needs_one_step
def test_other_calls_take_the_general_path_and_give_the_references_bits(monkeypatch, subtests):
    paths = Paths(monkeypatch)
    for name, x, keywords in not_usual():
        with subtests.test(name):
            expected, expected_mask = reference.dropout(np.copy(x), 0.3, seed=5, stream=2,
                                                        offset=9, **dict(keywords, out=None))
            paths.reset()
            y, mask = fastdrop.dropout(x, 0.3, seed=5, stream=2, offset=9, **keywords)
            # read-only arrays are usual when not written: they take the one step
            assert paths.path == ("one step" if name.startswith("read-only") else "general")
            assert np.array_equal(bits(y), bits(expected))
            assert mask is None if expected_mask is None else same_mask(mask, expected_mask)


@needs_one_step
def test_other_bad_calls_raise_the_general_paths_errors(monkeypatch, subtests):
    paths = Paths(monkeypatch)
    x = sample((40, 30), np.float32)
    read_only = x.copy()
    read_only.flags.writeable = False
    bits16, _ = one_step_sample((40, 30), BITS16)
    for name, array, keywords in [
            ("read-only in place", read_only, dict(inplace=True)),
            ("uint16 without dtype=", bits16, {}),
            ("dtype='bfloat16' on float32", x, dict(dtype="bfloat16")),
            ("an integer array", np.arange(10), {}),
            ("dtype='float16'", x, dict(dtype="float16"))]:
        with subtests.test(name):
            with pytest.raises((TypeError, ValueError)) as general:
                reference.dropout(array, 0.5, seed=1, **keywords)
            paths.reset()
            with pytest.raises(general.type, match=re.escape(str(general.value))):
                fastdrop.dropout(array, 0.5, seed=1, **keywords)
            assert paths.path == "general"


def not_usual_backward():
    """(name, grad, mask, p, inplace): backward calls the one step leaves to the general path.

    Only the read-only grad is passed in place (and refused).
    """
    grad = sample((6, 70), np.float32)  # 7 words
    _, mask = reference.dropout(grad, 0.25, seed=3)
    read_only = grad.copy()
    read_only.flags.writeable = False
    noise_mask = reference.dropout(grad, 0.25, seed=3, noise_shape=(6, 1))[1]
    return [
        ("a transposed grad", grad.T.copy().T, mask, None, False),
        ("a subclass", grad.view(np.matrix), mask, None, False),
        ("a noise-shaped mask", grad, noise_mask, None, False),
        ("p given with a DropoutMask", grad, mask, 0.25, False),
        ("strided raw words", grad, np.repeat(mask.words, 2)[::2], 0.25, False),
        ("read-only in place", read_only, mask, None, True),
        ("a mask of another shape", grad, reference.dropout(grad.T, 0.25, seed=3)[1], None,
         False),
        ("raw words without p", grad, mask.words, None, False),
        ("too few raw words", grad, mask.words[:-1], 0.25, False),
        ("int64 raw words", grad, mask.words.view(np.int64), 0.25, False),
        ("float16 bits as uint16", grad.astype(np.float16).view(np.uint16), mask, None, False),
    ]


@needs_one_step
def test_other_backward_calls_take_the_general_path(monkeypatch, subtests):
    paths = Paths(monkeypatch)
    for name, grad, mask, p, inplace in not_usual_backward():
        with subtests.test(name):
            try:
                expected = reference.dropout_backward(grad, mask, p=p, inplace=inplace)
            except (TypeError, ValueError) as error:
                paths.reset()
                with pytest.raises(type(error), match=re.escape(str(error))):
                    fastdrop.dropout_backward(grad, mask, p=p, inplace=inplace)
            else:
                paths.reset()
                result = fastdrop.dropout_backward(grad, mask, p=p, inplace=inplace)
                assert np.array_equal(bits(result), bits(expected))
            assert paths.path == "general"


# ---------------------------------------------------------------- without the extension

def pure_python_sources():
    """{module: source} of the .py files setup.py compiles, read from setup.py itself."""
    return dict(re.findall(r'"(fastdrop[\w.]*)": "(fastdrop/[\w/]*\.py)"', SETUP.read_text()))


def test_the_compiled_python_modules_are_the_ones_the_one_step_uses():
    assert set(pure_python_sources()) == {"fastdrop._checks", "fastdrop.streams",
                                          "fastdrop.kernels.records"}


def as_plain_python(name):
    """The module ``name`` run from its .py source as plain Python, under another name."""
    spec = importlib.util.spec_from_file_location(name + "_as_python",
                                                  INSTALLED / pure_python_sources()[name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def outcome(function, *arguments):
    """What a call gives: its value, or its error's type and message."""
    try:
        return function(*arguments)
    except (TypeError, ValueError, AttributeError) as error:
        return type(error), str(error)


def test_the_checks_give_the_same_as_plain_python(subtests):
    plain = as_plain_python("fastdrop._checks")
    values = [0.5, 0, 1, 1.5, -0.0, float("nan"), np.float32(0.25), np.int64(3), True,
              np.bool_(False), "1", None, 2**63, 2**64 - 1, 2**64, -1, np.uint64(7), 1.0]
    for name in ("check_p", "check_seed", "check_stream"):
        for value in values:
            with subtests.test(check=name, value=repr(value)):
                assert outcome(getattr(plain, name), value) == \
                    outcome(getattr(fastdrop._checks, name), value)
    for offset, n in [(0, 10), (2**63 - 10, 10), (2**63 - 10, 11), (np.int32(5), 3), (-1, 0),
                      (1.0, 0), (False, 0)]:
        with subtests.test(check="check_offset", offset=repr(offset), n=n):
            assert outcome(plain.check_offset, offset, n) == \
                outcome(fastdrop._checks.check_offset, offset, n)


def test_the_streams_work_as_plain_python():
    plain = as_plain_python("fastdrop.streams")
    assert [plain.resolve(5, None), plain.resolve(5, 2**64 - 1), plain.parse(np.uint64(5), 3)] \
        == [(5, 0), (5, 2**64 - 1), (5, 3)]
    source = plain.StreamSource(9)
    assert plain.parse(source, None) is source and plain.resolve(source, None) == (9, 0)
    assert plain.take(plain.parse(source, None)) == (9, 1) and source.state["stream"] == 2
    default = plain.default_source()
    assert plain.resolve(None, None)[0] == default.seed and default.state["stream"] == 1
    compiled_source = fastdrop.Generator(9)
    for seed, stream in [(None, 3), (source, 3), (-1, None), (1, 1.5), ("3", None)]:
        compiled_seed = compiled_source if seed is source else seed
        assert outcome(plain.parse, seed, stream) == \
            outcome(fastdrop.streams.parse, compiled_seed, stream)


def test_the_records_work_as_plain_python():
    plain = as_plain_python("fastdrop.kernels.records")
    from fastdrop.kernels import records
    for name, fields in [("MaskParams", (1, 2, 3, False, 4, 5)), ("NoiseParams", (1, 2, 0.5, 4)),
                         ("BlockRuns", (7, None, None, 3)), ("BroadcastLayout", (None, None))]:
        made, compiled = getattr(plain, name)(*fields), getattr(records, name)(*fields)
        assert repr(made) == repr(compiled)
        assert [getattr(made, field) for field in type(made).__slots__] == list(fields)


def test_without_the_extension_every_call_takes_the_general_path(tmp_path):
    """A fresh interpreter where nothing is built: the .py sources load, the .pyx ones do not."""
    script = tmp_path / "plain.py"
    script.write_text(f"""
import importlib.abc, importlib.util, pathlib, re, sys
root = pathlib.Path({str(INSTALLED)!r})
built = dict(re.findall(r'"(fastdrop[\\w.]*)": "(fastdrop/[\\w/]*\\.pyx?)"',
                        pathlib.Path({str(SETUP)!r}).read_text()))

class Sources(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if built.get(name, "").endswith(".py"):
            return importlib.util.spec_from_file_location(name, root / built[name])

sys.meta_path.insert(0, Sources())
sys.modules.update({{name: None for name, source in built.items() if source.endswith(".pyx")}})
import numpy as np, fastdrop
assert all(sys.modules[name].__file__.endswith(".py") for name in built
           if built[name].endswith(".py")), "a compiled module was loaded"
assert "cython" not in fastdrop.available_backends()
x = np.linspace(-1, 1, 1000, dtype=np.float32)
y, mask = fastdrop.dropout(x, 0.3, seed=2**64 - 1, stream=5, offset=3, backend="numpy")
gen = fastdrop.Generator(7)
z, _ = gen.dropout(x, 0.3, backend="numpy")
assert np.array_equal(fastdrop.dropout_backward(x, mask, backend="numpy"),
                      fastdrop.reference.dropout_backward(x, mask))
try:
    fastdrop.dropout(x, 1.5, seed=1, backend="numpy")
except ValueError as error:
    message = str(error)
print(y.tobytes().hex()[:64], mask.words[:3].tolist(), z[:5].tolist(), gen.state["stream"],
      message)
""")
    plain = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                           timeout=300, env=dict(os.environ, PYTHONPATH=str(INSTALLED)))
    assert plain.returncode == 0, plain.stderr
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    y, mask = reference.dropout(x, 0.3, seed=2**64 - 1, stream=5, offset=3)
    z, _ = reference.dropout(x, 0.3, seed=7, stream=0)
    assert plain.stdout.split(" ", 1)[0] == y.tobytes().hex()[:64]
    assert str(mask.words[:3].tolist()) in plain.stdout and str(z[:5].tolist()) in plain.stdout
    assert plain.stdout.rstrip().endswith("1 p must lie in [0, 1], got p=1.5")
