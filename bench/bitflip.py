"""Exhaustive bit flips: every single-bit flip of a real bundle must be refused by the reader.

    sudo .venv/bin/python bench/bitflip.py [--slices route,dns] [--bundle FILE]

Collects a small real bundle (`netbundle collect --passive` from a fresh lab netns, the slices named), or takes
--bundle, then flips each bit of the file in turn and reads the result with the reader `validate` uses. Prints
how many flips were read as valid (the goal, issue 16: none), which, and the time taken. Format 1.1 bundles
(no zstd checksum, no SHA-256 trailer, no manifest digest) let some through: pass one with --bundle to compare.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bundle.archive import read_bundle  # noqa: E402
from bundle.errors import NetbundleError  # noqa: E402


def _collect(folder: Path, slices: str) -> Path:
    ns = f"nb-bench-flip-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        out = folder / "small.tar.zst"
        argv = [sys.executable, "-m", "bundle", "collect", "--passive", "--netns", ns, "-o", str(out)]
        for s in slices.split(","):
            argv += ["--slice", s]
        subprocess.run(argv, check=True, cwd=REPO, capture_output=True)
        return out
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--slices", default="route,dns")
    p.add_argument("--bundle", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = args.bundle or _collect(Path(tmp), args.slices)
        good = src.read_bytes()
        read_bundle(src)  # the original reads
        flipped = Path(tmp) / "flipped.tar.zst"
        accepted: list[int] = []
        started = time.monotonic()
        for bit in range(len(good) * 8):
            data = bytearray(good)
            data[bit // 8] ^= 1 << (bit % 8)
            flipped.write_bytes(data)
            try:
                read_bundle(flipped)
                accepted.append(bit)
            except NetbundleError:
                pass
        took = time.monotonic() - started
    print(f"{src.name}: {len(good)} bytes, {len(good) * 8} single-bit flips, {len(accepted)} read as valid "
          f"({took:.1f} s)" + (f": bits {accepted[:20]}" if accepted else ""))
    raise SystemExit(1 if accepted else 0)


if __name__ == "__main__":
    main()
