"""The internal API of the layers above the public one; not public.

``fastdrop.nn``, the integrations (``fastdrop.torch``, ``fastdrop.dask``), the CLI and
the benchmarks use fastdrop's public names, and reach its private modules only through
this one (tests/test_architecture.py checks it). These names are the contract between
them: they change together with their callers, without a deprecation period; users
should not rely on them.
"""
from ._backends import BACKENDS, backend_available, resolve_backend
from ._config import SERIAL_ELEMENTS, threads_were_set
from ._config import _check_threads as check_threads
from ._fused_api import softmax_dropout_of_rows
from ._layout import block_of_mask
from ._validate import (
    bfloat16_dtype,
    channel_noise_shape,
    check_gaussian_p,
    check_noise_shape,
    check_out,
    check_p,
)


def system_info():
    """What ``fastdrop info`` reports: versions, backends, OpenMP, threads, CPU, Numba cache."""
    from ._sysinfo import collect  # importlib.metadata: loaded by the commands that report

    return collect()


def cpu_model_and_features():
    """The CPU's model name and the SIMD features fastdrop cares about, from the OS."""
    from ._sysinfo import cpu_model_and_features as read  # see system_info

    return read()


__all__ = [
    "BACKENDS",
    "SERIAL_ELEMENTS",
    "backend_available",
    "bfloat16_dtype",
    "block_of_mask",
    "channel_noise_shape",
    "check_gaussian_p",
    "check_noise_shape",
    "check_out",
    "check_p",
    "check_threads",
    "cpu_model_and_features",
    "resolve_backend",
    "softmax_dropout_of_rows",
    "system_info",
    "threads_were_set",
]
