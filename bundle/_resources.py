"""Where the templates/ and schemas/ folders are: inside the wheel, or at the repo's top level."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    """`templates` or `schemas`: the wheel carries them as bundle/_data/<kind>."""
    for candidate in (_PACKAGE / "_data" / kind, _PACKAGE.parent / kind):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"netbundle's {kind}/ folder is missing from this installation")
