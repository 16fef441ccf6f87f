"""fastdrop.dask: every chunking, scheduler and re-execution gives the in-memory bits.

A function of fastdrop.dask on a dask array must equal the in-memory function on
``x.compute()``: for 1-, 2- and 4-d arrays cut every way (the last axis at
non-multiples of 64, single elements, uneven last chunks), in every dtype, through every
backend, under the threaded, process and distributed schedulers, and when tasks run again.
Bad input is refused when the function is called, before any task runs, with the
in-memory messages; a failed call takes no stream and writes nothing.
"""
import dataclasses
import math
import os
import pickle
import re
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

import fastdrop
from tests.util import (
    ALL_BACKENDS,
    BFLOAT16,
    FLOAT_DTYPES,
    assert_bits_equal,
    broadcast_dims_of,
    channel_noise,
    for_each,
    require,
    sample,
)

dask = require("dask", "dask")
da = require("dask.array", "dask")
fdd = require("fastdrop.dask", "dask")

P, SEED, STREAM = 0.4, 0x5EED_F00D_0123_4567, 41
BIG_OFFSET = 2**40 + 3


# ------------------------------------------------------------------ the cases

@dataclasses.dataclass(frozen=True)
class Case:
    """A fastdrop.dask function called one way, and the in-memory call it must equal.

    ``lazy(x, backend, offset)`` gives the dask result for a dask array x;
    ``memory(x, offset)`` the in-memory result for x's values.
    """

    name: str
    lazy: Callable
    memory: Callable
    min_ndim: int = 1

    def __str__(self):
        return self.name


def _keys(offset):
    return dict(seed=SEED, stream=STREAM, offset=offset)


def _forward(function, **options):
    """A forward function with the standard arguments (options may depend on the shape)."""
    def lazy(x, backend, offset):
        extra = {key: value(x.shape) for key, value in options.items()}
        return getattr(fdd, function)(x, P, **_keys(offset), **extra, backend=backend)[0]

    def memory(x, offset):
        extra = {key: value(x.shape) for key, value in options.items()}
        return getattr(fastdrop, function)(x, P, **_keys(offset), **extra)[0]
    return lazy, memory


def _recompute(**options):
    def lazy(x, backend, offset):
        extra = {key: value(x.shape) for key, value in options.items()}
        return fdd.dropout_backward_recompute(x, P, **_keys(offset), **extra, backend=backend)

    def memory(x, offset):
        extra = {key: value(x.shape) for key, value in options.items()}
        return fastdrop.dropout_backward_recompute(x, P, **_keys(offset), **extra)
    return lazy, memory


def _from_record(forward, backward, **options):
    """A backward pass reading the forward call's record; x is the input and the gradient."""
    def lazy(x, backend, offset):
        extra = {key: value(x.shape) for key, value in options.items()}
        _, record = getattr(fdd, forward)(x, P, **_keys(offset), **extra)
        return getattr(fdd, backward)(x, record, backend=backend)

    def memory(x, offset):
        extra = {key: value(x.shape) for key, value in options.items()}
        _, record = getattr(fastdrop, forward)(x, P, **_keys(offset), **extra)
        return getattr(fastdrop, backward)(x, record)
    return lazy, memory


def _broadcast_dims(shape):
    return broadcast_dims_of(shape, channel_noise(shape))


CASES = (
    Case("dropout", *_forward("dropout")),
    Case("dropout-noise_shape", *_forward("dropout", noise_shape=channel_noise)),
    Case("dropout-broadcast_dims", *_forward("dropout", broadcast_dims=_broadcast_dims)),
    Case("channel_dropout", *_forward("channel_dropout"), min_ndim=3),
    Case("alpha_dropout", *_forward("alpha_dropout")),
    Case("alpha_dropout-noise_shape", *_forward("alpha_dropout", noise_shape=channel_noise)),
    Case("feature_alpha_dropout", *_forward("feature_alpha_dropout"), min_ndim=3),
    Case("gaussian_dropout", *_forward("gaussian_dropout")),
    Case("dropout_backward_recompute", *_recompute()),
    Case("dropout_backward_recompute-noise_shape", *_recompute(noise_shape=channel_noise)),
    Case("dropout_backward", *_from_record("dropout", "dropout_backward")),
    Case("dropout_backward-channel", *_from_record("channel_dropout", "dropout_backward"),
         min_ndim=3),
    Case("alpha_dropout_backward-noise_shape",
         *_from_record("alpha_dropout", "alpha_dropout_backward", noise_shape=channel_noise)),
    Case("gaussian_dropout_backward", *_from_record("gaussian_dropout",
                                                    "gaussian_dropout_backward")),
)
CASES_BY_NAME = {case.name: case for case in CASES}

