"""Philox4x32-10 reproduces Random123's published known-answer vectors."""
from pathlib import Path

import numpy as np
import pytest

import fastdrop
from fastdrop.rng.philox import philox_rounds

KAT_FILE = Path(__file__).parent / "data" / "philox_kat_vectors.txt"


def kat_vectors():
    for line in KAT_FILE.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, rounds, *hex_words = line.split()
        words = [int(word, 16) for word in hex_words]
        yield name, int(rounds), words[:4], words[4:6], words[6:]


KATS = list(kat_vectors())


def test_kat_file_has_the_published_ten_round_vectors():
    assert sum(1 for _, rounds, *_ in KATS if rounds == 10) == 3


@pytest.mark.parametrize("name, rounds, counter, key, expected", KATS)
def test_numpy_rounds_match_kat(name, rounds, counter, key, expected):
    out = philox_rounds(tuple(np.uint64(c) for c in counter), tuple(np.uint64(k) for k in key),
                        rounds)
    assert [int(word) for word in out] == expected


@pytest.mark.parametrize("name, rounds, counter, key, expected",
                         [kat for kat in KATS if kat[1] == 10])
def test_public_philox4x32_10_matches_kat(name, rounds, counter, key, expected):
    out = fastdrop.philox4x32_10(np.array(counter, np.uint32), np.array(key, np.uint32))
    assert out.dtype == np.uint32
    assert out.tolist() == expected


def test_public_philox_is_vectorised_and_broadcasts():
    tens = [kat for kat in KATS if kat[1] == 10]
    counters = np.array([kat[2] for kat in tens], np.uint32)
    keys = np.array([kat[3] for kat in tens], np.uint32)
    expected = np.array([kat[4] for kat in tens], np.uint32)
    assert np.array_equal(fastdrop.philox4x32_10(counters, keys), expected)
    # one key broadcast over a (2, 3, 4) batch of counters equals block-by-block calls
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 2**32, size=(2, 3, 4), dtype=np.uint64).astype(np.uint32)
    key = np.array([0xDEADBEEF, 0x12345678], np.uint32)
    out = fastdrop.philox4x32_10(batch, key)
    assert out.shape == (2, 3, 4)
    for index in np.ndindex(2, 3):
        assert np.array_equal(out[index], fastdrop.philox4x32_10(batch[index], key))


def test_numba_block_matches_kat():
    numba = pytest.importorskip("numba")
    from fastdrop.kernels.numba.philox import philox4x32_10_block

    @numba.njit
    def call(c0, c1, c2, c3, k0, k1):
        return philox4x32_10_block(c0, c1, c2, c3, k0, k1)

    for _name, rounds, counter, key, expected in KATS:
        if rounds == 10:
            out = call(*(np.uint64(v) for v in counter + key))
            assert [int(word) for word in out] == expected


@pytest.mark.parametrize("counter, key, error", [
    (np.zeros(3, np.uint32), np.zeros(2, np.uint32), ValueError),
    (np.zeros(4, np.uint32), np.zeros(3, np.uint32), ValueError),
    (np.zeros(4, np.float64), np.zeros(2, np.uint32), TypeError),
    (np.array([0, 0, 0, 2**32], np.int64), np.zeros(2, np.uint32), ValueError),
    (np.array([0, 0, 0, -1], np.int64), np.zeros(2, np.uint32), ValueError),
])
def test_public_philox_rejects_bad_input(counter, key, error):
    with pytest.raises(error):
        fastdrop.philox4x32_10(counter, key)
