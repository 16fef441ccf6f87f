"""The backend registry: one list of backends feeds dispatch, tests, benchmarks and `fastdrop info`.

A compiled backend is a module (one folder under fastdrop/kernels/) with the entry
points of `fastdrop.kernels.interface.KernelBackend`, which take 1-D C-contiguous
arrays and the checked values of one call in a record of `fastdrop.kernels.records`
(tests/test_kernel_interface.py checks each backend against it). ``"numpy"`` is the
reference: the API runs whole public functions from `fastdrop.reference` instead.
"""
import importlib
import importlib.util

from .kernels.interface import KernelBackend

# name -> (module with the kernel interface, module that must be importable for it)
_COMPILED = {
    "cython": ("fastdrop.kernels.cython.kernels", "fastdrop.kernels.cython.kernels"),
    "numba": ("fastdrop.kernels.numba", "numba"),
}
# "auto" takes the first available: Cython needs no JIT warm-up.
_PREFERENCE = ("cython", "numba")
BACKENDS = ("numpy",) + tuple(_COMPILED)


def backend_available(name):
    """Whether backend ``name`` can run here (without importing it)."""
    if name == "numpy":
        return True
    kernel_module, requirement = _COMPILED[name]
    return importlib.util.find_spec(requirement) is not None


def available_backends():
    """Names of the backends that can run here, e.g. ``["numpy", "numba"]``."""
    return [name for name in BACKENDS if backend_available(name)]


def resolve_backend(backend):
    """The concrete backend name for ``backend`` ("auto" picks the best available)."""
    if backend == "auto":
        return next((name for name in _PREFERENCE if backend_available(name)), "numpy")
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {('auto',) + BACKENDS}")
    if not backend_available(backend):
        raise ValueError(f"backend {backend!r} is not available here: "
                         f"{_COMPILED[backend][1]} cannot be imported"
                         + (" (the extension was not built)" if backend == "cython" else ""))
    return backend


_loaded = {}  # backend argument -> kernel module (None for the reference)


def kernels(backend) -> KernelBackend | None:
    """The kernel module of a compiled backend, or None for the NumPy reference."""
    try:
        return _loaded[backend]
    except (KeyError, TypeError):  # TypeError: an unhashable backend argument
        pass
    name = resolve_backend(backend)
    module = None if name == "numpy" else importlib.import_module(_COMPILED[name][0])
    _loaded[backend] = module
    return module