# Each shape with its chunkings: whole, single elements, cuts of the last axis at
# non-multiples of 64, uneven last chunks, explicit uneven chunks, shared axes cut.
CHUNKINGS = {
    (300,): [(300,), (1,), (37,), (64,), (65,), ((100, 1, 63, 136),)],
    (5, 90): [(5, 90), (1, 1), (3, 37), (5, 65), (4, 1), ((2, 3), (1, 60, 29))],
    (2, 2, 3, 67): [(2, 2, 3, 67), (1, 1, 1, 1), (1, 2, 2, 37), (2, 1, 3, 67),
                    ((1, 1), (2,), (3,), (60, 7)), (2, 2, 1, 7)],
}


def chunkings(shape, backend):
    """The chunkings of a shape to test on a backend.

    The NumPy reference costs milliseconds a block, so it skips single-element
    chunks (hundreds of blocks); tests/test_blocks.py checks its one-element blocks.
    """
    return [chunks for chunks in CHUNKINGS[shape]
            if backend != "numpy" or chunks != (1,) * len(shape)]


def compute_all(arrays, scheduler="sync"):
    return dask.compute(*arrays, scheduler=scheduler)


# ------------------------------------------------------------------ invariance

# The chunkings and dtypes run on the default backend: the dask layer places each block
# (origin=, global_shape=) the same way whichever backend computes it, and
# tests/test_blocks.py checks every backend on blocks; the per-backend tests below
# (backward, out=) show that each backend is reached through this layer.


@pytest.mark.parametrize("case", CASES, ids=str)
def test_every_chunking_gives_the_in_memory_result(case, subtests):
    """Each shape's chunkings (subtests: the blocks' global indices are worked out alike)."""
    for_each(subtests, check_every_chunking, case, "auto",
             shape=[shape for shape in CHUNKINGS if len(shape) >= case.min_ndim])


def check_every_chunking(case, backend, shape):
    values = sample(shape, np.float32)
    expected = case.memory(values, BIG_OFFSET)
    tested = chunkings(shape, backend)
    results = compute_all([case.lazy(da.from_array(values, chunks=chunks), backend, BIG_OFFSET)
                           for chunks in tested])
    for chunks, result in zip(tested, results):
        assert_bits_equal(result, expected, (case.name, chunks))


DTYPE_CASES = ("dropout", "dropout-noise_shape", "alpha_dropout", "gaussian_dropout",
               "dropout_backward_recompute", "gaussian_dropout_backward")


@pytest.mark.parametrize("dtype", [dtype for dtype in FLOAT_DTYPES if dtype is not np.float32],
                         ids=lambda dtype: np.dtype(dtype).name)
def test_every_dtype_gives_the_in_memory_result(dtype):
    backend = "auto"
    shape = (5, 90)
    values = sample(shape, dtype)
    for name in DTYPE_CASES:
        case = CASES_BY_NAME[name]
        expected = case.memory(values, 0)
        tested = [(3, 37), ((2, 3), (1, 60, 29))]
        results = compute_all([case.lazy(da.from_array(values, chunks=chunks), backend, 0)
                               for chunks in tested])
        for chunks, result in zip(tested, results):
            assert result.dtype == np.dtype(dtype)
            assert_bits_equal(result, expected, (name, chunks))


def test_big_endian_blocks_declare_the_native_dtype_they_compute(subtests):
    # in memory a '>f4' x gives a native '<f4' y; the lazy array must declare that dtype
    shape, chunks = (2, 2, 3, 67), (1, 2, 2, 37)
    for dtype in (">f4", ">f8", ">f2"):
        values = sample(shape, np.dtype(dtype).newbyteorder("=")).astype(dtype)
        for case in CASES:
            with subtests.test(dtype=dtype, case=case.name):
                expected = case.memory(values, 0)
                assert expected.dtype.isnative
                da.utils.assert_eq(case.lazy(da.from_array(values, chunks=chunks), "auto", 0),
                                   expected, scheduler="sync")


@pytest.mark.skipif(BFLOAT16 is None, reason="ml_dtypes is not installed (the bf16 extra)")
def test_uint16_blocks_read_as_bfloat16_bits():
    values = sample((7, 90), BFLOAT16).view(np.uint16)
    y, _ = fdd.dropout(da.from_array(values, chunks=(3, 37)), P, seed=SEED, dtype="bfloat16")
    expected, _ = fastdrop.dropout(values, P, seed=SEED, dtype="bfloat16")
    assert_bits_equal(y.compute(), expected)


