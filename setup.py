"""Build hook for the optional native scanner of the ICAP core.

Everything else is declared in pyproject.toml. The extension is optional: without a C compiler
and Python's headers the build skips it and patchcache runs its pure-Python parser (the
reference implementation, about twice the CPU per ICAP request).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "patchcache.icap_service._scan",
            ["src/patchcache/icap_service/_scan.c"],
            optional=True,
        )
    ]
)
