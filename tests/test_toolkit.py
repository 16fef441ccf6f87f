"""The test toolkit (tests/util.py) does what the property tests rely on.

Its registry covers every public function that takes arrays or draws masks, each with a
`fastdrop.reference` twin of the same signature, so a new function cannot be left out of
the property tests; its awkward arrays are as awkward as they say; its snapshot notices
a write.
"""
import inspect
from pathlib import Path

import numpy as np
import pytest

import fastdrop
from fastdrop import reference
from tests.util import AWKWARD, AWKWARD_BY_NAME, FLOAT_DTYPES, REGISTRY, sample, unchanged

REPO = Path(__file__).resolve().parent.parent
# Names of fastdrop.__all__ that are not registry functions, and why.
NOT_IN_REGISTRY = {
    "DropoutMask": "a record class (tested through the functions returning it)",
    "GaussianNoise": "a record class (tested through the functions returning it)",
    "Generator": "hands out streams; its methods call the registry's functions",
    "StreamSource": "hands out streams (tests/test_generator.py), takes no arrays",
    "default_generator": "returns the default stream source",
    "available_backends": "lists backends, takes no arrays",
    "get_include": "a path",
    "get_num_threads": "a setting",
    "num_threads": "a setting, for a with-block",
    "set_num_threads": "a setting",
    "pack_mask": "one NumPy implementation, no backend (tests/test_mask_stream.py)",
    "unpack_mask": "one NumPy implementation, no backend (tests/test_mask_stream.py)",
    "philox4x32_10": "the block function, known answers in tests/test_philox.py",
    "reference": "the twins themselves",
    "dropout_add": "two arrays, in place into the second: tests/test_fused.py (below)",
    "bias_dropout_add": "three arrays, in place into the third: tests/test_fused.py (below)",
    "bias_dropout_add_backward": "returns two arrays: tests/test_fused.py (below)",
    "softmax_dropout": "values within an ulp bound, not bits: tests/test_softmax_dropout.py",
    "softmax_dropout_backward": "three arrays in: tests/test_softmax_dropout.py (below)",
}
# Functions with a backend whose properties the registry cannot state yet (it assumes one
# array, written in place), and the file that tests them instead.
TESTED_ELSEWHERE = {name: "tests/test_fused.py"
                    for name in ("dropout_add", "bias_dropout_add", "bias_dropout_add_backward")}
TESTED_ELSEWHERE.update({name: "tests/test_softmax_dropout.py"
                         for name in ("softmax_dropout", "softmax_dropout_backward")})


def test_every_public_name_is_a_registry_function_or_listed_as_not_one():
    in_registry = {entry.function for entry in REGISTRY}
    for name in fastdrop.__all__:
        assert (name in in_registry) != (name in NOT_IN_REGISTRY), \
            f"fastdrop.{name}: add it to tests/util.py's REGISTRY (or say here why not)"
    assert set(NOT_IN_REGISTRY) <= set(fastdrop.__all__), "a name listed here is gone"


def test_every_function_with_a_backend_argument_is_in_the_registry():
    """What takes a backend takes arrays or draws masks: it must be in the registry."""
    in_registry = {entry.function for entry in REGISTRY}
    for name in fastdrop.__all__:
        value = getattr(fastdrop, name)
        if inspect.isfunction(value) and "backend" in inspect.signature(value).parameters:
            assert name in in_registry or name in TESTED_ELSEWHERE, name
    for name, path in TESTED_ELSEWHERE.items():
        assert name in NOT_IN_REGISTRY and (REPO / path).is_file(), (name, path)


@pytest.mark.parametrize("name", sorted({entry.function for entry in REGISTRY}))
def test_each_function_has_a_reference_twin_with_its_signature(name):
    """Every parameter but backend, with its kind and default, is the twin's too."""
    public = inspect.signature(getattr(fastdrop, name)).parameters
    twin = inspect.signature(getattr(reference, name)).parameters
    assert name in reference.__all__
    for parameter_name, parameter in public.items():
        if parameter_name == "backend":
            continue
        assert parameter_name in twin, (name, parameter_name)
        assert (twin[parameter_name].kind, twin[parameter_name].default) == \
            (parameter.kind, parameter.default), (name, parameter_name)