def test_offsets_shift_the_mask_like_in_memory():
    values = sample((5, 130), np.float32)
    for offset in (0, 1, 63, 64, BIG_OFFSET, 2**63 - values.size):
        y, mask = fdd.dropout(da.from_array(values, chunks=(2, 50)), P, seed=SEED, offset=offset)
        expected, _ = fastdrop.dropout(values, P, seed=SEED, offset=offset)
        assert mask.offset == offset
        assert_bits_equal(y.compute(), expected, offset)
    # with a noise shape the limit is the mask's size: (5, 1) takes what (5, 130) does not
    offset = 2**63 - 5
    y, _ = fdd.dropout(da.from_array(values, chunks=(2, 50)), P, seed=SEED, offset=offset,
                       noise_shape=(5, 1))
    expected, _ = fastdrop.dropout(values, P, seed=SEED, offset=offset, noise_shape=(5, 1))
    assert_bits_equal(y.compute(), expected, offset)


def test_dask_random_changes_with_the_chunking_fastdrop_dask_does_not():
    """The negative control: dask.array.random draws per block, so the mask follows the cuts."""
    values = sample((64, 100), np.float32)
    native, ours = [], []
    for chunks in ((64, 100), (16, 37)):
        x = da.from_array(values, chunks=chunks)
        uniform = da.random.default_rng(0).random(x.shape, chunks=x.chunks)
        with np.errstate(invalid="ignore"):  # inf * False is NaN in the textbook formula
            native.append((x * (uniform >= P) / (1 - P)).compute(scheduler="sync"))
        ours.append(fdd.dropout(x, P, seed=0)[0].compute())
    assert not np.array_equal(native[0] == 0, native[1] == 0)  # other drops for other cuts
    assert_bits_equal(ours[0], ours[1])


# ------------------------------------------------------------------ records and backward

def test_mask_record_regenerates_each_blocks_in_memory_mask():
    shape, chunks = (4, 6, 5, 9), (3, 4, 2, 5)
    values = sample(shape, np.float32)
    x = da.from_array(values, chunks=chunks)
    for call in (lambda: fdd.dropout(x, P, seed=SEED, stream=STREAM),
                 lambda: fdd.channel_dropout(x, P, seed=SEED, stream=STREAM),
                 lambda: fdd.dropout(x, P, seed=SEED, stream=STREAM, broadcast_dims=(1, 3))):
        _, mask = call()
        assert isinstance(mask, fdd.DaskDropoutMask) and mask.numblocks == x.numblocks
        assert mask.chunks == x.chunks and mask.array_shape == shape
        words = mask.words().compute()
        at = 0
        for number, index in enumerate(np.ndindex(*x.numblocks)):
            block = x.blocks[index].compute()
            origin = tuple(sum(sizes[:i]) for i, sizes in zip(index, x.chunks))
            _, expected = fastdrop.dropout(block, P, seed=SEED, stream=STREAM,
                                           noise_shape=mask.shape, origin=origin,
                                           global_shape=shape)
            record = mask.block(index)
            assert (record.shape, record.origin, record.global_shape, record.seed,
                    record.stream, record.offset, record.p) == \
                (expected.shape, expected.origin, expected.global_shape, SEED, STREAM, 0, P)
            assert np.array_equal(record.words, expected.words)
            assert np.array_equal(words[at:at + expected.words.size], expected.words), number
            at += expected.words.size
        assert at == words.size
    with pytest.raises(IndexError, match="block index"):
        mask.block((2, 0, 0, 0))


