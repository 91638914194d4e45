"""Only the Cython extension list lives here; all metadata is in pyproject.toml.

NUDGESERVE_DEBUG_BUILD=1 turns bounds checks, wraparound and C-division checks back on
and compiles without optimisation, for debugging a kernel.
"""

import os
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("NUDGESERVE_DEBUG_BUILD", "0") not in ("", "0")

directives = {
    "language_level": "3",
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "cdivision": not DEBUG,
    "initializedcheck": DEBUG,
    "nonecheck": DEBUG,
    "embedsignature": True,
}
compile_args = ["-O0", "-g"] if DEBUG else ["-O3"]
openmp = ["-fopenmp"]


def kernel(name: str, parallel: bool = False) -> Extension:
    return Extension(
        f"nudgeserve.kernels.{name}",
        [f"nudgeserve/kernels/{name}.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=compile_args + (openmp if parallel else []),
        extra_link_args=openmp if parallel else [],
    )


# Every nudgeserve/kernels/_*.pyx is a kernel; each is built with OpenMP for prange.
KERNELS = sorted(p.stem for p in Path("nudgeserve/kernels").glob("_*.pyx"))

setup(
    ext_modules=cythonize(
        [kernel(name, parallel=True) for name in KERNELS],
        compiler_directives=directives,
    ),
)
