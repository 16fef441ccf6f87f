"""What this installation and machine are: for `fastdrop info` and benchmark headers."""
import importlib.metadata
import os
import platform

# The SIMD features worth reporting, as /proc/cpuinfo spells them: every one the C kernels
# choose a path by (avx2, avx512f, avx512bw, avx512dq, avx512_bf16), and their neighbours.
SIMD_FLAGS = ("sse2", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512dq",
              "avx512_bf16", "neon", "asimd")
# Compiler feature names (__builtin_cpu_supports) that /proc/cpuinfo spells otherwise.
FEATURE_NAMES = {"avx512bf16": "avx512_bf16"}
# The C kernels' SIMD levels (fastdrop.kernels.cython.kernels.simd_enabled), by number.
SIMD_LEVELS = ("portable", "AVX2", "AVX-512F", "AVX-512 with BF16")


def package_version(name):
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model_and_features():
    """(CPU model name, list of SIMD features this CPU reports)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and model in ("", platform.machine(), platform.processor()):
                    model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    except OSError:
        pass
    return model, [flag for flag in SIMD_FLAGS if flag in flags]


def numba_cache_location():
    """Where Numba keeps fastdrop's compiled kernels."""
    configured = os.environ.get("NUMBA_CACHE_DIR")
    if configured:
        return configured
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "numba",
                        "__pycache__")


def collect():
    """A dict describing versions, backends, OpenMP, threads, CPU and the Numba cache."""
    from . import __version__
    from ._backends import BACKENDS, backend_available
    from ._config import NUMBA_CACHE, available_cpus, get_num_threads

    model, features = cpu_model_and_features()
    info = {
        "fastdrop": __version__,
        "python": platform.python_version(),
        "numpy": package_version("numpy"),
        "numba": package_version("numba"),
        "cython (build)": package_version("Cython"),
        "torch": package_version("torch"),
        "ml_dtypes (bfloat16 arrays)": package_version("ml_dtypes"),
        "backends": {name: backend_available(name) for name in BACKENDS},
        "openmp": None,
        "openmp max threads": None,
        "threads (fastdrop)": get_num_threads(),
        "cpus available": available_cpus(),
        "numba threads": os.environ.get("NUMBA_NUM_THREADS") or available_cpus(),
        "cpu": model,
        "simd": features,
        "simd path (cython)": None,
        "platform": platform.platform(),
        "numba cache": numba_cache_location() if NUMBA_CACHE else "off (FASTDROP_NUMBA_CACHE)",
    }
    if backend_available("cython"):
        from .kernels.cython import kernels as cython_kernels

        info["openmp"] = cython_kernels.openmp_enabled()
        info["openmp max threads"] = cython_kernels.max_threads()
        info["simd path (cython)"] = SIMD_LEVELS[cython_kernels.simd_enabled()]
    return info