def test_noise_record_regenerates_each_blocks_noise():
    values = sample((7, 90), np.float32)
    x = da.from_array(values, chunks=(3, 37))
    _, noise = fdd.gaussian_dropout(x, P, seed=SEED, stream=STREAM, offset=5)
    assert (noise.shape, noise.p, noise.seed, noise.stream, noise.offset) == \
        ((7, 90), P, SEED, STREAM, 5)
    block = x.blocks[1, 2].compute()
    _, expected = fastdrop.gaussian_dropout(block, P, seed=SEED, stream=STREAM, offset=5,
                                            origin=(3, 74), global_shape=(7, 90))
    record = noise.block((1, -1))
    assert (record.shape, record.origin, record.global_shape) == \
        (expected.shape, expected.origin, expected.global_shape)
    assert_bits_equal(fastdrop.gaussian_dropout_backward(block, record),
                     fastdrop.gaussian_dropout_backward(block, expected))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_backward_takes_a_gradient_chunked_another_way(backend):
    shape = (6, 5, 4, 70)
    values, grad = sample(shape, np.float32), sample(shape, np.float32, salt=1)
    x = da.from_array(values, chunks=(4, 2, 3, 37))
    grad_chunked = da.from_array(grad, chunks=(1, 5, 4, 64))
    pairs = (("dropout", "dropout_backward", {}),
             ("channel_dropout", "dropout_backward", {}),
             ("alpha_dropout", "alpha_dropout_backward", {"broadcast_dims": (2,)}),
             ("gaussian_dropout", "gaussian_dropout_backward", {}))
    for forward, backward, options in pairs:
        _, record = getattr(fdd, forward)(x, P, seed=SEED, stream=STREAM, **options)
        _, whole = getattr(fastdrop, forward)(values, P, seed=SEED, stream=STREAM, **options)
        result = getattr(fdd, backward)(grad_chunked, record, backend=backend)
        assert result.chunks == grad_chunked.chunks
        assert_bits_equal(result.compute(), getattr(fastdrop, backward)(grad, whole), forward)


def test_records_pickle_and_tokenize_by_value():
    x = da.from_array(sample((7, 90), np.float32), chunks=(3, 37))
    _, mask = fdd.channel_dropout(x[None], P, seed=SEED, stream=STREAM)
    _, noise = fdd.gaussian_dropout(x, P, seed=SEED, stream=STREAM)
    for record in (mask, noise):
        copy = pickle.loads(pickle.dumps(record))
        assert copy == record and hash(copy) == hash(record) and repr(copy) == repr(record)
        assert dask.base.tokenize(copy) == dask.base.tokenize(record)
    assert dask.base.tokenize(mask) != dask.base.tokenize(
        fdd.channel_dropout(x[None], P, seed=SEED, stream=STREAM + 1)[1])


def test_training_off_returns_x_and_takes_no_stream():
    x = da.from_array(sample((3, 7, 90), np.float32), chunks=(2, 3, 37))
    gen = fastdrop.Generator(3)
    for function in (fdd.dropout, fdd.channel_dropout, fdd.alpha_dropout,
                     fdd.feature_alpha_dropout, fdd.gaussian_dropout):
        y, record = function(x, P, seed=gen, training=False)
        assert y is x and record is None
    assert gen.state["stream"] == 0


# ------------------------------------------------------------------ streams and keys

def test_a_generator_gives_one_stream_per_call_taken_when_the_graph_is_built():
    values = sample((7, 90), np.float32)
    x = da.from_array(values, chunks=(3, 37))
    gen = fastdrop.Generator(11)
    y0, mask0 = fdd.dropout(x, P, seed=gen)
    y1, mask1 = fdd.dropout(x, P, seed=gen)
    assert (mask0.stream, mask1.stream) == (0, 1) and gen.state["stream"] == 2
    first = y0.compute()
    assert_bits_equal(y0.compute(), first)  # computing again draws nothing new
    assert gen.state["stream"] == 2
    assert_bits_equal(first, fastdrop.dropout(values, P, seed=11, stream=0)[0])
    assert_bits_equal(y1.compute(), fastdrop.dropout(values, P, seed=11, stream=1)[0])
    _, default = fdd.dropout(x, P)  # seed=None: the default source, resolved now as well
    assert default.seed == fastdrop.default_generator().seed


def test_keys_are_a_function_of_what_decides_the_result():
    x = da.from_array(sample((7, 90), np.float32), chunks=(3, 37))

    def keys(array):
        return set(dask.core.flatten(array.__dask_keys__()))

    same = [fdd.dropout(x, P, seed=SEED, stream=STREAM)[0] for _ in range(2)]
    assert same[0].name == same[1].name and keys(same[0]) == keys(same[1])
    others = [fdd.dropout(x, P, seed=SEED, stream=STREAM + 1)[0],
              fdd.dropout(x, P, seed=SEED + 1, stream=STREAM)[0],
              fdd.dropout(x, 0.5, seed=SEED, stream=STREAM)[0],
              fdd.dropout(x, P, seed=SEED, stream=STREAM, offset=1)[0],
              fdd.dropout(x, P, seed=SEED, stream=STREAM, broadcast_dims=0)[0],
              fdd.alpha_dropout(x, P, seed=SEED, stream=STREAM)[0],
              fdd.dropout(x + 1, P, seed=SEED, stream=STREAM)[0]]
    gen = fastdrop.Generator(SEED)
    others += [fdd.dropout(x, P, seed=gen)[0] for _ in range(2)]
    names = {same[0].name} | {array.name for array in others}
    assert len(names) == len(others) + 1
    for array in others:
        assert not keys(array) & keys(same[0])


