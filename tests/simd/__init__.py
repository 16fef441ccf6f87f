"""Support for tests/test_simd_paths.py: the C kernels built as a ctypes library."""
