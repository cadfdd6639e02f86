"""Builds bulk's C accelerators: every ``csrc/NAME.c`` becomes ``bulk._NAME``.

Each accelerator does one per-packet loop in C and has a pure-Python twin that
gives the same answer (tests compare them). The extensions are optional: where
no C compiler is at hand the package still installs and runs, only slower;
``bulk.native.load`` says which is in use. ``-g0`` keeps the build reproducible
(no build directory recorded in debug information), so that the role's
wheelhouse is byte-identical when nothing changed.
"""

import os
from glob import glob
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """Replaces an in-place ``bulk/_NAME.so`` by a new file instead of rewriting it.

    Rewriting the loaded file's bytes (same inode) crashes the processes that
    have it mapped (a capture, a benchmark or tests running from the tree).

    An accelerator whose source is gone is dropped from the build directory, or
    a wheel built in a used tree would ship it.
    """

    def run(self):  # type: ignore[no-untyped-def]
        wanted = {self.get_ext_filename(ext.name) for ext in self.extensions}
        for so in Path(self.build_lib, "bulk").glob("_*.so"):
            if str(so.relative_to(self.build_lib)) not in wanted:
                so.unlink()
        super().run()

    def copy_file(self, infile, outfile, *args, **kwargs):  # type: ignore[no-untyped-def]
        if str(outfile).endswith(".so") and os.path.lexists(outfile):
            os.unlink(outfile)
        return super().copy_file(infile, outfile, *args, **kwargs)


HEADERS = sorted(glob("csrc/*.h"))

setup(
    cmdclass={"build_ext": BuildExt},
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
    ],
)
