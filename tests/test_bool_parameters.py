"""Bool parameters take True, False or a numpy.bool_, and refuse anything else.

``training='no'`` or ``inplace=1`` is a TypeError naming the parameter and the value,
raised before anything is written or a stream taken (PyTorch refuses non-bools too;
unlike PyTorch, ``numpy.bool_`` is taken, as NumPy code produces it). Every public
function with a flag is covered: the registry of tests/util.py, the fused operations,
the Generator's methods, the reference's twins and fastdrop.dask's forward calls; a
signature scan finds any new flag.
"""
import importlib
import inspect

import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from tests.util import REGISTRY, require, unchanged

SHAPE = (2, 3, 4, 5)  # channel functions need three axes or more
NOT_BOOLS = [1, 0, "no", None, 1.0, np.int64(1), [True]]
FLAGS = ("training", "inplace")
FUSED = ("dropout_add", "bias_dropout_add")


def flags_of(entry):
    """The flags a registry entry's function takes: training (forward calls), inplace."""
    return [flag for flag, takes in (("training", entry.forward), ("inplace", entry.inplace))
            if takes]


def fused_call(name, arrays, backend, **options):
    """``fastdrop.<name>`` on ``arrays``' x, bias and residual (backend None: the reference)."""
    x, bias, residual = arrays
    operands = (x, residual) if name == "dropout_add" else (x, bias, residual)
    if backend is None:
        return getattr(reference, name)(*operands, 0.5, **options)
    return getattr(fastdrop, name)(*operands, 0.5, backend=backend, **options)


def fresh_arrays():
    rng = np.random.default_rng(0)
    return (rng.uniform(1.0, 2.0, SHAPE).astype(np.float32),
            rng.uniform(1.0, 2.0, SHAPE[-1:]).astype(np.float32),
            rng.uniform(1.0, 2.0, SHAPE).astype(np.float32))


def assert_refused(subtests, label, call, arguments, flag, bad, kept, **keywords):
    """``call(*arguments, flag=bad, **keywords)`` raises TypeError naming ``flag`` and ``bad``.

    It leaves the arrays and Generators of ``kept`` as they were.
    """
    with subtests.test(f"{label} {flag}={bad!r}"):
        with unchanged(*kept) as before:
            with pytest.raises(TypeError) as raised:
                call(*arguments, **keywords, **{flag: bad})
        assert str(raised.value) == f"{flag} must be a bool, got {bad!r}"
        before.check("a non-bool flag wrote an array or took a stream")


def calls_with_a_flag(backend):
    """``(label, flag, call(arrays, generator, **flag))`` of every public function with a flag."""
    calls = []
    for entry in REGISTRY:
        for flag in flags_of(entry):
            calls.append((entry.name, flag, lambda a, g, e=entry, **kw: e.call(
                a[0], backend, **(dict(seed=g, stream=None) if e.draws_stream else {}), **kw)))
    for name in FUSED:
        for flag in FLAGS:
            calls.append((name, flag, lambda a, g, n=name, **kw: fused_call(n, a, backend,
                                                                             seed=g, **kw)))
    for method in ("dropout", "channel_dropout", "alpha_dropout", "feature_alpha_dropout",
                   "gaussian_dropout", "dropconnect"):
        for flag in FLAGS if method != "dropconnect" else ("training",):
            calls.append((f"Generator.{method}", flag, lambda a, g, m=method, **kw: getattr(
                g, m)(a[0], 0.5, backend=backend, **kw)))
    return calls


@pytest.mark.parametrize("backend", fastdrop.available_backends())
def test_non_bool_flags_are_refused_before_anything_happens(backend, subtests):
    for label, flag, call in calls_with_a_flag(backend):
        for bad in NOT_BOOLS:
            arrays, generator = fresh_arrays(), fastdrop.Generator(7)
            assert_refused(subtests, label, call, (arrays, generator), flag, bad,
                           (*arrays, generator, fastdrop.default_generator()))


