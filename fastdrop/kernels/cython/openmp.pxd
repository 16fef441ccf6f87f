# cython: language_level=3
# The one shim for omp_* calls: real OpenMP when built with it, serial no-ops otherwise.
cdef extern from "fastdrop/openmp_shim.h" nogil:
    int FD_OPENMP_ENABLED
    int omp_get_max_threads()
    int omp_get_num_procs()
