"""Builds the Cython hot path; everything else lives in pyproject.toml."""

from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "fluxgate._core",
        ["fluxgate/_core.pyx"],
        extra_compile_args=["-O2"],
        # JWT signature math (fluxgate/_jwt.pxi) calls libcrypto directly: OpenSSL >= 3.0
        # headers at build time (Debian: libssl-dev), measured faster than going through
        # `cryptography` (bench/RESULTS.md, "JWT core").
        libraries=["crypto"],
    ),
    # The per-request data plane (client connection, exchange, upstream connection, pool):
    # its own extension, since _core does no I/O; it cimports _core (fluxgate/_proxy.pxd).
    Extension("fluxgate._proxy", ["fluxgate/_proxy.pyx"], extra_compile_args=["-O2"]),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    )
)
