# The compiled face of fastdrop/kernels/records.py: each record an extension type with
# read-only fields that hold what was given, as the plain-Python class does.


cdef class _Record:
    pass


cdef class MaskParams(_Record):
    cdef readonly object seed, stream, threshold, drop_all, offset, n


cdef class NoiseParams(_Record):
    cdef readonly object seed, stream, sigma, offset


cdef class BlockRuns(_Record):
    cdef readonly object base, outer_shape, outer_strides, run


cdef class BroadcastLayout(_Record):
    cdef readonly object sizes, mask_strides
