"""Edges a careful user hits: array subclasses, byte order, counts, fork, the GIL, mask shapes.

One regression test per defect of the project's issue 20 (the command-line defects
are in test_cli_arguments.py); each failed before its fix.
"""
import os
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

import fastdrop
from fastdrop import nn
from tests.util import ALL_BACKENDS, COMPILED_BACKENDS, bits, registry, sample


def in_place_entries():
    return registry(where=lambda entry: entry.inplace)


BLOCK = (3, 4, 5)


def subclass_instances():
    """(name, make): ndarray subclasses a user passes, each a fresh float32 array."""
    def matrix():
        return np.matrix(sample((6, 7), np.float32))

    def memmap():
        handle = tempfile.NamedTemporaryFile(suffix=".dat", delete=False)
        handle.close()
        mapped = np.memmap(handle.name, dtype=np.float32, mode="w+", shape=BLOCK)
        mapped[...] = sample(BLOCK, np.float32)
        return mapped

    class Tagged(np.ndarray):
        pass

    return [("matrix", matrix), ("memmap", memmap),
            ("a subclass of our own", lambda: sample(BLOCK, np.float32).view(Tagged))]


# The subclass and masked-array tests run per backend (the reference's functions are a
# route of their own); the functions and subclasses share that route and loop inside.


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_in_place_on_a_subclass_returns_x_itself_with_the_plain_arrays_values(backend, subtests):
    for entry in in_place_entries():
        for name, make in subclass_instances():
            x = make()
            if not entry.accepts(x.shape):
                continue
            with subtests.test(entry=entry.name, subclass=name):
                expected = entry.output(entry.call(np.asarray(x).copy(), backend))
                result = entry.output(entry.call(x, backend, inplace=True))
                assert result is x and type(result) is type(x)
                assert np.array_equal(bits(np.asarray(x)), bits(expected))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_out_of_a_subclass_is_returned_itself(backend, subtests):
    class Tagged(np.ndarray):
        pass

    x = sample(BLOCK, np.float32)
    for entry in registry(where=lambda entry: entry.out):
        with subtests.test(entry=entry.name):
            out = np.zeros(BLOCK, np.float32).view(Tagged)
            result = entry.output(entry.call(x, backend, out=out))
            assert result is out
            assert np.array_equal(bits(np.asarray(out)),
                                  bits(entry.output(entry.call(x, backend))))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_masked_arrays_are_refused_not_silently_unmasked(backend, subtests):
    data = sample(BLOCK, np.float32)
    for entry in registry(where=lambda entry: entry.takes_array):
        with subtests.test(entry=entry.name):
            x = np.ma.masked_array(data.copy(), mask=np.arange(60).reshape(BLOCK) % 5 == 0)
            with pytest.raises(TypeError, match=r"MaskedArray.*\.data.*filled"):
                entry.call(x, backend)
            assert np.array_equal(bits(x.data), bits(data))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [">f2", ">f4", ">f8"])
def test_byte_swapped_floats_are_computed_in_native_order(dtype, backend):
    native = sample((9, 11), np.dtype(dtype).newbyteorder("="))
    swapped = native.astype(dtype)
    expected, mask = fastdrop.dropout(native, 0.3, seed=3, backend=backend)
    y, swapped_mask = fastdrop.dropout(swapped, 0.3, seed=3, backend=backend)
    assert y.dtype.isnative and np.array_equal(bits(y), bits(expected))
    assert np.array_equal(swapped_mask.words, mask.words)
    result, _ = fastdrop.dropout(swapped, 0.3, seed=3, inplace=True, backend=backend)
    assert result is swapped and result.dtype == np.dtype(dtype)
    assert np.array_equal(bits(swapped.astype(native.dtype)), bits(expected))
    grad = fastdrop.dropout_backward(native.astype(dtype), mask, backend=backend)
    assert np.array_equal(bits(grad), bits(fastdrop.dropout_backward(native, mask,
                                                                     backend=backend)))


def test_counts_follow_one_rule_everywhere(subtests):
    """unpack_mask's n is checked as bernoulli_mask's and gaussian_noise's are."""
    words = fastdrop.bernoulli_mask(100, 0.5, seed=1)
    for n in (100.7, "100", True, None, 100.0):
        with subtests.test(n=n):
            for call in (lambda count: fastdrop.unpack_mask(words, count),
                         lambda count: fastdrop.bernoulli_mask(count, 0.5, seed=1),
                         lambda count: fastdrop.gaussian_noise(count, 0.5, seed=1)):
                with pytest.raises(TypeError, match="n must be an integer"):
                    call(n)
    assert fastdrop.unpack_mask(words, np.int64(100)).shape == (100,)


