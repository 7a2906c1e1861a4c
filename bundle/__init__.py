"""netbundle: network-incident evidence bundles for Linux and Kubernetes."""

from bundle.errors import (
    ArchiveError,
    BundleWriteError,
    CollectError,
    CollectorTimeout,
    InvalidBundle,
    LabError,
    NetbundleError,
    PermissionDenied,
    RenderError,
    ToolMissing,
    UnsupportedFormatVersion,
    UsageError,
    VantageError,
)

__version__ = "0.1.0"

__all__ = [
    "ArchiveError",
    "BundleWriteError",
    "CollectError",
    "CollectorTimeout",
    "InvalidBundle",
    "LabError",
    "NetbundleError",
    "PermissionDenied",
    "RenderError",
    "ToolMissing",
    "UnsupportedFormatVersion",
    "UsageError",
    "VantageError",
    "__version__",
]
