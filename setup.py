"""Build the per-cycle C kernel; all metadata lives in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "aiofranka._kernel",
            sources=["aiofranka/_kernel.c", "aiofranka/_direct.cpp"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter",
                                "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
            libraries=["m", "dl", "pthread"],
        )
    ]
)