# ------------------------------------------------------------------ schedulers

@pytest.fixture(scope="module")
def package_on_path():
    """Worker processes import the fastdrop under test (a checkout without pip install too)."""
    root = str(Path(fastdrop.__file__).resolve().parent.parent)
    before = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([root] + ([before] if before else []))
    yield root
    if before is None:
        del os.environ["PYTHONPATH"]
    else:
        os.environ["PYTHONPATH"] = before


@pytest.fixture(scope="module")
def client(package_on_path):
    """A two-process local cluster on 127.0.0.1, stopped after this module's tests."""
    distributed = require("distributed", "dask")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  host="127.0.0.1", dashboard_address="127.0.0.1:0",
                                  protocol="tcp://", silence_logs=40) as cluster, \
            distributed.Client(cluster, timeout="60s", set_as_default=False) as client:
        client.wait_for_workers(2, timeout=60)
        assert listening_addresses() == {"127.0.0.1"}  # scheduler, workers, dashboard
        yield client


def listening_addresses():
    """The addresses this process and its children listen on (psutil comes with distributed)."""
    import psutil

    found = set()
    here = psutil.Process()
    for process in [here, *here.children(recursive=True)]:
        connections = getattr(process, "net_connections", None) or process.connections
        found.update(connection.laddr.ip for connection in connections(kind="inet")
                     if connection.status == psutil.CONN_LISTEN)
    return found


def _scheduler_graph():
    values = sample((40, 150), np.float32)
    x = da.from_array(values, chunks=(7, 37))
    gen = fastdrop.Generator(5)
    y, mask = fdd.dropout(x, P, seed=gen, noise_shape=(40, 1))
    g, noise = fdd.gaussian_dropout(x, P, seed=gen, offset=BIG_OFFSET)
    grad = fdd.dropout_backward(g, mask)
    expected_y, expected_mask = fastdrop.dropout(values, P, seed=5, stream=0, noise_shape=(40, 1))
    expected_g, _ = fastdrop.gaussian_dropout(values, P, seed=5, stream=1, offset=BIG_OFFSET)
    expected_grad = fastdrop.dropout_backward(expected_g, expected_mask)
    return (y, g, grad), (expected_y, expected_g, expected_grad)


def test_threaded_and_process_schedulers_give_the_same_bits(package_on_path):
    arrays, expected = _scheduler_graph()
    for scheduler in ("threads", "processes"):
        with dask.config.set(num_workers=2):
            results = dask.compute(*arrays, scheduler=scheduler)
        for result, want in zip(results, expected):
            assert_bits_equal(result, want, scheduler)


def test_persist_then_compute_twice_gives_the_same_bits():
    arrays, expected = _scheduler_graph()
    persisted = dask.persist(*arrays, scheduler="threads")
    for _ in range(2):
        for result, want in zip(dask.compute(*persisted, scheduler="threads"), expected):
            assert_bits_equal(result, want)


def test_a_distributed_cluster_gives_the_same_bits(client, package_on_path):
    assert client.run(lambda: str(Path(fastdrop.__file__).resolve().parent.parent)) == \
        {address: package_on_path for address in client.scheduler_info()["workers"]}
    arrays, expected = _scheduler_graph()
    for result, want in zip(client.compute(list(arrays), sync=True), expected):
        assert_bits_equal(result, want)


def test_tasks_run_again_after_a_worker_is_lost_give_the_same_bits(client):
    """Blocks held by a restarted worker are recomputed on demand, from the same graph."""
    distributed = require("distributed", "dask")
    values = sample((64, 300), np.float32)
    y, _ = fdd.dropout(da.from_array(values, chunks=(8, 75)), P, seed=fastdrop.Generator(8))
    expected, _ = fastdrop.dropout(values, P, seed=8, stream=0)
    persisted = client.persist(y)
    client.gather(distributed.futures_of(persisted))  # every block computed and held
    holders = client.who_has(persisted)
    by_worker = {}
    for key, addresses in holders.items():
        for address in addresses:
            by_worker.setdefault(address, set()).add(key)
    victim = max(by_worker, key=lambda address: len(by_worker[address]))
    with distributed.get_task_stream(client=client) as stream:
        client.restart_workers([victim], timeout=60)
        client.wait_for_workers(2, timeout=60)
        assert_bits_equal(client.compute(persisted, sync=True), expected)
    rerun = {record["key"] for record in stream.data if record["key"][0] == y.name}
    assert rerun and rerun <= by_worker[victim]  # the lost blocks, and only they, ran again


