"""Embedding fastdrop in your own Numba code: a fused bias + ReLU + dropout kernel.

Run: python -m fastdrop.examples.numba_embedding
"""
import numba
import numpy as np
from numba import njit, prange

import fastdrop
import fastdrop.numba as fdn


@njit(parallel=True, cache=True)  # compiled once, then loaded from disk
def bias_relu_dropout(x, bias, p, seed, stream):
    """x = dropout(relu(x + bias)) in place, one pass; returns the packed mask words."""
    flat = x.reshape(-1)
    n, columns = flat.size, x.shape[1]
    words = np.empty(fdn.words_for(n), dtype=np.uint64)
    chunks = numba.get_num_threads()
    per_chunk = (words.size + chunks - 1) // chunks
    for chunk in prange(chunks):  # each chunk owns whole mask words
        first = chunk * per_chunk
        stop = min(first + per_chunk, words.size)
        for i in range(first * 64, min(stop * 64, n)):
            flat[i] = max(flat[i] + bias[i % columns], 0.0)
        fdn.dropout_range(flat, flat, words, p, seed, stream, 0, first, stop)
    return words


def main():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 300)).astype(np.float32)
    bias = rng.standard_normal(300).astype(np.float32)
    expected_input = np.maximum(x + bias, 0)
    words = bias_relu_dropout(x, bias, 0.5, 1234, 7)
    print(f"kept {fastdrop.unpack_mask(words, x.size).mean():.3f} of {x.size} elements")
    return expected_input, x, words


if __name__ == "__main__":
    main()