@pytest.mark.parametrize("entry", REGISTRY, ids=str)
def test_each_entry_describes_its_function(entry):
    """The fields the property tests rely on say what the function does."""
    parameters = inspect.signature(getattr(fastdrop, entry.function)).parameters
    assert ("inplace" in parameters) == entry.inplace
    assert ("out" in parameters) == entry.out
    assert ("training" in parameters) == entry.forward
    assert list(parameters)[0] == entry.input
    x = AWKWARD[0].make(np.float32)[0] if entry.takes_array else 100
    result = entry.call(x, "numpy")
    record = entry.record(result)
    if entry.returns == "array and DropoutMask":
        assert isinstance(record, fastdrop.DropoutMask)
        assert record.shape == entry.mask_shape(x.shape)
    elif entry.returns == "array and GaussianNoise":
        assert isinstance(record, fastdrop.GaussianNoise)
    else:
        assert record is None
    output = entry.output(result)
    if entry.returns == "mask words":
        assert output.dtype == np.uint64
    elif entry.returns == "noise":
        assert output.dtype == np.float64 and output.shape == (100,)
    else:
        assert output.shape == x.shape and output.dtype == x.dtype
    if entry.draws_stream:
        generator = fastdrop.Generator(5)
        entry.call(x, "numpy", seed=generator, stream=None)
        assert generator.state["stream"] == 1


def test_every_float_dtype_is_taken():
    for dtype in FLOAT_DTYPES:
        y, _ = fastdrop.dropout(np.ones(3, dtype), 0.5, seed=1)
        assert y.dtype == dtype


def test_the_awkward_arrays_are_what_their_names_say():
    made = {kind.name: kind.make(np.float32) for kind in AWKWARD}
    assert made["C"][0].flags.c_contiguous
    assert made["F"][0].flags.f_contiguous and not made["F"][0].flags.c_contiguous
    for name in ("transposed", "strided", "negative-step-3", "column", "4-d-view"):
        x, owner = made[name]
        assert not x.flags.c_contiguous and not x.flags.f_contiguous, name
        assert np.shares_memory(x, owner), name
    assert {-4, -12} & {s for s in made["strided"][0].strides}  # a negative step
    assert made["negative-step-3"][0].strides == (-12,)
    assert made["4-d-view"][0].ndim == 4
    assert made["0-d"][0].ndim == 0 and np.shares_memory(*made["0-d"])
    assert made["empty"][0].size == 0
    assert not made["read-only"][0].flags.writeable
    for n in (0, 1, 63, 64, 65):
        assert made[f"size-{n}"][0].shape == (n,)
    assert made["size-2**20+3"][0].shape == (2**20 + 3,)
    for kind in AWKWARD:
        assert kind.shape == made[kind.name][0].shape
        assert kind.written().sum() == made[kind.name][0].size
    assert AWKWARD_BY_NAME["size-2**20+3"].large


def test_every_dtype_is_made():
    for dtype in FLOAT_DTYPES:
        for kind in AWKWARD:
            assert kind.make(dtype)[0].dtype == dtype


def test_samples_hold_the_special_values_and_repeat():
    x = sample(1000, np.float64)
    assert np.isposinf(x[2]) and np.isneginf(x[3]) and np.isnan(x[4])
    assert x[0] == 0 and not np.signbit(x[0]) and x[1] == 0 and np.signbit(x[1])
    assert np.array_equal(x, sample(1000, np.float64), equal_nan=True)
    assert not np.array_equal(x, sample(1000, np.float64, salt=1), equal_nan=True)
    x[5] = 7.0  # a fresh copy: the next sample is not changed
    assert sample(1000, np.float64)[5] != 7.0


def test_the_snapshot_notices_a_write_and_a_drawn_stream():
    x, owner = AWKWARD_BY_NAME["strided"].make(np.float64)
    mask = fastdrop.dropout(np.ones(100), 0.5, seed=1)[1]
    generator = fastdrop.Generator(3)
    snapshot = unchanged(x, mask, generator)
    assert not snapshot.changed()
    x[0, 0, 0] = 5.0
    mask.words[1] ^= np.uint64(1)
    generator.reserve_stream()
    assert len(snapshot.changed()) == 3
    with pytest.raises(AssertionError):
        snapshot.check()
    # where= checks only some elements
    written = AWKWARD_BY_NAME["strided"].written()
    snapshot = unchanged()
    snapshot.keep(owner, where=~written)
    x[...] = 1.0
    snapshot.check()
    owner.reshape(-1)[np.flatnonzero(~written.reshape(-1))[0]] = 9.0
    assert snapshot.changed()
