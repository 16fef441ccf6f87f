/* OpenMP calls that compile with or without OpenMP (serial fallbacks). */
#ifndef FASTDROP_OPENMP_SHIM_H
#define FASTDROP_OPENMP_SHIM_H

#ifdef _OPENMP
#include <omp.h>
#define FD_OPENMP_ENABLED 1
#else
#define FD_OPENMP_ENABLED 0
static inline int omp_get_max_threads(void) { return 1; }
static inline int omp_get_num_procs(void) { return 1; }
static inline int omp_get_thread_num(void) { return 0; }
static inline void omp_set_num_threads(int n) { (void)n; }
#endif

#endif /* FASTDROP_OPENMP_SHIM_H */