@pytest.mark.parametrize("backend", fastdrop.available_backends())
def test_numpy_bools_act_as_bools(backend, subtests):
    """np.True_ and np.False_ give what True and False give, bit for bit, and take a stream."""
    for label, flag, call in calls_with_a_flag(backend):
        for value in (True, False):
            with subtests.test(f"{label} {flag}=np.{value}_"):
                arrays, numpy_arrays = fresh_arrays(), fresh_arrays()
                generator, numpy_generator = fastdrop.Generator(7), fastdrop.Generator(7)
                expected = call(arrays, generator, **{flag: value})
                result = call(numpy_arrays, numpy_generator, **{flag: np.bool_(value)})
                expected, result = (np.asarray(r[0] if isinstance(r, tuple) else r)
                                    for r in (expected, result))
                assert np.array_equal(result, expected)
                assert all(np.array_equal(a, b) for a, b in zip(arrays, numpy_arrays))
                assert numpy_generator.state == generator.state


def test_the_reference_twins_refuse_non_bools(subtests):
    calls = [(entry.name, flag, lambda a, g, e=entry, **kw: e.reference(
        a[0], **(dict(seed=g, stream=None) if e.draws_stream else {}), **kw))
        for entry in REGISTRY for flag in flags_of(entry)]
    calls += [(name, flag, lambda a, g, n=name, **kw: fused_call(n, a, None, seed=g, **kw))
              for name in FUSED for flag in FLAGS]
    for label, flag, call in calls:
        for bad in ("no", 1, None):
            arrays, generator = fresh_arrays(), fastdrop.Generator(7)
            assert_refused(subtests, label, call, (arrays, generator), flag, bad,
                           (*arrays, generator))


@pytest.mark.parametrize("backend", fastdrop.available_backends())
def test_dask_forward_calls_refuse_non_bools(backend, subtests):
    da = require("dask.array", "dask")
    import fastdrop.dask

    for name in ("dropout", "channel_dropout", "alpha_dropout", "feature_alpha_dropout",
                 "gaussian_dropout"):
        for bad in ("no", 1, None):
            x, _, out = fresh_arrays()
            generator = fastdrop.Generator(7)
            assert_refused(subtests, f"dask.{name}", getattr(fastdrop.dask, name),
                           (da.from_array(x, chunks=(1, 3, 4, 5)), 0.5), "training", bad,
                           (x, out, generator), seed=generator, out=out, backend=backend)


def public_functions():
    """(name, function) of every public function and Generator method of fastdrop.

    fastdrop.dask's where the dask extra is installed (its functions import dask).
    """
    found = [(name, getattr(fastdrop, name)) for name in fastdrop.__all__]
    found += [(f"reference.{name}", value) for name, value in vars(reference).items()
              if not name.startswith("_") and inspect.isfunction(value)]
    try:
        dask_functions = importlib.import_module("fastdrop.dask")
    except ImportError:
        pass
    else:
        found += [(f"dask.{name}", getattr(dask_functions, name))
                  for name in dask_functions.__all__]
    found += [(f"Generator.{name}", value) for name, value in vars(fastdrop.Generator).items()
              if not name.startswith("_") and inspect.isfunction(value)]
    return [(name, value) for name, value in found if inspect.isfunction(value)]


def test_every_flag_is_one_the_tests_above_cover():
    """A parameter with a bool default is training or inplace: a new flag needs its cases."""
    other = [f"{name}({parameter.name})" for name, function in public_functions()
             for parameter in inspect.signature(function).parameters.values()
             if isinstance(parameter.default, bool) and parameter.name not in FLAGS]
    assert other == []


def test_fastdrop_torch_refuses_a_non_bool_training_as_torch_does(subtests):
    """fastdrop.torch follows torch here: its functions take only a bool ``training``."""
    torch = require("torch", "torch")
    import torch.nn.functional as F

    import fastdrop.torch as ft

    for name in ("dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
                 "feature_alpha_dropout"):
        x = torch.ones(2, 3, 4, 5) if name != "dropout1d" else torch.ones(2, 3, 4)
        before = x.clone()
        for value in (1, "no", None, np.True_):
            with subtests.test(function=name, training=value):
                with pytest.raises(TypeError):  # torch's own refusal: the reference
                    getattr(F, name)(x, 0.5, training=value)
                with pytest.raises(TypeError, match="must be bool"):
                    getattr(ft, name)(x, 0.5, training=value, inplace=True)
                assert torch.equal(x, before)
