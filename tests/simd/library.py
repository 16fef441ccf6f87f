"""fastdrop's C kernels as a ctypes library built from tests/simd/kernels_under_test.c.

Three builds of the same headers (see that file): ``emulated`` (every intrinsic from
SIMDe and avx512_emulation.h, the CPU's features set by the test: every SIMD level on
any x86-64), ``native`` (the real instructions; the CPU's own levels) and ``portable``
(no SIMD path compiled, as on other CPUs). Each is compiled once per change of its
sources into a cache folder and loaded with ctypes; `KernelLibrary` calls its kernels
on NumPy arrays the way the Cython backend does.
"""
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from fastdrop.kernels.common import kernel_scale
from fastdrop.maskstream.spec import dropout_scale, gaussian_sigma, stream_parameters

HERE = Path(__file__).resolve().parent
INCLUDE = HERE.parent.parent / "fastdrop" / "include"
SOURCE = HERE / "kernels_under_test.c"
# The production build's value-safe flags (setup.py), so the arithmetic is the same.
FLAGS = ["-O2", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math", "-fPIC",
         "-shared", "-fvisibility=hidden", "-Wall", "-Werror", "-Wno-psabi"]
MODES = {
    # SIMDe's AVX-512 is plain C: FD_HAVE_AVX2_PATH forced on, so any CPU runs every path
    "emulated": ["-DFDT_EMULATED", "-DFD_HAVE_AVX2_PATH=1"],
    "native": [],
    # no SIMD flag at all, and no SIMD path compiled
    "portable": ["-DFD_HAVE_AVX2_PATH=0", "-mno-avx", "-mno-avx2", "-mno-fma", "-mno-f16c",
                 "-mno-avx512f"],
}
EVERY_FEATURE = "avx2 avx512f avx512bw avx512dq avx512bf16"
KINDS = {"d": 0, "f": 1, "e": 2, "H": 3}  # float64, float32, float16, bfloat16 bits


class BuildUnavailable(Exception):
    """No compiler, or no SIMDe headers: the library cannot be built here."""


