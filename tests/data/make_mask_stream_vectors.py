"""Write mask_stream_vectors.json: frozen known answers of the mask stream (docs/mask-stream.md).

The answers are computed once with ``fastdrop.reference`` (the NumPy oracle), through its
public functions, and stored next to this script. tests/test_mask_stream_vectors.py then
checks every backend against the file, so a change to the spec's constants or rules fails
even when the reference and the kernels move together.

Rerun it only on a deliberate, breaking change of the specification (a new major version,
as docs/mask-stream.md says), and say so in the commit. Never rerun it to make a failing
test pass: a failure means the stream changed.

    python tests/data/make_mask_stream_vectors.py

What it writes (uint64 words and float bit patterns as hex strings, p as ``float.hex``):

- ``mask_words``: `bernoulli_mask` words for (seed, stream, offset, n, p) over a grid of
  p, offsets (word index crossing 2**32, the last elements before 2**63), seeds and
  streams (small and >= 2**63) and n, plus cases where one lane's uniform equals the
  threshold (kept) or is one below it (dropped);
- ``mask_words_large``: sha256 of the words of masks big enough to be split across threads;
- ``gaussian_noise``: `gaussian_noise` multipliers (float64 bits), and ``gaussian_noise_large``
  (sha256);
- ``dropout_large``: sha256 of `dropout`'s output and mask on a large float32 arange;
- ``values``: per dtype, an input and a gradient (bits) with ±0, ±inf, NaN, subnormals and
  large values, and the output bits of dropout, alpha dropout, Gaussian dropout and their
  backward passes for a few (seed, stream, offset, p).
"""
import hashlib
import json
import math
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))  # the fastdrop of this checkout

from fastdrop import DropoutMask, GaussianNoise, reference  # noqa: E402

OUTPUT = HERE / "mask_stream_vectors.json"
FORMAT = 1

SEED_STREAM_PAIRS = [
    (0, 0),
    (1, 2),
    (2**63, 2**63 + 1),
    (2**64 - 1, 2**64 - 1),
    (0xFEDCBA9876543210, 0x1122334455667788),
]
MASK_PS = [0.0, 1e-18, 2**-40, 0.1, 1 / 3, 0.25, 0.5, 0.9, 1 - 2**-53, 1.0]
COUNTS = [1, 63, 64, 65, 200, 1000]
HIGH_HALF = 2**32 * 64  # first element whose word index needs counter word 1
MAX_ELEMENTS = 2**63


def mask_offsets(n):
    """Offsets of the grid; the last puts the call's final element at 2**63 - 1."""
    return [0, 5, 63, 64, HIGH_HALF - 3, HIGH_HALF + 7, MAX_ELEMENTS - n]


def word_hex(value):
    return f"0x{int(value):016x}"


def bits_hex(array):
    """Each element's bit pattern as fixed-width hex (4, 8 or 16 digits)."""
    array = np.ascontiguousarray(array).reshape(-1)
    unsigned = array.view(f"u{array.dtype.itemsize}")
    return [f"{int(v):0{2 * array.dtype.itemsize}x}" for v in unsigned]


def sha256_le(array):
    """sha256 of the array's elements as little-endian bytes."""
    array = np.ascontiguousarray(array)
    return hashlib.sha256(array.astype(array.dtype.newbyteorder("<")).tobytes()).hexdigest()


def mask_case(seed, stream, offset, n, p, why=None):
    words = reference.bernoulli_mask(n, p, seed=seed, stream=stream, offset=offset)
    case = {"seed": word_hex(seed), "stream": word_hex(stream), "offset": offset, "n": n,
            "p": float(p).hex(), "words": [word_hex(w) for w in words]}
    if why:
        case["why"] = why
    return case


def grid_mask_cases():
    """Every (p, offset); n and (seed, stream) cycle so each offset meets every n and pair."""
    cases = []
    for i, p in enumerate(MASK_PS):
        for j in range(len(mask_offsets(1))):
            k = i * len(mask_offsets(1)) + j
            n = COUNTS[k % len(COUNTS)]
            seed, stream = SEED_STREAM_PAIRS[k % len(SEED_STREAM_PAIRS)]
            cases.append(mask_case(seed, stream, mask_offsets(n)[j], n, p))
    return cases