# ------------------------------------------------------------------ threads

def test_each_task_runs_on_the_threads_it_was_given(monkeypatch):
    seen, lock = [], threading.Lock()
    dropout = fastdrop.dropout

    def recording(*args, **kwargs):
        with lock:
            seen.append((threading.get_ident(), fastdrop.get_num_threads()))
        return dropout(*args, **kwargs)

    monkeypatch.setattr(fastdrop, "dropout", recording)
    before = fastdrop.get_num_threads()
    x = da.from_array(sample((8, 90), np.float32), chunks=(1, 90))
    for threads in (1, 2, 3):
        seen.clear()
        keyword = {} if threads == 1 else {"threads": threads}  # 1 is the default
        y, _ = fdd.dropout(x, P, seed=SEED, **keyword)
        with dask.config.set(num_workers=2):
            y.compute(scheduler="threads")
        calls = [count for _, count in seen]
        assert len(calls) == 1 + x.npartitions  # the build-time check, then one per block
        assert calls[1:] == [threads] * x.npartitions
        assert threading.get_ident() not in {ident for ident, _ in seen[1:]}
    assert fastdrop.get_num_threads() == before  # the caller's own setting is untouched


def test_threads_are_checked():
    x = da.from_array(sample((8, 90), np.float32), chunks=(1, 90))
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        fdd.dropout(x, P, seed=SEED, threads=0)
    with pytest.raises(TypeError, match="threads must be an integer"):
        fdd.gaussian_dropout(x, P, seed=SEED, threads=1.5)


# ------------------------------------------------------------------ out=

@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_out_writes_each_block_into_its_region(backend):
    values = sample((5, 150), np.float32)
    # whole rows (each region contiguous in out), cut rows, and short pieces of rows
    for chunks in ((5, 150), (2, 150), (3, 37), (1, 7)):
        x = da.from_array(values, chunks=chunks)
        for name in ("dropout", "alpha_dropout", "gaussian_dropout"):
            out = np.full(values.shape, np.nan, np.float32)
            result, record = getattr(fdd, name)(x, P, seed=SEED, stream=STREAM, out=out,
                                                backend=backend)
            assert result is out and record.seed == SEED
            assert_bits_equal(out, getattr(fastdrop, name)(values, P, seed=SEED,
                                                          stream=STREAM)[0], (name, chunks))
        _, mask = fdd.dropout(x, P, seed=SEED, stream=STREAM)
        grad = np.full(values.shape, np.nan, np.float32)
        assert fdd.dropout_backward(x, mask, out=grad, backend=backend) is grad
        assert_bits_equal(grad, fdd.dropout_backward(x, mask).compute())


def test_out_with_training_off_copies_x():
    values = sample((13, 150), np.float32)
    out = np.zeros_like(values)
    result, mask = fdd.dropout(da.from_array(values, chunks=(4, 37)), P, out=out, training=False)
    assert result is out and mask is None
    assert_bits_equal(out, values)


# ------------------------------------------------------------------ bad input

@pytest.fixture
def watched():
    """A dask array of samples whose every task execution is counted."""
    ran = []

    def count(block):
        ran.append(block.shape)
        return block

    values = sample((6, 70), np.float32)
    x = da.from_array(values, chunks=(4, 37)).map_blocks(count, meta=np.empty((0, 0), np.float32))
    return values, x, ran


BAD_ARGUMENTS = {  # name -> (function, p, keywords, exception, fragment)
    "p above 1": ("dropout", 1.5, {}, ValueError, r"p=1\.5"),
    "p NaN": ("alpha_dropout", float("nan"), {}, ValueError, "p=nan"),
    "p a string": ("dropout", "0.5", {}, TypeError, "real number"),
    "gaussian p 1": ("gaussian_dropout", 1.0, {}, ValueError, "p < 1"),
    "seed negative": ("dropout", 0.5, dict(seed=-1), ValueError, "seed=-1"),
    "seed float": ("dropout", 0.5, dict(seed=1.0), TypeError, "seed"),
    "stream too large": ("dropout", 0.5, dict(seed=1, stream=2**64), ValueError, "stream"),
    "stream without a seed": ("dropout", 0.5, dict(seed=None, stream=3), ValueError,
        "without an integer seed"),
    "offset negative": ("dropout", 0.5, dict(offset=-1), ValueError, "offset"),
    "offset past 2**63": ("gaussian_dropout", 0.5, dict(offset=2**63 - 10), ValueError,
        r"2\*\*63"),
    "noise shape": ("dropout", 0.5, dict(noise_shape=(5, 1)), ValueError, "does not broadcast"),
    "noise shape and broadcast_dims": ("dropout", 0.5, dict(noise_shape=(6, 1), broadcast_dims=1),
        ValueError, "either"),
    "broadcast axis": ("alpha_dropout", 0.5, dict(broadcast_dims=2), ValueError, "out of range"),
    "channel dropout of 2-d": ("channel_dropout", 0.5, {}, ValueError, "3 or more"),
    "channel axis": ("feature_alpha_dropout", 0.5, dict(batch_axis=None, channel_axis=2),
        ValueError, "channel_axis=2"),
    "backend": ("dropout", 0.5, dict(backend="cuda"), ValueError, "unknown backend"),
    "dtype request": ("dropout", 0.5, dict(dtype="float8"), TypeError, "dtype="),
    "recompute without a stream": ("dropout_backward_recompute", 0.5, dict(seed=1, stream=None),
        TypeError, "stream"),
}