def compiler():
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def library_path(mode):
    """Build (or find, cached) the library of ``mode``; raise BuildUnavailable if it cannot be."""
    if platform.machine().lower() not in ("x86_64", "amd64") and mode != "emulated":
        raise BuildUnavailable(f"the {mode} build runs x86-64 instructions")
    command = compiler()
    if command is None:
        raise BuildUnavailable("no C compiler (cc, gcc or $CC)")
    flags = FLAGS + MODES[mode] + ["-I", str(INCLUDE), "-I", str(HERE)]
    sources = sorted(INCLUDE.glob("fastdrop/*.h")) + sorted(HERE.glob("*.[ch]"))
    key = hashlib.sha256(repr([command, flags]).encode())
    for source in sources:
        key.update(source.read_bytes())
    user = getattr(os, "getuid", lambda: "")()  # one cache per user where there are users
    folder = Path(tempfile.gettempdir()) / f"fastdrop-simd-kernels-{user}"
    path = folder / f"{mode}-{key.hexdigest()[:16]}.so"
    if path.exists():
        return path
    folder.mkdir(exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    result = subprocess.run([command, *flags, str(SOURCE), "-o", str(partial)],
                            capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        if "simde/" in result.stderr and "No such file" in result.stderr:
            raise BuildUnavailable("no SIMDe headers (Debian: apt-get install libsimde-dev)")
        raise RuntimeError(f"building the {mode} kernels failed:\n{result.stderr[-4000:]}")
    os.replace(partial, path)  # whole or not at all, for concurrent test processes
    return path


class MaskParams(ctypes.Structure):
    """fd_mask_params."""

    _fields_ = [("seed", ctypes.c_uint64), ("stream", ctypes.c_uint64),
                ("threshold", ctypes.c_uint64), ("drop_all", ctypes.c_int),
                ("offset", ctypes.c_uint64), ("n", ctypes.c_int64)]


class Runs(ctypes.Structure):
    """fd_runs."""

    _fields_ = [("base", ctypes.c_uint64), ("ndim", ctypes.c_int),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("run", ctypes.c_int64)]


def _pointer(array):
    return None if array is None else array.ctypes.data


def _word_ranges(total, ranges):
    """``ranges`` consecutive ranges of [0, total) words, cut off group boundaries."""
    cuts = [0] + [total * k // ranges + (k % 2) for k in range(1, ranges)] + [total]
    cuts = sorted(min(cut, total) for cut in cuts)
    return list(zip(cuts[:-1], cuts[1:]))


class KernelLibrary:
    """The kernels of one build, on 1-D C-contiguous arrays (bfloat16 as uint16 bits)."""

    def __init__(self, mode):
        self.mode = mode
        self.library = ctypes.CDLL(str(library_path(mode)))
        self.library.fdt_emulate_cpu.argtypes = [ctypes.c_char_p, ctypes.c_int]
        for name in ("fdt_dropout_range", "fdt_apply_mask_range", "fdt_scale_range",
                     "fdt_dropout_runs", "fdt_gaussian_range"):
            getattr(self.library, name).restype = None
        self.library.fdt_dropout_range.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double,
            ctypes.POINTER(MaskParams), ctypes.c_int64, ctypes.c_int64]
        self.library.fdt_apply_mask_range.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double,
            ctypes.c_int64, ctypes.c_int64, ctypes.c_int64]
        self.library.fdt_scale_range.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_double, ctypes.c_int64, ctypes.c_int64,
            ctypes.c_int64]
        self.library.fdt_dropout_runs.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double,
            ctypes.POINTER(MaskParams), ctypes.POINTER(Runs), ctypes.c_int64, ctypes.c_int64]
        self.library.fdt_mask_words_range.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(MaskParams), ctypes.c_int64, ctypes.c_int64]
        if mode != "portable":  # the instruction check exists where the SIMD paths do
            self.library.fdt_bf16_instructions.argtypes = [
                ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p]
        self.library.fdt_gaussian_range.argtypes = [
            ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_double, ctypes.c_uint64,
            ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int64, ctypes.c_int64]

    # ------------------------------------------------------------ the level and the paths

    def emulate_cpu(self, features, cap=3):
        """Emulated builds: a CPU with ``features``; every build: the level cap. The level."""
        return self.library.fdt_emulate_cpu(features.encode(), cap)

    def set_simd(self, level):
        return self.library.fdt_set_simd(level)

    def simd_enabled(self):
        return self.library.fdt_simd_enabled()

    def cpu_features(self):
        """The CPU's features among those the kernels ask for (emulated: the ones set)."""
        if self.mode == "portable":
            return ""
        text = ctypes.create_string_buffer(256)
        self.library.fdt_cpu_features(text, len(text))
        return text.value.decode()

    def levels(self):
        """The SIMD levels this build runs here (the best first)."""
        if self.mode == "emulated":
            self.emulate_cpu(EVERY_FEATURE)
        return list(range(self.set_simd(3), -1, -1))

    def take_paths(self):
        """The paths the calls since the last take went through (and forget them)."""
        text = ctypes.create_string_buffer(1024)
        self.library.fdt_take_paths(text, len(text))
        return set(text.value.decode().split(",")) - {""}

    # ------------------------------------------------------------ the kernels

    @staticmethod
    def _params(n, p, seed, stream, offset):
        threshold, drop_all = stream_parameters(p)
        return MaskParams(seed, stream, threshold, drop_all, offset, n)

    def dropout(self, x, p, seed, stream, offset, *, target="new", store_words=True, ranges=1):
        """fd_dropout_range over the words of x in ``ranges`` pieces: ``(y, words)``.

        ``target``: "new" (out of place), "inplace" (x itself) or None (mask words only).
        ``store_words`` False passes NULL words (recompute); words is then None.
        """
        params = self._params(x.size, p, seed, stream, offset)
        total = (x.size + 63) // 64
        words = np.full(total, 0xA5A5A5A5A5A5A5A5, np.uint64) if store_words else None
        y = {"new": lambda: np.full_like(x, 0x55), "inplace": lambda: x, None: lambda: None}[
            target]()
        scale = kernel_scale(x.dtype, dropout_scale(p))
        for first, stop in _word_ranges(total, ranges):
            self.library.fdt_dropout_range(KINDS[x.dtype.char], _pointer(x), _pointer(y),
                                           _pointer(words), scale, params, first, stop)
        return y, words

    def mask_words(self, n, p, seed, stream, offset):
        params = self._params(n, p, seed, stream, offset)
        words = np.full((n + 63) // 64, 0xA5A5A5A5A5A5A5A5, np.uint64)
        self.library.fdt_mask_words_range(_pointer(words), params, 0, words.size)
        return words

    def apply_mask(self, x, words, p, ranges=1):
        """fd_apply_mask_range: the backward from stored words, into a new array."""
        y = np.full_like(x, 0x55)
        scale = kernel_scale(x.dtype, dropout_scale(p))
        for first, stop in _word_ranges(words.size, ranges):
            self.library.fdt_apply_mask_range(KINDS[x.dtype.char], _pointer(x), _pointer(y),
                                              _pointer(words), scale, x.size, first, stop)
        return y

    def scale(self, values, scale):
        """fd_scale_range in place: values *= scale (s rounded to the element type)."""
        self.library.fdt_scale_range(KINDS[values.dtype.char], _pointer(values),
                                     kernel_scale(values.dtype, scale), values.size, 0,
                                     (values.size + 63) // 64)

    def dropout_runs(self, x, p, seed, stream, runs, ranges=1):
        """fd_dropout_runs: x a block whose global indices ``runs`` (a BlockRuns) gives."""
        view = Runs(runs.base, runs.outer_shape.size, _pointer(runs.outer_shape),
                    _pointer(runs.outer_strides), runs.run)
        params = self._params(x.size, p, seed, stream, 0)
        total = (x.size + 63) // 64
        words = np.full(total, 0xA5A5A5A5A5A5A5A5, np.uint64)
        y = np.full_like(x, 0x55)
        scale = kernel_scale(x.dtype, dropout_scale(p))
        for first, stop in _word_ranges(total, ranges):
            self.library.fdt_dropout_runs(KINDS[x.dtype.char], _pointer(x), _pointer(y),
                                          _pointer(words), scale, params, view, first, stop)
        return y, words

    def gaussian(self, x, p, seed, stream, offset):
        y = np.full_like(x, 0x55)
        self.library.fdt_gaussian_range(KINDS[x.dtype.char], _pointer(x), _pointer(y),
                                        gaussian_sigma(p), seed, stream, offset, 0, x.size)
        return y

    def bf16_instructions(self, values):
        """_mm512_cvtne2ps_pbh and _mm512_fpclass_ps_mask on float32 values (see the C file)."""
        values = np.ascontiguousarray(values, np.float32)
        converted = np.empty(values.size, np.uint16)
        masks = np.empty((values.size // 32, 9), np.uint32)
        self.library.fdt_bf16_instructions(_pointer(values), values.size, _pointer(converted),
                                           _pointer(masks))
        return converted, masks