def test_nn_dropout_returns_a_tensor_with_training_off_too():
    x = np.ones((3, 4), np.float32)
    for training in (True, False):
        y, _ = nn.dropout(x, 0.5, seed=1, stream=0, training=training)
        assert isinstance(y, nn.Tensor), training
    y, mask = nn.dropout(x, 0.5, seed=1, stream=0, training=False)
    assert mask is None and np.array_equal(y.data, x)


def masks_of_forked_children(seed, children=2):
    """The mask words each of ``children`` forked processes draws with ``seed``."""
    readers = []
    for _ in range(children):
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: one dropout, its words to the pipe, and out
            try:
                _, mask = fastdrop.dropout(np.ones(4096, np.float32), 0.5, seed=seed)
                os.write(write_end, mask.words.tobytes())
            finally:
                os._exit(0)
        os.close(write_end)
        readers.append((pid, read_end))
    masks = []
    for pid, read_end in readers:
        with os.fdopen(read_end, "rb") as reader:
            masks.append(reader.read())
        os.waitpid(pid, 0)
    return masks


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX")
def test_forked_children_get_their_own_default_source():
    fastdrop.dropout(np.ones(8, np.float32), 0.5)  # the parent's default source exists
    first, second = masks_of_forked_children(seed=None)
    assert len(first) == 4096 // 8 and first != second
    assert masks_of_forked_children(seed=7) == [masks_of_forked_children(seed=7, children=1)[0]] * 2


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX")
def test_a_forked_generator_hands_out_the_same_streams():
    """An explicit Generator is a value: a forked copy continues from the same state."""
    gen = fastdrop.Generator(5)
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, gen.dropout(np.ones(256, np.float32), 0.5)[1].words.tobytes())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as reader:
        child = reader.read()
    os.waitpid(pid, 0)
    assert gen.dropout(np.ones(256, np.float32), 0.5)[1].words.tobytes() == child


@pytest.mark.parametrize("backend", COMPILED_BACKENDS)
def test_kernels_let_other_python_threads_run(backend, threads):
    """While a kernel runs, another Python thread runs too: the kernels release the GIL.

    Counting, not timing: with the interpreter's switch interval far longer than the
    test, this thread keeps the GIL between its two reads of the counter unless a
    kernel releases it, so a kernel that held it would leave the count unchanged in
    every try (a few tries: the other thread may not get a core during one call).
    """
    fastdrop.set_num_threads(1)
    x = np.ones(1 << 24, np.float32)
    calls = (lambda: fastdrop.dropout(x, 0.1, seed=1, inplace=True, backend=backend),
             lambda: fastdrop.dropout_backward_recompute(x, 0.1, seed=1, stream=0, inplace=True,
                                                         backend=backend),
             lambda: fastdrop.gaussian_dropout(x, 0.1, seed=1, inplace=True, backend=backend))
    for call in calls:
        call()  # compiled (Numba), pages touched
    counter, running = [0], [True]

    def spin():
        while running[0]:
            counter[0] += 1
            if counter[0] % 1000 == 0:
                time.sleep(0)  # lets the test's thread take the GIL back

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(30.0)
    spinner = threading.Thread(target=spin)
    try:
        spinner.start()
        while counter[0] == 0:
            time.sleep(0.001)
        steps = []
        for call in calls:
            progress = 0
            for _ in range(20):
                before = counter[0]
                call()
                progress = max(progress, counter[0] - before)
                if progress:
                    break
            steps.append(progress)
    finally:
        running[0] = False
        spinner.join()
        sys.setswitchinterval(switch_interval)
    assert min(steps) > 0, steps


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_mask_applies_to_its_own_shape_only(backend):
    x = sample((2, 3), np.float32)
    _, mask = fastdrop.dropout(x, 0.5, seed=1, backend=backend)
    grad = sample((3, 2), np.float32)
    before = grad.copy()
    with pytest.raises(ValueError, match=r"shape \(2, 3\) does not match .*\(3, 2\)"):
        fastdrop.dropout_backward(grad, mask, backend=backend)
    with pytest.raises(ValueError, match="does not match"):
        fastdrop.apply_mask(grad, mask, inplace=True, backend=backend)
    assert np.array_equal(bits(grad), bits(before))
    by_count = fastdrop.dropout_backward(grad, mask.words, p=0.5, backend=backend)  # raw words
    same = fastdrop.dropout_backward(grad.reshape(2, 3), mask, backend=backend).reshape(3, 2)
    assert np.array_equal(bits(by_count), bits(same))
