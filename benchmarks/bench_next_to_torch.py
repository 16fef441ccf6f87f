"""fastdrop.torch's large calls alone and between torch's own, with its result cache on and off.

    PYTHONPATH=. python benchmarks/bench_next_to_torch.py [--threads 2] [--calls 60] [--log2-n 24]

A call is ``fastdrop.torch.dropout`` forward and backward (``y.backward(g)``, g held by
the caller, so the backward makes a new tensor) of n float32 elements, p = 0.1, on the
C++ path. Each setting of the result cache (``FASTDROP_TORCH_CACHE_MB``: the default,
and 0, torch's allocator) runs in a process of its own (the cache reads its setting
once): ``calls`` timed calls in a row ("alone"), then ``calls`` timed calls each after
an untimed forward + backward of torch's ``F.dropout`` of the same size ("next to
torch's"), whose noise tensors and results it allocates and frees. Printed: the median
and the largest call, and how many calls took over twice the median alone. Times are
reported, never asserted.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = (("default", None), ("off (FASTDROP_TORCH_CACHE_MB=0)", "0"))


def measure(threads, calls, n, p=0.1):
    """{"alone": [ms...], "next to torch's": [ms...]} in this process."""
    import torch

    import fastdrop.torch
    from fastdrop.torch import _build

    torch.set_num_threads(threads)
    if _build.ops() is None:
        raise SystemExit(f"the C++ path is not available: {_build.describe()}")
    x = torch.randn(n, requires_grad=True)
    g = torch.randn(n)

    def ours():
        fastdrop.torch.dropout(x, p).backward(g)
        x.grad = None

    def theirs():
        torch.nn.functional.dropout(x, p).backward(g)
        x.grad = None

    def timed(call):
        start = time.perf_counter()
        call()
        return 1000 * (time.perf_counter() - start)

    for _ in range(3):
        ours()
        theirs()
    alone = [timed(ours) for _ in range(calls)]
    mixed = []
    for _ in range(calls):
        theirs()
        mixed.append(timed(ours))
    return {"alone": alone, "next to torch's": mixed}


def run(threads, calls, log2_n):
    """Rows (cache setting, where, median ms, largest ms, calls over 2x the median alone)."""
    rows = []
    for name, value in SETTINGS:
        env = dict(os.environ)
        env.pop("FASTDROP_TORCH_CACHE_MB", None)
        if value is not None:
            env["FASTDROP_TORCH_CACHE_MB"] = value
        result = subprocess.run(
            [sys.executable, __file__, "--child", "--threads", str(threads), "--calls",
             str(calls), "--log2-n", str(log2_n)], env=env, capture_output=True, text=True,
            check=True)
        times = json.loads(result.stdout.splitlines()[-1])
        limit = 2 * statistics.median(times["alone"])
        for where, samples in times.items():
            rows.append((name, where, statistics.median(samples), max(samples),
                         sum(sample > limit for sample in samples)))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=60)
    parser.add_argument("--log2-n", type=int, default=24)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.threads, args.calls, 1 << args.log2_n)))
        return
    import torch
    from bench_fused import machine_line

    print(machine_line(args.threads, torch.__version__))
    print(f"\nfastdrop.torch.dropout forward + backward, 2^{args.log2_n} float32, p = 0.1, "
          f"{args.calls} calls each way\n")
    print("| result cache | calls | median | largest | over 2x the median alone |")
    print("| --- | --- | ---: | ---: | ---: |")
    for name, where, median, largest, slow in run(args.threads, args.calls, args.log2_n):
        print(f"| {name} | {where} | {median:.1f} ms | {largest:.1f} ms | {slow} |")


if __name__ == "__main__":
    main()
