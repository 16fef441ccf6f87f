"""Cython/OpenMP backend: the C kernels of fastdrop/include/fastdrop/ over OpenMP threads.

``kernels`` (compiled from kernels.pyx at install time) runs the C kernels of
fastdrop/include/fastdrop/ over OpenMP threads; ``openmp.pxd`` is the one shim for
``omp_*`` calls, with serial fallbacks.
"""
