"""Compute kernels, one module per backend. Private: the public API validates and dispatches here."""
