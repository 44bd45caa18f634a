"""Build the C extension aiofranka._kernel from csrc/; all metadata lives in pyproject.toml."""

import sysconfig
from pathlib import Path

from setuptools import Extension, setup

SOURCES = ["core.c", "laws.c", "cycle.c", "seqlock.c", "rescue.c", "watch.c", "abi.c", "clock.c", "record.c", "serve.c",
           "testing.c", "attrib.c", "place.c"]

# The rescue thread calls libfranka with the x86-64 Linux calling convention
# (csrc/direct.cpp, docs/rescue-abi.md): anywhere else it is left out, and
# rescue_start raises with the reason. get_platform() follows cross builds.
RESCUE = sysconfig.get_platform() == "linux-x86_64"

sources = [f"csrc/{name}" for name in SOURCES] + (["csrc/direct.cpp"] if RESCUE else [])

setup(
    ext_modules=[
        Extension(
            "aiofranka._kernel",
            sources=sources,
            depends=[str(path) for path in sorted(Path("csrc").glob("*.h"))],
            include_dirs=["csrc"],
            define_macros=[("AIOFRANKA_RESCUE", "1")] if RESCUE else [],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-fvisibility=hidden",
                                "-Wno-missing-field-initializers", "-Wno-cast-function-type"],
            libraries=["m", "dl", "pthread"],
        )
    ]
)
