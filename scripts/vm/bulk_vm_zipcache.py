"""Test VM only: reuse code compiled from zip archives across processes.

Ansible runs every module from a zip payload (AnsiballZ), and Python never
caches bytecode for zip imports, so each task recompiles ansible.module_utils
from source: seconds per task under emulation. This keeps the compiled code,
keyed by the interpreter's version and the source's hash, in a directory per
user (0700, so no user can hand code to another). A cache hit returns what the
compiler would have returned for that source.

Installed by scripts/vm/build-image.sh into the test image's system Python
(a .pth file imports it); the bulk virtualenv does not see it.
"""

import marshal
import os
import sys
import zipimport

_DIR = "/var/cache/bulk-vm-zipcache"
_compile = zipimport._compile_source


def _cached_compile(pathname, source):
    import hashlib  # noqa: PLC0415 - only when a zip import compiles, not at every start

    directory = os.path.join(_DIR, str(os.getuid()))
    key = hashlib.sha256(sys.version.encode() + b"\0" + source).hexdigest()
    path = os.path.join(directory, key)
    try:
        with open(path, "rb") as f:
            return marshal.load(f)  # noqa: S302 - written by this user, from this source
    except (OSError, EOFError, ValueError, TypeError):
        pass
    code = _compile(pathname, source)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            marshal.dump(code, f)
        os.replace(tmp, path)
    except OSError:
        pass
    return code


zipimport._compile_source = _cached_compile