def test_bad_arguments_raise_the_in_memory_error_when_called(watched, subtests):
    for_each(subtests, check_bad_arguments, watched, case=BAD_ARGUMENTS)


def check_bad_arguments(watched, case):
    function, p, keywords, error, fragment = BAD_ARGUMENTS[case]
    values, x, ran = watched
    keywords = {"seed": 1, **keywords}
    with pytest.raises(error, match=fragment) as in_memory:
        getattr(fastdrop, function)(values, p, **keywords)
    with pytest.raises(error, match=fragment) as from_dask:
        getattr(fdd, function)(x, p, **keywords)
    assert str(from_dask.value) == str(in_memory.value)
    assert ran == []  # raised by the call itself: no task of x ran


def test_a_failed_call_takes_no_stream(watched, subtests):
    for_each(subtests, check_failed_call_takes_no_stream, watched,
             case=[name for name, (function, _, keywords, _, _) in BAD_ARGUMENTS.items()
                   if "seed" not in keywords and function != "dropout_backward_recompute"],
             source=["generator", "default"])


def check_failed_call_takes_no_stream(watched, case, source):
    function, p, keywords, error, fragment = BAD_ARGUMENTS[case]
    _, x, ran = watched
    taken_from = fastdrop.Generator(4) if source == "generator" else fastdrop.default_generator()
    before = taken_from.state
    with pytest.raises(error, match=fragment):
        getattr(fdd, function)(x, p, seed=taken_from if source == "generator" else None,
                               **keywords)
    assert taken_from.state == before and ran == []


def test_wrong_arrays_are_refused_with_what_to_do(watched):
    values, x, ran = watched
    with pytest.raises(TypeError, match="use fastdrop.dropout for an array in memory, or wrap "
                                        "it with dask.array.from_array"):
        fdd.dropout(values, P, seed=1)
    integers = da.from_array(np.arange(20), chunks=7)
    for function in (fdd.dropout, fdd.gaussian_dropout):
        with pytest.raises(TypeError, match="got dtype int64"):
            function(integers, P, seed=1)
    with pytest.raises(TypeError, match="got dtype uint16 .pass dtype='bfloat16'"):
        fdd.dropout(integers.astype(np.uint16), P, seed=1)
    unknown = x[x[:, 0] > 0]  # boolean indexing: chunk sizes unknown until computed
    with pytest.raises(ValueError, match=r"unknown chunk sizes.*compute_chunk_sizes\(\)"):
        fdd.dropout(unknown, P, seed=1)
    masked = da.from_array(np.ma.masked_array(values, values > 1), chunks=3)
    with pytest.raises(TypeError, match="needs NumPy blocks.*MaskedArray"):
        fdd.dropout(masked, P, seed=1)
    assert ran == []


def test_bad_records_and_gradients_are_refused(watched):
    values, x, ran = watched
    _, mask = fdd.dropout(x, P, seed=1)
    _, noise = fdd.gaussian_dropout(x, P, seed=1)
    _, memory_mask = fastdrop.dropout(values, P, seed=1)
    with pytest.raises(TypeError, match="needs the DaskDropoutMask .* got DropoutMask"):
        fdd.dropout_backward(x, memory_mask)
    with pytest.raises(TypeError, match="needs the DaskGaussianNoise .* got DaskDropoutMask"):
        fdd.gaussian_dropout_backward(x, mask)
    with pytest.raises(TypeError, match="needs the DaskDropoutMask .* got DaskGaussianNoise"):
        fdd.alpha_dropout_backward(x, noise)
    with pytest.raises(ValueError, match=r"grad has shape \(6, 69\) but the DaskDropoutMask is "
                                         r"for an array of shape \(6, 70\)"):
        fdd.dropout_backward(x[:, 1:], mask)
    with pytest.raises(TypeError, match="got dtype int64"):
        fdd.gaussian_dropout_backward(da.zeros((6, 70), dtype=int, chunks=3), noise)
    with pytest.raises(TypeError, match="takes a dask array for grad"):
        fdd.dropout_backward(values, mask)
    assert ran == []


