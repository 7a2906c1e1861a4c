"""The one exception tree of netbundle, and the exit code each branch maps to.

    NetbundleError                      exit 1
    ├── UsageError                      exit 2   bad arguments or target specs
    ├── CollectError                    exit 6
    │   ├── VantageError                         netns missing or not enterable
    │   ├── CollectorTimeout
    │   ├── PermissionDenied
    │   └── ToolMissing
    ├── ArchiveError                    exit 3
    │   ├── InvalidBundle                        hostile or corrupt bundle
    │   ├── UnsupportedFormatVersion    exit 4
    │   ├── SignatureError              exit 3   a signature that does not verify (netbundle verify)
    │   ├── SigningError                exit 9   the bundle is written, its signature could not be made
    │   └── BundleWriteError            exit 6
    │       └── StagingError                     one member not staged (the collect goes on)
    ├── LabError                        exit 7
    └── RenderError                     exit 8

Foreign errors (pyroute2, zstd, pydantic, tarfile) are translated where they
are raised and never leave their subpackage.
"""

from __future__ import annotations

from typing import ClassVar


class NetbundleError(Exception):
    """Base of every error netbundle raises on purpose."""

    exit_code: ClassVar[int] = 1


class UsageError(NetbundleError):
    exit_code = 2


class CollectError(NetbundleError):
    exit_code = 6


class VantageError(CollectError):
    """A vantage (netns) that cannot be found or entered."""


class CollectorTimeout(CollectError):
    pass


class PermissionDenied(CollectError):
    pass


class ToolMissing(CollectError):
    pass


class ArchiveError(NetbundleError):
    exit_code = 3


class InvalidBundle(ArchiveError):
    """The bundle is corrupt or hostile; `member` names the offending member."""

    def __init__(self, message: str, member: str | None = None) -> None:
        self.member = member
        super().__init__(f"{member}: {message}" if member else message)


class UnsupportedFormatVersion(ArchiveError):
    exit_code = 4


class SignatureError(ArchiveError):
    exit_code = 3


class SigningError(ArchiveError):
    exit_code = 9


class BundleWriteError(ArchiveError):
    exit_code = 6


class StagingError(BundleWriteError):
    """One member could not be staged (a full disk, mostly): the collect drops it and says so."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        self.errno = errno
        super().__init__(message)


class LabError(NetbundleError):
    exit_code = 7


class RenderError(NetbundleError):
    exit_code = 8
