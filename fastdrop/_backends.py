"""The backend registry: one list of backends feeds dispatch, tests, benchmarks and `fastdrop info`.

A compiled backend is a module exposing the private kernel interface:

- ``scale_by_stream(source, target, words, n, scale, threshold, drop_all, seed, stream, offset, threads)``
- ``scale_by_mask(source, target, words, scale, threads)``

on 1-D C-contiguous arrays (and the variants' ``apply_broadcast`` and ``gaussian``).
``dropout_plain(x, p, seed, stream, offset, inplace, threads)``, or None where a
backend has none: the usual forward call checked and run in one step, returning
``(y, words)``, or None for any call it does not take, which then goes the general way
(both backends have one, to cut the fixed cost of small calls). ``"numpy"`` is the reference and runs
whole public functions from `fastdrop.reference` instead.
"""
import importlib
import importlib.util

# name -> (module with the kernel interface, module that must be importable for it)
_COMPILED = {
    "cython": ("fastdrop.kernels.cython_kernels", "fastdrop.kernels.cython_kernels"),
    "numba": ("fastdrop.kernels.numba_kernels", "numba"),
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


def kernels(backend):
    """The kernel module of a compiled backend, or None for the NumPy reference."""
    try:
        return _loaded[backend]
    except (KeyError, TypeError):  # TypeError: an unhashable backend argument
        pass
    name = resolve_backend(backend)
    module = None if name == "numpy" else importlib.import_module(_COMPILED[name][0])
    _loaded[backend] = module
    return module
