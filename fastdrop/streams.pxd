# The C-level face of fastdrop/streams.py when Cython compiles it: the usual call's one
# step (_fastpath.pyx) cimports resolve; the seed and stream checks are _checks' own.
from fastdrop._checks cimport check_seed, check_stream

cpdef default_source()
cpdef parse(seed, stream)
cpdef take(parsed)
cpdef resolve(seed, stream)
