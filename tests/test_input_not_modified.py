"""No function writes what it only reads: inputs, mask words and gradients stay byte-identical.

One property: every function of the registry (tests/util.py), on every array of the
awkward-array generator, every float dtype and every backend, out of place (a new
array or ``out=``) leaves x -- and the whole array x is a view of -- and the mask
words it is given exactly as they were, and returns memory of its own; in place it
writes x's elements and nothing else (not the rest of the array x is a view of, not
the mask words). A test runs per backend and function (each pair calls other kernel
code); the layouts share that code and loop inside it. The large size runs on the
compiled backends only (the reference has no size-dependent path).
"""
import numpy as np
import pytest

import fastdrop
from tests.util import ALL_BACKENDS, ARRAY_FUNCTIONS, AWKWARD, dtypes_on, unchanged


def kinds_for(backend, entry, kinds=AWKWARD):
    return [kind for kind in kinds
            if entry.accepts(kind.shape) and not (kind.large and backend == "numpy")]


def dtypes_for(backend, kind):
    """Every dtype; the large size (split among threads) in `dtypes_on`'s."""
    return dtypes_on(backend, fastdrop.get_num_threads() if kind.large else 1)


@pytest.mark.parametrize("entry", ARRAY_FUNCTIONS, ids=str)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_out_of_place_writes_no_input(backend, entry, subtests):
    for kind in kinds_for(backend, entry):
        for dtype in dtypes_for(backend, kind):
            with subtests.test(layout=str(kind), dtype=np.dtype(dtype).name):
                x, owner = kind.make(dtype)
                positional, keywords = entry.bind(x)
                with unchanged(owner, *positional, *keywords.values()):
                    y = entry.output(entry.run(backend, positional, keywords))
                assert not np.shares_memory(y, owner), "the result is a view of the input"
                if not entry.out:
                    continue
                out = np.full(x.shape, -7.0, dtype)
                with unchanged(owner, *positional, *keywords.values()):
                    result = entry.run(backend, positional, {**keywords, "out": out})
                assert entry.output(result) is out


@pytest.mark.parametrize("entry", [entry for entry in ARRAY_FUNCTIONS if entry.inplace], ids=str)
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_in_place_writes_only_x(backend, entry, subtests):
    for kind in kinds_for(backend, entry, [kind for kind in AWKWARD if kind.writeable]):
        outside = ~kind.written()
        for dtype in dtypes_for(backend, kind):
            with subtests.test(layout=str(kind), dtype=np.dtype(dtype).name):
                x, owner = kind.make(dtype)
                positional, keywords = entry.bind(x)
                snapshot = unchanged(*positional[1:], *keywords.values())
                snapshot.keep(owner, where=outside)
                with snapshot:
                    result = entry.run(backend, positional, {**keywords, "inplace": True})
                assert entry.output(result) is x
