"""Build script: fastdrop's compiled extensions and the OpenMP check.

Everything about the pure-Python package lives in pyproject.toml. This file lists
the Cython extensions (adding one is one entry in ``EXTENSIONS``) and decides
whether they are built with OpenMP:

- OpenMP is detected by compiling, linking and running a tiny OpenMP program.
- Without it the kernels are built serial and a loud warning is printed;
  ``FASTDROP_REQUIRE_OPENMP=1`` makes that a build error (CI sets it).
- ``FASTDROP_DISABLE_OPENMP=1`` builds serial on purpose (used by the tests).

Flags: -O3 (which vectorises loops), -ffp-contract=off (no fused multiply-add, so
alpha and Gaussian dropout round like NumPy), -fno-math-errno -fno-trapping-math
(value-safe; they let the Gaussian kernels vectorise); never -march=native, so a
wheel runs on any x86-64 machine.
"""
import glob
import os
import subprocess
import sys
import tempfile
import textwrap

from setuptools import setup
from setuptools.command.build_ext import build_ext

# module name -> Cython source; the .py sources are plain Python that runs as it is
# where nothing is built (their .pxd files type them for the compiled build)
EXTENSIONS = {
    "fastdrop.kernels.records": "fastdrop/kernels/records.py",
    "fastdrop.kernels.cython.kernels": "fastdrop/kernels/cython/kernels.pyx",
    "fastdrop._checks": "fastdrop/_checks.py",
    "fastdrop.streams": "fastdrop/streams.py",
    "fastdrop._fastpath": "fastdrop/_fastpath.pyx",
}
INCLUDE_DIR = "fastdrop/include"
OPENMP_FLAGS = ["-fopenmp"]
# -ffp-contract=off: no fused multiply-add, so results round as NumPy's do. The other
# two change no value: sqrt need not set errno, and FP operations may be computed
# before a select (both let the Gaussian kernels' tails vectorise).
OPTIMISATION_FLAGS = ["-O3", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]

OPENMP_PROBE = textwrap.dedent("""
    #include <omp.h>
    #include <stdio.h>
    int main(void) {
        int threads = 0;
        #pragma omp parallel reduction(+:threads)
        threads += 1;
        printf("%d\\n", threads);
        return threads > 0 ? 0 : 1;
    }
""")


def _flag(name):
    return os.environ.get(name, "").strip() not in ("", "0", "false", "no")


def openmp_works(compiler):
    """Compile, link and run a small OpenMP program with this compiler."""
    with tempfile.TemporaryDirectory() as folder:
        source = os.path.join(folder, "probe.c")
        with open(source, "w") as handle:
            handle.write(OPENMP_PROBE)
        try:
            objects = compiler.compile([source], output_dir=folder, extra_postargs=OPENMP_FLAGS)
            executable = os.path.join(folder, "probe")
            compiler.link_executable(objects, executable, extra_postargs=OPENMP_FLAGS)
            subprocess.run([executable], check=True, capture_output=True, timeout=60)
        except Exception as error:  # any failure means: no usable OpenMP
            print(f"fastdrop: OpenMP probe failed: {error}", file=sys.stderr)
            return False
    return True


class BuildExtensions(build_ext):
    """build_ext that adds OpenMP when it works (or is required) and optimisation flags."""

    def build_extensions(self):
        """Build the extensions with the optimisation flags, and OpenMP where it works.

        Without OpenMP, the build stops if FASTDROP_REQUIRE_OPENMP is set and warns
        otherwise (FASTDROP_DISABLE_OPENMP builds serial kernels without asking).
        """
        if _flag("FASTDROP_DISABLE_OPENMP"):
            use_openmp = False
            print("fastdrop: FASTDROP_DISABLE_OPENMP set; building serial kernels")
        else:
            use_openmp = openmp_works(self.compiler)
        if not use_openmp and not _flag("FASTDROP_DISABLE_OPENMP"):
            message = ("fastdrop: OpenMP is not available with this compiler; the Cython "
                       "kernels will run on ONE thread. Install an OpenMP runtime (e.g. "
                       "libgomp) or set FASTDROP_REQUIRE_OPENMP=0 to accept this.")
            if _flag("FASTDROP_REQUIRE_OPENMP"):
                raise SystemExit(message.replace(" or set FASTDROP_REQUIRE_OPENMP=0 to accept "
                                                 "this", "") + " (FASTDROP_REQUIRE_OPENMP=1)")
            print("\n" + "!" * 78 + "\n" + message + "\n" + "!" * 78 + "\n", file=sys.stderr)
        for extension in self.extensions:
            extension.extra_compile_args += OPTIMISATION_FLAGS
            if use_openmp:
                extension.extra_compile_args += OPENMP_FLAGS
                extension.extra_link_args += OPENMP_FLAGS
        super().build_extensions()


def extensions():
    """The Cython extension modules of `EXTENSIONS`, cythonized.

    Each is rebuilt when one of the headers or .pxd files it may include changes.
    """
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    # the headers and .pxd files the sources include: a change to one rebuilds them
    depends = sorted(glob.glob(os.path.join(INCLUDE_DIR, "fastdrop", "*.h"))
                     + glob.glob(os.path.join("fastdrop", "**", "*.pxd"), recursive=True))
    modules = [
        Extension(name, [source], include_dirs=[numpy.get_include(), INCLUDE_DIR],
                  define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                  depends=depends)
        for name, source in EXTENSIONS.items()
    ]
    return cythonize(modules, language_level=3, include_path=["."])


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExtensions})
