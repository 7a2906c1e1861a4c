"""The .tar.zst bundle: a staged writer and a bounded, verifying reader."""

from bundle.archive.reader import Bundle, ReadLimits, check_version, read_bundle
from bundle.archive.writer import ZSTD_LEVEL, StagedBundle

__all__ = ["ZSTD_LEVEL", "Bundle", "ReadLimits", "StagedBundle", "check_version", "read_bundle"]
