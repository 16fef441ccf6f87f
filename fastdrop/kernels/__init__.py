"""Compute kernels, one folder per backend (``cython/``, ``numba/``).

Private: the public API validates, lays arrays out and dispatches here, through the
kernel interface of `fastdrop.kernels.interface`. ``common`` holds the helpers both
compiled backends' Python entry points share.
"""
