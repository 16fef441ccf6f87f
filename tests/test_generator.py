"""Generator: a fixed seed and a fresh stream per call, reproducible, resumable, thread-safe."""
import copy
import pickle
import sys
import threading

import numpy as np
import pytest

import fastdrop

BACKENDS = fastdrop.available_backends()
N = 1000  # elements per mask: two different streams agree on all of them with chance ~2**-1000


def ones(n=N):
    return np.ones(n, dtype=np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_call_k_uses_stream_k_and_its_mask(backend):
    gen = fastdrop.Generator(2024)
    for k in range(4):
        y, mask = gen.dropout(ones(), 0.5, backend=backend)
        assert (mask.seed, mask.stream, mask.offset) == (2024, k, 0)
        expected = fastdrop.reference.bernoulli_mask(N, 0.5, seed=2024, stream=k)
        np.testing.assert_array_equal(mask.words, expected)
    words = gen.bernoulli_mask(N, 0.5, backend=backend)
    np.testing.assert_array_equal(
        words, fastdrop.reference.bernoulli_mask(N, 0.5, seed=2024, stream=4))
    assert gen.state == {"seed": 2024, "stream": 5}


@pytest.mark.parametrize("backend", BACKENDS)
def test_consecutive_calls_get_different_masks(backend):
    gen = fastdrop.Generator(7)
    masks = [gen.dropout(ones(), 0.5, backend=backend)[1].words.tobytes() for _ in range(5)]
    assert len(set(masks)) == len(masks)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_reproduces_the_sequence(backend):
    first, second = fastdrop.Generator(99), fastdrop.Generator(99)
    for _ in range(3):
        y1, m1 = first.dropout(ones(), 0.3, backend=backend)
        y2, m2 = second.dropout(ones(), 0.3, backend=backend)
        np.testing.assert_array_equal(m1.words, m2.words)
        assert y1.tobytes() == y2.tobytes()
    other = fastdrop.Generator(100)
    assert other.dropout(ones(), 0.3)[1].words.tobytes() != \
        fastdrop.Generator(99).dropout(ones(), 0.3)[1].words.tobytes()


def test_state_round_trips():
    gen = fastdrop.Generator(5)
    gen.dropout(ones(), 0.5)
    saved = gen.state
    assert saved == {"seed": 5, "stream": 1}
    first = [gen.dropout(ones(), 0.5)[1].words.copy() for _ in range(3)]
    first.append(gen.bernoulli_mask(N, 0.5))
    gen.state = saved
    again = [gen.dropout(ones(), 0.5)[1].words.copy() for _ in range(3)]
    again.append(gen.bernoulli_mask(N, 0.5))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    # the state is a snapshot, not a live view of the generator
    assert saved == {"seed": 5, "stream": 1}


def test_state_moves_a_generator_to_another_seed():
    gen = fastdrop.Generator(1)
    gen.state = {"seed": 2**64 - 1, "stream": 10}
    assert gen.seed == 2**64 - 1
    y, mask = gen.dropout(ones(), 0.5)
    assert (mask.seed, mask.stream) == (2**64 - 1, 10)


def test_state_stream_continues_the_same_sequence():
    """Setting stream k is the same as making k calls: state resumes mid-sequence."""
    fresh = fastdrop.Generator(8)
    masks = [fresh.bernoulli_mask(N, 0.5) for _ in range(4)]
    resumed = fastdrop.Generator(123)
    resumed.state = {"seed": 8, "stream": 2}
    np.testing.assert_array_equal(resumed.bernoulli_mask(N, 0.5), masks[2])
    np.testing.assert_array_equal(resumed.bernoulli_mask(N, 0.5), masks[3])


@pytest.mark.parametrize("duplicate", [
    lambda gen: pickle.loads(pickle.dumps(gen)),
    lambda gen: pickle.loads(pickle.dumps(gen, protocol=0)),
    copy.deepcopy,
    copy.copy,
], ids=["pickle", "pickle-protocol-0", "deepcopy", "copy"])
def test_pickling_round_trips(duplicate):
    gen = fastdrop.Generator(31)
    gen.dropout(ones(), 0.5)
    clone = duplicate(gen)
    assert clone.state == gen.state == {"seed": 31, "stream": 1}
    np.testing.assert_array_equal(clone.dropout(ones(), 0.5)[1].words,
                                  gen.dropout(ones(), 0.5)[1].words)
    # the clone is independent: advancing one does not advance the other
    gen.dropout(ones(), 0.5)
    assert (clone.state["stream"], gen.state["stream"]) == (2, 3)


def test_pickled_generator_is_thread_safe_too():
    clone = pickle.loads(pickle.dumps(fastdrop.Generator(4)))
    assert_streams_distinct_under_threads(clone, threads=4, per_thread=500)


def assert_streams_distinct_under_threads(gen, threads, per_thread):
    start = gen.state["stream"]
    barrier = threading.Barrier(threads)
    taken = [[] for _ in range(threads)]

    def reserve(into):
        barrier.wait()
        for _ in range(per_thread):
            into.append(gen.reserve_stream())

    workers = [threading.Thread(target=reserve, args=(into,)) for into in taken]
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so reservations interleave
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    finally:
        sys.setswitchinterval(switch_interval)
    pairs = [pair for into in taken for pair in into]
    total = threads * per_thread
    assert len(pairs) == total
    assert {seed for seed, _ in pairs} == {gen.seed}
    streams = [stream for _, stream in pairs]
    assert len(set(streams)) == total, "two calls got the same stream"
    assert set(streams) == set(range(start, start + total))
    assert gen.state["stream"] == start + total
    # each thread sees its own streams in increasing order
    for into in taken:
        assert [s for _, s in into] == sorted(s for _, s in into)


def test_threads_sharing_a_generator_get_distinct_streams():
    assert_streams_distinct_under_threads(fastdrop.Generator(12), threads=8, per_thread=2000)


def test_threads_sharing_a_generator_through_dropout():
    gen = fastdrop.Generator(13)
    threads, per_thread = 4, 25
    masks = []
    lock = threading.Lock()

    def work():
        for _ in range(per_thread):
            y, mask = gen.dropout(ones(), 0.5)
            with lock:
                masks.append(mask)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sorted(m.stream for m in masks) == list(range(threads * per_thread))
    for mask in masks:  # each mask is the one of its stream, whichever thread made it
        np.testing.assert_array_equal(
            mask.words, fastdrop.bernoulli_mask(N, 0.5, seed=13, stream=mask.stream))


def test_seed_none_draws_from_os_entropy():
    seeds = {fastdrop.Generator().seed for _ in range(4)}
    assert len(seeds) == 4
    assert all(0 <= seed < 2**64 for seed in seeds)
    first, second = fastdrop.Generator(), fastdrop.Generator()
    assert first.dropout(ones(), 0.5)[1].words.tobytes() != \
        second.dropout(ones(), 0.5)[1].words.tobytes()


def test_seed_accepts_numpy_integers():
    assert fastdrop.Generator(np.uint64(2**64 - 1)).seed == 2**64 - 1
    assert type(fastdrop.Generator(np.int32(3)).seed) is int


@pytest.mark.parametrize("seed, error", [
    (-1, ValueError), (2**64, ValueError), (1.0, TypeError), (1.5, TypeError),
    ("7", TypeError), (True, TypeError), ([1], TypeError), (np.float64(3.0), TypeError),
])
def test_bad_seed_raises(seed, error):
    with pytest.raises(error, match="seed"):
        fastdrop.Generator(seed)


@pytest.mark.parametrize("state, error", [
    ({"seed": -1, "stream": 0}, ValueError),
    ({"seed": 2**64, "stream": 0}, ValueError),
    ({"seed": 1, "stream": -1}, ValueError),
    ({"seed": 1, "stream": 2**64}, ValueError),
    ({"seed": 1.0, "stream": 0}, TypeError),
    ({"seed": 1, "stream": 0.5}, TypeError),
    ({"seed": None, "stream": 0}, TypeError),
    ({"seed": 1}, ValueError),
    ({"stream": 1}, ValueError),
    ((1, 0), ValueError),
    (None, ValueError),
    ("seed", ValueError),
])
def test_bad_state_raises_and_leaves_generator_unchanged(state, error):
    gen = fastdrop.Generator(3)
    gen.reserve_stream()
    with pytest.raises(error):
        gen.state = state
    assert gen.state == {"seed": 3, "stream": 1}
    assert gen.reserve_stream() == (3, 1)


def test_exhausted_generator_raises_instead_of_reusing_a_stream():
    gen = fastdrop.Generator(6)
    gen.state = {"seed": 6, "stream": 2**64 - 1}
    assert gen.reserve_stream() == (6, 2**64 - 1)
    with pytest.raises(RuntimeError, match="2\\*\\*64"):
        gen.reserve_stream()
    with pytest.raises(RuntimeError):
        gen.dropout(ones(), 0.5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_seed_none_uses_the_default_generator(backend):
    default = fastdrop.default_generator()
    assert fastdrop.default_generator() is default
    start = default.state["stream"]
    masks = [fastdrop.dropout(ones(), 0.5, backend=backend)[1] for _ in range(3)]
    assert [m.seed for m in masks] == [default.seed] * 3
    assert [m.stream for m in masks] == [start, start + 1, start + 2]
    assert default.state["stream"] == start + 3
    assert len({m.words.tobytes() for m in masks}) == 3
    for mask in masks:
        np.testing.assert_array_equal(
            mask.words, fastdrop.reference.bernoulli_mask(N, 0.5, seed=mask.seed,
                                                          stream=mask.stream))


def test_seed_none_with_training_off_takes_no_stream():
    default = fastdrop.default_generator()
    start = default.state["stream"]
    x = ones()
    y, mask = fastdrop.dropout(x, 0.5, training=False)
    assert mask is None and y is x
    assert default.state["stream"] == start


def test_default_generator_reproduces_after_restoring_state():
    default = fastdrop.default_generator()
    saved = default.state
    first = fastdrop.dropout(ones(), 0.5)[1].words.copy()
    default.state = saved
    again = fastdrop.dropout(ones(), 0.5)[1].words
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("backend", fastdrop.available_backends())
def test_a_failed_call_takes_no_stream(backend):
    """Streams count successful calls only: arguments are checked before a stream is taken."""
    gen = fastdrop.Generator(5)
    x = np.ones(100, np.float32)
    for bad in [dict(p=2.0), dict(p=0.5, offset=-1), dict(p=0.5, out=np.empty(3, np.float32))]:
        p = bad.pop("p")
        with pytest.raises((ValueError, TypeError)):
            gen.dropout(x, p, backend=backend, **bad)
    with pytest.raises(TypeError):
        gen.dropout(np.arange(10), 0.5, backend=backend)
    with pytest.raises(ValueError):
        gen.bernoulli_mask(10, -0.5, backend=backend)
    assert gen.state["stream"] == 0
    default = fastdrop.default_generator()
    before = default.state["stream"]
    with pytest.raises(ValueError):
        fastdrop.dropout(x, 0.5, offset=-1, backend=backend)
    assert default.state["stream"] == before


@pytest.mark.parametrize("backend", fastdrop.available_backends())
def test_a_generator_can_be_passed_as_seed(backend):
    gen = fastdrop.Generator(77)
    x = np.ones(500, np.float32)
    y, mask = fastdrop.dropout(x, 0.5, seed=gen, backend=backend)
    words = fastdrop.bernoulli_mask(500, 0.5, seed=gen, backend=backend)
    assert (mask.seed, mask.stream) == (77, 0) and gen.state["stream"] == 2
    assert np.array_equal(words, fastdrop.bernoulli_mask(500, 0.5, seed=77, stream=1))
    with pytest.raises(ValueError, match="stream"):
        fastdrop.dropout(x, 0.5, seed=gen, stream=3, backend=backend)
