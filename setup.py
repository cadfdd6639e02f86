"""Builds bulk's C accelerators: every ``csrc/NAME.c`` becomes ``bulk._NAME``.

Each accelerator does one per-packet loop in C and has a pure-Python twin that
gives the same answer (tests compare them). The extensions are optional: where
no C compiler is at hand the package still installs and runs, only slower;
``bulk.native.load`` says which is in use. ``-g0`` keeps the build reproducible
(no build directory recorded in debug information), so that the role's
wheelhouse is byte-identical when nothing changed.
"""

from glob import glob
from pathlib import Path

from setuptools import Extension, setup

HEADERS = sorted(glob("csrc/*.h"))

setup(
    ext_modules=[
        Extension(
            f"bulk._{Path(source).stem}",
            [source],
            depends=HEADERS,
            include_dirs=["csrc"],
            extra_compile_args=["-O2", "-g0", "-std=gnu11", "-Wall", "-Wextra"],
            optional=True,
        )
        for source in sorted(glob("csrc/*.c"))
    ]
)
