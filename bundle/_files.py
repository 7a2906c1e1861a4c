"""Files that hold unredacted evidence (the appendix, a redaction map): created 0600 from the first byte, and put
into place whole (temp file + rename)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def write_private(path: Path, data: bytes) -> None:
    """Write data to path, readable by its owner only; OSError as the caller's to map."""
    tmp = path.with_name(f".{path.name}.part")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o600)  # an existing .part keeps its mode through O_CREAT: set it
            fh.write(data)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in chunks: what a ticket pins a bundle by."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
