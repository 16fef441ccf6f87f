"""Build script: declares fastdrop's compiled extensions.

Everything about the pure-Python package lives in pyproject.toml. This file only
lists compiled extension modules; adding one is one entry in ``EXTENSIONS``.
"""
from setuptools import setup

# (module name, list of sources). The Cython/OpenMP backend adds its modules here.
EXTENSIONS: list[tuple[str, list[str]]] = []


def build_extensions():
    if not EXTENSIONS:
        return []
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    modules = [
        Extension(name, sources, include_dirs=[numpy.get_include(), "fastdrop/include"])
        for name, sources in EXTENSIONS
    ]
    return cythonize(modules, language_level=3)


setup(ext_modules=build_extensions())
