"""Write the JSON Schema of every bundle document into schemas/, or check they are current.

    python -m bundle.schemas            # regenerate schemas/
    python -m bundle.schemas --check    # exit 1 if schemas/ differs from the models
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bundle.models import (
    CaptureAnalysis,
    CountersSlice,
    DnsSlice,
    Finding,
    FindingsReport,
    KubeSlice,
    Manifest,
    Model,
    NatSlice,
    RouteSlice,
    SocketsSlice,
    SocketTable,
    WatchRecord,
)
from bundle.models.incidentset import SetManifest

DOCUMENTS: dict[str, type[Model]] = {
    "manifest": Manifest,
    "route": RouteSlice,
    "sockets": SocketsSlice,
    "socket-table": SocketTable,
    "dns": DnsSlice,
    "capture-analysis": CaptureAnalysis,
    "nat": NatSlice,
    "kube": KubeSlice,
    "counters": CountersSlice,
    "watch": WatchRecord,
    "findings": FindingsReport,
    "finding": Finding,
    "set-manifest": SetManifest,
}


def render_schemas() -> dict[str, str]:
    out = {}
    for name, model in DOCUMENTS.items():
        schema = model.model_json_schema(mode="serialization")
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        schema["$id"] = f"netbundle:{name}.schema.json"
        out[f"{name}.schema.json"] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def _default_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "schemas"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bundle.schemas")
    p.add_argument("--check", action="store_true", help="compare instead of writing")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    folder: Path = args.out or _default_dir()
    wanted = render_schemas()
    if args.check:
        stale = [n for n, text in wanted.items() if not (folder / n).is_file() or (folder / n).read_text() != text]
        extra = sorted(p.name for p in folder.glob("*.schema.json") if p.name not in wanted) if folder.is_dir() else []
        for name in stale:
            print(f"schema out of date: {folder / name} (run: python -m bundle.schemas)")
        for name in extra:
            print(f"schema without a model: {folder / name}")
        return 1 if stale or extra else 0
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in wanted.items():
        (folder / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
