#!/usr/bin/env bash
# Builds the libFuzzer harness over fastdrop's C headers, with ASan and UBSan:
#   fuzz/build.sh [output]      (default build/fuzz/fuzz_kernels; CLANG=clang-17 picks a compiler)
# -ffp-contract=off: normal.h and variants.h need IEEE arithmetic with no fused multiply-add.
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-build/fuzz/fuzz_kernels}"
mkdir -p "$(dirname "$out")"
"${CLANG:-clang}" -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -ffp-contract=off -Wall -Wextra -I fastdrop/include fuzz/fuzz_kernels.c -o "$out" -lm -lpthread
echo "$out"
