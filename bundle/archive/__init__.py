"""The .tar.zst bundle: a staged writer and a bounded, verifying reader."""

from bundle.archive.reader import Bundle, ReadLimits, check_version, read_bundle, staged_bundle
from bundle.archive.writer import ZSTD_LEVEL, StagedBundle

__all__ = [
    "Bundle",
    "ReadLimits",
    "StagedBundle",
    "ZSTD_LEVEL",
    "check_version",
    "read_bundle",
    "staged_bundle",
]