def threshold_cases():
    """Lanes whose uniform U equals T = floor(p 2**64): kept at p = U 2**-64, dropped just above.

    p = U 2**-64 is an exact float64 when U < 2**53 or U's low 11 bits are zero (p >= 1/2
    has no finer steps), so the lanes are looked up among the reference's uniforms.
    """
    seed, stream = 0xFEDCBA9876543210, 0x1122334455667788
    first_word = 1000
    uniforms = reference.lane_uniforms(seed, stream, np.arange(first_word, first_word + 256))
    uniforms = uniforms.reshape(-1)
    small = next(i for i, u in enumerate(uniforms) if int(u) < 2**53)
    low_zero = next(i for i, u in enumerate(uniforms) if int(u) >= 2**63 and int(u) % 2**11 == 0)
    cases = []
    for lane, step in [(small, 1), (low_zero, 2**11)]:
        u = int(uniforms[lane])
        element = first_word * 64 + lane
        offset = element - 70  # the lane sits in the call's second word
        for threshold, kept in [(u, True), (u + step, False)]:
            p = math.ldexp(threshold, -64)
            assert int(math.ldexp(p, 64)) == threshold  # p is exact
            case = mask_case(seed, stream, offset, 200, p,
                             why=f"element {element} has U = {u:#x}: "
                                 f"{'kept (U = T)' if kept else 'dropped (U < T)'}")
            word = int(case["words"][70 // 64], 16)
            assert bool(word >> (70 % 64) & 1) == kept
            cases.append(case)
    return cases


def large_mask_cases():
    """Masks of n >= 2**19 elements, which the compiled backends split among threads."""
    n = 2**19 + 37
    cases = []
    for seed, stream, offset, p in [(7, 2**63 + 3, HIGH_HALF - 2**18 + 5, 0.1),
                                    (2**64 - 1, 11, 3, 0.5)]:
        words = reference.bernoulli_mask(n, p, seed=seed, stream=stream, offset=offset)
        cases.append({"seed": word_hex(seed), "stream": word_hex(stream), "offset": offset,
                      "n": n, "p": float(p).hex(), "sha256": sha256_le(words)})
    return cases


def gaussian_cases():
    """Multipliers for even and odd offsets, Philox block index crossing 2**32, last elements."""
    ps = [0.0, 1e-18, 0.1, 0.5, 0.9]
    counts = [1, 2, 63, 130]
    pairs = [(0, 0), (2**64 - 1, 2**63), (0xFEDCBA9876543210, 0x1122334455667788)]
    cases = []
    k = 0
    for p in ps:
        # block indices 2**32 - 1 and 2**32 meet at element 2**33
        for offset_of in [lambda n: 0, lambda n: 1, lambda n: 6, lambda n: 2**33 - n // 2,
                          lambda n: MAX_ELEMENTS - n]:
            n = counts[k % len(counts)]
            seed, stream = pairs[k % len(pairs)]
            offset = offset_of(n)
            noise = reference.gaussian_noise(n, p, seed=seed, stream=stream, offset=offset)
            cases.append({"seed": word_hex(seed), "stream": word_hex(stream), "offset": offset,
                          "n": n, "p": float(p).hex(), "multipliers": bits_hex(noise)})
            k += 1
    return cases


def large_gaussian_cases():
    n = 2**19 + 11
    seed, stream, offset, p = 3, 2**64 - 2, 2**33 - 2**18 + 1, 0.2
    noise = reference.gaussian_noise(n, p, seed=seed, stream=stream, offset=offset)
    return [{"seed": word_hex(seed), "stream": word_hex(stream), "offset": offset, "n": n,
             "p": float(p).hex(), "sha256": sha256_le(noise)}]


def large_dropout_cases():
    """dropout of np.arange(n, dtype=float32): the fused kernels' threaded path."""
    n = 2**19 + 101
    x = np.arange(n, dtype=np.float32)
    cases = []
    for seed, stream, offset, p in [(5, 6, 2**20 + 1, 0.1), (2**63 + 9, 2**64 - 1, 0, 0.5)]:
        y, mask = reference.dropout(x, p, seed=seed, stream=stream, offset=offset)
        cases.append({"seed": word_hex(seed), "stream": word_hex(stream), "offset": offset,
                      "n": n, "p": float(p).hex(), "input": "numpy.arange(n, dtype=float32)",
                      "input_sha256": sha256_le(x), "output_sha256": sha256_le(y),
                      "words_sha256": sha256_le(mask.words)})
    return cases


def quiet_nan(dtype, payload, negative):
    """A quiet NaN of ``dtype`` with a payload in its low bits."""
    info = np.finfo(dtype)
    bits_type = np.dtype(f"u{np.dtype(dtype).itemsize}").type
    exponent_all_ones = ((1 << (info.bits - 1)) - 1) ^ ((1 << info.nmant) - 1)
    quiet = 1 << (info.nmant - 1)
    sign = 1 << (info.bits - 1) if negative else 0
    return np.array([sign | exponent_all_ones | quiet | payload], bits_type).view(dtype)[0]


def value_input(dtype, n=90):
    """A fixed input of ``dtype``: special values first, then a spread of magnitudes and signs."""
    info = np.finfo(dtype)
    tiny_subnormal = info.smallest_subnormal
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, np.nan, tiny_subnormal, -tiny_subnormal,
               info.smallest_normal - tiny_subnormal, info.smallest_normal, -info.smallest_normal,
               info.max, -info.max, info.max / 2, 1.0, -1.0, 0.5, 1.0 + info.eps, 3.0, -7.25]
    values = np.array(special, dtype=dtype)
    values[4], values[5] = quiet_nan(dtype, 1, False), quiet_nan(dtype, 5, True)  # exact bits
    spread = []
    lowest, highest = info.minexp - info.nmant, info.maxexp - 1  # subnormal to near max
    for i in range(n - len(special)):
        mantissa = 1.0 + ((i * 37) % 64) / 64.0
        exponent = lowest + (i * 13) % (highest - lowest)
        spread.append((-1.0) ** i * math.ldexp(mantissa, exponent))
    return np.concatenate([values, np.array(spread, dtype=np.float64).astype(dtype)])


VALUE_PARAMETERS = [
    # (seed, stream, offset, p)
    (0, 0, 0, 0.1),
    (2**64 - 1, 2**63 + 1, HIGH_HALF - 37, 1 / 3),
    (0x0123456789ABCDEF, 7, MAX_ELEMENTS - 90, 0.5),
    (42, 2**64 - 1, 5, 0.9),
    (9, 10, 64, 0.0),
    (11, 12, 1, 1.0),
]


def value_cases(dtype):
    x = value_input(dtype)
    grad = x[::-1].copy()
    cases = []
    for seed, stream, offset, p in VALUE_PARAMETERS:
        coordinates = dict(seed=seed, stream=stream, offset=offset)
        y, mask = reference.dropout(x, p, **coordinates)
        alpha_y, alpha_mask = reference.alpha_dropout(x, p, **coordinates)
        assert np.array_equal(alpha_mask.words, mask.words)  # one mask stream for both
        case = {"seed": word_hex(seed), "stream": word_hex(stream), "offset": offset,
                "p": float(p).hex(), "words": [word_hex(w) for w in mask.words],
                "dropout": bits_hex(y),
                "dropout_backward": bits_hex(reference.dropout_backward(grad, mask.words, p=p)),
                "alpha_dropout": bits_hex(alpha_y),
                "alpha_dropout_backward": bits_hex(reference.alpha_dropout_backward(
                    grad, DropoutMask(mask.words, shape=x.shape, p=p, **coordinates)))}
        recomputed = reference.dropout_backward_recompute(grad, p, **coordinates)
        assert bits_hex(recomputed) == case["dropout_backward"]
        if p < 1.0:  # Gaussian dropout needs p < 1
            gaussian_y, _ = reference.gaussian_dropout(x, p, **coordinates)
            case["gaussian_dropout"] = bits_hex(gaussian_y)
            case["gaussian_dropout_backward"] = bits_hex(reference.gaussian_dropout_backward(
                grad, GaussianNoise(shape=x.shape, p=p, **coordinates)))
        cases.append(case)
    return {"input": bits_hex(x), "grad": bits_hex(grad), "cases": cases}


def write(data):
    """JSON with one case per line, so a diff shows which case moved."""
    def dump(value):
        return json.dumps(value, separators=(",", ":"))

    lines = ["{"]
    sections = list(data.items())
    for s, (name, value) in enumerate(sections):
        end = "," if s < len(sections) - 1 else ""
        if isinstance(value, list):
            lines.append(f" {dump(name)}:[")
            lines += [f"  {dump(case)}," for case in value[:-1]] + [f"  {dump(value[-1])}"]
            lines.append(f" ]{end}")
        elif name == "values":
            lines.append(f" {dump(name)}:{{")
            for d, (dtype, entry) in enumerate(value.items()):
                lines.append(f"  {dump(dtype)}:{{")
                lines.append(f"   \"input\":{dump(entry['input'])},")
                lines.append(f"   \"grad\":{dump(entry['grad'])},")
                lines.append("   \"cases\":[")
                lines += [f"    {dump(case)}," for case in entry["cases"][:-1]]
                lines += [f"    {dump(entry['cases'][-1])}", "   ]"]
                lines.append("  }" + ("," if d < len(value) - 1 else ""))
            lines.append(f" }}{end}")
        else:
            lines.append(f" {dump(name)}:{dump(value)}{end}")
    lines.append("}")
    text = "\n".join(lines) + "\n"
    assert json.loads(text) == data
    OUTPUT.write_text(text)


def main():
    data = {
        "about": "Frozen known answers of the fastdrop mask stream (docs/mask-stream.md), "
                 "written by make_mask_stream_vectors.py from fastdrop.reference. Rerun only "
                 "on a deliberate, breaking change of the specification.",
        "format": FORMAT,
        "mask_words": grid_mask_cases() + threshold_cases(),
        "mask_words_large": large_mask_cases(),
        "gaussian_noise": gaussian_cases(),
        "gaussian_noise_large": large_gaussian_cases(),
        "dropout_large": large_dropout_cases(),
        "values": {np.dtype(dtype).name: value_cases(dtype)
                   for dtype in [np.float16, np.float32, np.float64]},
    }
    write(data)
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