def test_a_bad_out_or_scheduler_writes_nothing(watched):
    values, x, ran = watched
    gen = fastdrop.Generator(2)
    out = np.full(values.shape, 7.0, np.float32)
    cases = [
        (dict(out=np.zeros((6, 71), np.float32)), ValueError, "out has shape"),
        (dict(out=np.zeros(values.shape, np.float64)), TypeError, "out has dtype float64"),
        (dict(out=[0.0] * 420), TypeError, "zarr"),
        (dict(out=out, p=2.0), ValueError, "p=2.0"),
    ]
    for arguments, error, fragment in cases:
        arguments = {"p": P, **arguments}
        with pytest.raises(error, match=fragment):
            fdd.dropout(x, seed=gen, **arguments)
    read_only = out.copy()
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        fdd.gaussian_dropout(x, P, seed=gen, out=read_only)
    with dask.config.set(scheduler="processes"):
        with pytest.raises(ValueError, match="threaded or synchronous scheduler"):
            fdd.dropout(x, P, seed=gen, out=out)
    assert np.all(out == 7.0) and gen.state["stream"] == 0 and ran == []


def test_nothing_reaches_a_zarr_store_from_a_bad_call(tmp_path, watched):
    zarr = require("zarr", "dask")
    values, x, ran = watched
    store = zarr.open_array(str(tmp_path / "out.zarr"), mode="w", shape=values.shape,
                            chunks=(4, 37), dtype=np.float32, fill_value=-1.0)
    gen = fastdrop.Generator(6)
    with pytest.raises(ValueError, match="does not broadcast"):
        y, _ = fdd.dropout(x, P, seed=gen, noise_shape=(6, 2))
        da.store(y, store, lock=False)
    assert np.all(store[...] == -1.0) and gen.state["stream"] == 0 and ran == []
    y, _ = fdd.dropout(x, P, seed=gen, noise_shape=(6, 1))  # the good call, stored
    da.store(y, store, lock=False)
    expected, _ = fastdrop.dropout(values, P, seed=6, stream=0, noise_shape=(6, 1))
    assert_bits_equal(store[...], expected)
    assert math.prod(x.numblocks) == len(ran)


def test_the_dask_page_examples_run_and_say_what_they_claim(tmp_path, monkeypatch):
    zarr = require("zarr", "dask")
    page = Path(__file__).resolve().parent.parent / "docs" / "dask.md"
    blocks = [block for block in re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
              if "--8<--" not in block]  # the example's script, quoted whole, runs in its test
    assert len(blocks) == 3  # the quickstart, the guarantee, the records
    monkeypatch.chdir(tmp_path)  # the quickstart writes noisy.zarr
    quickstart, guarantee, records = namespaces = ({}, {}, {})
    for block, namespace in zip(blocks, namespaces):  # each block runs alone, as pasted
        exec(compile(block, "docs/dask.md", "exec"), namespace)  # noqa: S102
    x, mask, grad = (quickstart[name] for name in ("x", "mask", "grad"))
    values = x.compute()
    assert (mask.seed, mask.stream) == (42, 0) and mask.chunks == x.chunks
    stored = zarr.open_array(str(tmp_path / "noisy.zarr"), mode="r")[...]
    assert_bits_equal(stored, fastdrop.dropout(values, 0.5, seed=42, stream=0)[0])
    assert_bits_equal(grad.compute(), fastdrop.dropout(np.ones_like(values), 0.5, seed=42,
                                                       stream=0)[0])
    assert "lazy" in guarantee  # the guarantee asserts itself
    values, grad = records["x"].compute(), records["grad"].compute()
    assert records["gen"].state["stream"] == 2  # one stream per forward call
    assert isinstance(records["block"], fastdrop.DropoutMask)
    assert_bits_equal(records["g"].compute(), fastdrop.dropout_backward(
        grad, fastdrop.dropout(values, 0.3, seed=42, stream=0)[1]))
    assert_bits_equal(records["g2"].compute(), fastdrop.gaussian_dropout_backward(
        grad, fastdrop.gaussian_dropout(values, 0.3, seed=42, stream=1)[1]))
