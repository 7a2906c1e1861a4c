"""Stage members on disk, then write one .tar.zst atomically (temp file + link into place, never over an
existing file unless asked). Every zstd frame carries a content checksum, and a last member holds the
manifest's SHA-256, so a flipped bit anywhere — manifest included — is caught on read."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import struct
import tarfile
import tempfile
from pathlib import Path

import pyzstd

from bundle.errors import BundleWriteError, StagingError
from bundle.models import Manifest, MediaType, Member, Provenance

ZSTD_LEVEL = 3  # measured: 3.4x at ~280 MB/s; level 19 gains ~9% at 1-2 MB/s
ZSTD_OPTIONS: dict[int, int] = {pyzstd.CParameter.compressionLevel: ZSTD_LEVEL, pyzstd.CParameter.checksumFlag: 1}
MANIFEST_DIGEST = "manifest.sha256"  # the last member: the SHA-256 of manifest.json's bytes (format 1.2 on)
# After the zstd frame, a skippable frame (which zstd, tar --zstd and every decoder pass over) holds the SHA-256
# of every byte before it: the decoder's own checks leave some bits of a compressed stream free (unused header
# bits, table descriptions that decode the same), this one leaves none.
TRAILER_MAGIC = 0x184D2A5E
TRAILER_TAG = b"netbundle-sha256\0"
TRAILER_SIZE = 8 + len(TRAILER_TAG) + 32


def trailer(digest: bytes) -> bytes:
    payload = TRAILER_TAG + digest
    return struct.pack("<II", TRAILER_MAGIC, len(payload)) + payload


class StagedBundle:
    """Members written so far, each hashed as it is staged.

    A collector's output lands here the moment it arrives, so an interrupted
    collection still has everything it gathered when the archive is written.
    """

    def __init__(self, parent: Path | None = None) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix=".netbundle-stage-", dir=parent))
        self.members: dict[str, Member] = {}

    def add_bytes(self, path: str, data: bytes, media_type: MediaType | str, provenance: Provenance) -> Member:
        member = Member(
            path=path,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            media_type=media_type,
            provenance=provenance,
        )
        if path in self.members:
            raise BundleWriteError(f"member staged twice: {path}")
        target = self._dir / path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        except OSError as exc:
            target.unlink(missing_ok=True)
            raise StagingError(f"{path} ({len(data)} bytes) not kept: {exc.strerror or exc}", exc.errno) from None
        self.members[path] = member
        return member

    def drop(self, path: str) -> None:
        """Forget a staged member and free its space (the bundle did not fit)."""
        self.members.pop(path, None)
        (self._dir / path).unlink(missing_ok=True)

    def read(self, path: str) -> bytes:
        """A staged member's bytes (to analyse what was collected before the archive is written)."""
        if path not in self.members:
            raise KeyError(path)
        return (self._dir / path).read_bytes()

    def cleanup(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def write(self, manifest: Manifest, out: Path, overwrite: bool = False) -> Path:
        """Write manifest.json first, then every member, then the manifest's digest; put the file into place only
        when whole — beside an existing file never (BundleWriteError), unless overwrite."""
        listed = {m.path for m in manifest.members}
        if listed != set(self.members):
            raise BundleWriteError("manifest members differ from staged members")
        out = out.resolve()
        fd, tmp = temp_beside(out)
        try:
            with os.fdopen(fd, "wb") as raw:
                with pyzstd.ZstdFile(raw, "w", level_or_option=ZSTD_OPTIONS) as zf:
                    with tarfile.open(fileobj=zf, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                        mtime = int(manifest.created.timestamp())
                        top = manifest.bundle_id
                        doc = manifest.model_dump_json(indent=2).encode()
                        _add(tar, f"{top}/manifest.json", io.BytesIO(doc), len(doc), mtime)
                        for path in sorted(self.members):
                            member = self.members[path]
                            with open(self._dir / path, "rb") as fh:
                                _add(tar, f"{top}/{path}", fh, member.size, mtime)
                        digest = (hashlib.sha256(doc).hexdigest() + "\n").encode()
                        _add(tar, f"{top}/{MANIFEST_DIGEST}", io.BytesIO(digest), len(digest), mtime)
                raw.flush()
                with open(tmp, "rb") as sealed:
                    raw.write(trailer(hashlib.file_digest(sealed, "sha256").digest()))
                raw.flush()
                os.fsync(raw.fileno())
            place(tmp, out, overwrite)
        except BaseException as exc:
            tmp.unlink(missing_ok=True)
            if isinstance(exc, OSError):
                raise BundleWriteError(f"writing {out}: {exc.strerror or exc}") from exc
            raise
        return out


def temp_beside(out: Path) -> tuple[int, Path]:
    """A hidden temp file in out's folder (so the final link or rename stays on one filesystem)."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".part", dir=out.parent)
    except OSError as exc:
        raise BundleWriteError(f"cannot write in {out.parent}: {exc.strerror}") from exc
    return fd, Path(tmp_name)


def place(tmp: Path, out: Path, overwrite: bool) -> None:
    """Move a finished temp file to out: a hard link fails if out exists, so nothing is ever replaced by
    accident, even by a writer racing us; overwrite replaces atomically."""
    if overwrite:
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)
    except FileExistsError:
        raise BundleWriteError(f"{out} exists: not overwritten (--force replaces it)") from None
    except OSError as exc:  # a filesystem without hard links: check, then rename (a narrow race, said here)
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV):
            raise
        if out.exists():
            raise BundleWriteError(f"{out} exists: not overwritten (--force replaces it)") from None
        os.replace(tmp, out)
        return
    tmp.unlink()


def _add(tar: tarfile.TarFile, name: str, fh: io.BufferedIOBase | io.BytesIO | io.BufferedReader, size: int, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, fh)
