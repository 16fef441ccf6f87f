"""``fastdrop demo``: a short tour of fastdrop.dropout, checked against the reference."""
import time

from . import arguments

# peak bytes per element: x as float64 then float32, y, the gradient and two backwards, bools
BYTES_PER_ELEMENT = 32


def register(subparsers):
    """Add the ``demo`` subcommand to ``subparsers``, with `run` as its handler."""
    parser = subparsers.add_parser("demo", help="run a short dropout demo and check it")
    parser.add_argument("--n", type=arguments.size, default=1 << 22, metavar="N",
                        help="elements, >= 1: 4194304, 2^22 or 1<<22 (default 2^22)")
    parser.add_argument("--p", type=arguments.number(0, 1), default=0.5,
                        help="drop probability in [0, 1] (default 0.5)")
    parser.add_argument("--seed", type=arguments.seed, default=2026,
                        help="seed, 0 to 2^64 - 1 (default 2026)")
    parser.add_argument("--backend", type=arguments.backend, default="auto",
                        help="auto, numpy, cython or numba, if built here (default auto)")
    parser.set_defaults(handler=run)


def run(args):
    """Run ``fastdrop demo``: time two dropout calls, print them and the checks.

    Returns 0 if every check passed (backward from the stored mask equals the recomputed
    one; the output matches `fastdrop.reference`), else 1.
    """
    from ..bench.runner import size_label

    arguments.check_fits_in_memory("--n", size_label(args.n), BYTES_PER_ELEMENT * args.n)

    import numpy as np

    import fastdrop

    from .._internal import resolve_backend

    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal(args.n).astype(np.float32)
    backend = resolve_backend(args.backend)
    print(f"fastdrop {fastdrop.__version__}: backend {backend}, "
          f"{fastdrop.get_num_threads()} threads, n = {args.n:,}, p = {args.p}, float32")

    start = time.perf_counter()
    y, mask = fastdrop.dropout(x, args.p, seed=args.seed, backend=backend)  # includes any JIT
    first = time.perf_counter() - start
    start = time.perf_counter()
    y, mask = fastdrop.dropout(x, args.p, seed=args.seed, backend=backend)
    second = time.perf_counter() - start
    kept = fastdrop.unpack_mask(mask.words, mask.n)
    print(f"  first call {first * 1e3:.1f} ms (includes compilation or cache load), "
          f"second call {second * 1e3:.2f} ms")
    print(f"  kept fraction {kept.mean():.5f} (expected {1 - args.p:.5f}); "
          f"mask {mask.nbytes:,} bytes for {mask.n:,} elements (1 bit each)")
    print(f"  mean of x {x.mean():+.5f}, mean of y {y.mean():+.5f} (E[y] = x)")

    grad = np.ones_like(x)
    stored = fastdrop.dropout_backward(grad, mask, backend=backend)
    recomputed = fastdrop.dropout_backward_recompute(
        grad, args.p, seed=mask.seed, stream=mask.stream, backend=backend)
    check_n = min(args.n, 1 << 16)
    reference_y, reference_mask = fastdrop.reference.dropout(
        x[:check_n], args.p, seed=args.seed, stream=mask.stream)
    checks = {
        "backward from the stored mask == recomputed backward":
            np.array_equal(stored, recomputed),
        f"first {check_n:,} elements bit-identical to fastdrop.reference":
            np.array_equal(y[:check_n].view(np.uint32), reference_y.view(np.uint32)),
    }
    for label, passed in checks.items():
        print(f"  {'ok  ' if passed else 'FAIL'} {label}")
    return 0 if all(checks.values()) else 1
