# The C-level face of fastdrop/_checks.py when Cython compiles it: the usual call's one
# step (_fastpath.pyx) cimports these, the rest of the API imports them from Python.
cpdef check_p(p)
cpdef check_bool(value, name)
cpdef check_integer(value, name, low, high)
cpdef check_seed(seed)
cpdef check_stream(stream)
cpdef check_offset(offset, n)
