"""Fuzz the bundle reader and the capture analyser: mutated inputs must end in a result or one of our documented
errors, never another exception, with memory bounded.

    .venv/bin/python bench/fuzz.py [--cases 100000] [--seed 1]      (half reader, half capture analysis)

Mutations, from valid and hostile seeds (tests/data/hostile/*.tar.zst, the corpus captures, a pcapng of ours):
bytes flipped, inserted, deleted, runs zeroed or set to 0xff, length-like fields set to extremes, truncation,
splices of two seeds; for bundles also at the tar level (decompress, mutate, recompress), so the reader's
structural checks are reached and not just the zstd frame check. Prints cases, crashes (with the first few
tracebacks), time and peak RSS. No dependency beyond the standard library: the mutator is ours.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pyzstd  # noqa: E402

from bundle.analyze.pcap import analyze_capture  # noqa: E402
from bundle.archive import read_bundle  # noqa: E402
from bundle.errors import NetbundleError  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"


def mutate(rng: random.Random, data: bytes, other: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not buf:
            buf = bytearray(rng.randbytes(rng.randint(1, 64)))
        op = rng.randrange(8)
        at = rng.randrange(len(buf))
        if op == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[at:at] = rng.randbytes(rng.randint(1, 16))
        elif op == 2:
            del buf[at:at + rng.randint(1, 32)]
        elif op == 3:
            buf[at:at + rng.randint(1, 16)] = bytes(rng.randint(1, 16))
        elif op == 4:  # a length-like field to an extreme
            buf[at:at + 4] = rng.choice((b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x00\x00\x01\x00",
                                         b"\xff\xff\xff\x7f"))
        elif op == 5:
            del buf[rng.randrange(len(buf) + 1):]
        elif op == 6 and other:
            cut = rng.randrange(len(other))
            buf = buf[:at] + other[cut:cut + rng.randint(1, 512)] + buf[at:]
        else:
            buf[at] = rng.randrange(256)
    return bytes(buf)


def bundle_seeds() -> list[bytes]:
    """The hostile corpus, but not its decompression bombs: mutating those would measure the fuzzer's own
    decompression (the reader's bounds against bombs have their own tests)."""
    out = []
    for p in sorted((REPO / "tests" / "data" / "hostile").glob("*.tar.zst")):
        data = p.read_bytes()
        try:  # at most 4 MiB + 1 decompressed to know: the bomb itself is never unpacked here
            if len(pyzstd.ZstdDecompressor().decompress(data, max_length=(4 << 20) + 1)) > 4 << 20:
                continue
        except pyzstd.ZstdError:
            pass
        out.append(data)
    return out


def capture_seeds() -> list[bytes]:
    seeds = []
    if (CORPUS / "captures.tsv").exists():
        for line in (CORPUS / "captures.tsv").read_text().splitlines()[1:]:
            path = CORPUS / line.split("\t")[0]
            if path.is_file() and path.stat().st_size < 256 << 10:
                seeds.append(path.read_bytes())
    return seeds[:80]


def fuzz(cases: int, seed: int, target: str, tmp: Path,
         on_crash: Callable[[str], None] | None = None) -> tuple[int, int, list[str]]:
    """(cases run, crashes, first tracebacks) for target "reader" or "pcap"."""
    rng = random.Random(seed)
    seeds = bundle_seeds() if target == "reader" else capture_seeds()
    if not seeds:
        raise SystemExit(f"no seeds for {target}")
    crashes, examples = 0, []
    path = tmp / ("case.tar.zst" if target == "reader" else "case.pcap")
    for i in range(cases):
        data = rng.choice(seeds)
        other = rng.choice(seeds)
        if target == "reader" and rng.random() < 0.5:
            try:  # mutate the tar inside, keep the zstd frame valid: reaches the structural checks
                data = pyzstd.compress(mutate(rng, pyzstd.decompress(data), pyzstd.decompress(other)))
            except pyzstd.ZstdError:
                data = mutate(rng, data, other)
        else:
            data = mutate(rng, data, other)
        path.write_bytes(data)
        try:
            if target == "reader":
                read_bundle(path)
            else:
                analyze_capture(path)
        except NetbundleError:
            pass
        except Exception:  # noqa: BLE001 - the point: anything else is a crash
            crashes += 1
            if len(examples) < 5:
                examples.append(f"case {i}: {traceback.format_exc()}")
                if on_crash is not None:
                    on_crash(examples[-1])
    return cases, crashes, examples


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for target in ("reader", "pcap"):
            started = time.monotonic()
            n, crashes, examples = fuzz(args.cases // 2, args.seed, target, Path(tmp))
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"{target:<7} {n} cases, {crashes} crashes, {time.monotonic() - started:.0f} s, peak RSS {rss:.0f} MB")
            for e in examples:
                print(e)


if __name__ == "__main__":
    main()
