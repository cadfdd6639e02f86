"""Compression by magic number: the one place that tells gzip and zstd apart
from a file's first bytes (never from its name).

Standard library only, and nothing at import time, so that callers on a hot
start-up path (``bulk slice``) can load it without the rest of the trace layer.
"""

from __future__ import annotations

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
ZSTD_FRAME_MAGIC = 0xFD2FB528  # ZSTD_MAGIC read as a little-endian word
# A zstd skippable frame (magic 0x184D2A50..5F) may come first, e.g. a seek table.
SKIPPABLE_LOW = 0x184D2A50
SKIPPABLE_HIGH = 0x184D2A5F
HEAD_LEN = 4  # bytes compression_of() needs


def is_skippable(magic: int) -> bool:
    """Whether a little-endian frame magic is one of zstd's skippable frames."""
    return SKIPPABLE_LOW <= magic <= SKIPPABLE_HIGH


def compression_of(head: bytes) -> str | None:
    """ "gzip", "zstd" or None (not compressed, or too short to tell) from the
    first bytes of a file: :data:`HEAD_LEN` of them are enough."""
    if head[:2] == GZIP_MAGIC:
        return "gzip"
    if len(head) < HEAD_LEN:
        return None
    if head[:4] == ZSTD_MAGIC or is_skippable(int.from_bytes(head[:4], "little")):
        return "zstd"
    return None


def sniff_compression(path: str) -> str | None:
    """:func:`compression_of` the file at ``path``."""
    with open(path, "rb") as f:
        return compression_of(f.read(HEAD_LEN))
