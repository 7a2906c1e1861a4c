"""A short run of bench/fuzz.py's target in CI: mutated bundles and captures end in a result or one of our
documented errors, never another exception (the 100,000-case run and its figures: docs/reliability.md)."""

from __future__ import annotations

import importlib.util
import resource
from pathlib import Path

import pytest

from tests.conftest import corpus_file

_SPEC = importlib.util.spec_from_file_location("nbt_fuzz", Path(__file__).resolve().parent.parent / "bench" / "fuzz.py")
assert _SPEC is not None and _SPEC.loader is not None
fuzz_module = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(fuzz_module)


@pytest.mark.parametrize("target", ["reader", "pcap"])
def test_short_fuzz_run(target, tmp_path):
    corpus_file("captures.tsv")  # the capture seeds come from the corpus
    cases, crashes, examples = fuzz_module.fuzz(3000, 7, target, tmp_path)
    assert cases == 3000 and crashes == 0, examples
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss < 1024 * 1024  # KiB: under 1 GiB for the whole session


def test_the_fuzzer_reports_a_crash(tmp_path, monkeypatch):
    """The harness itself: an exception that is not ours is counted as a crash, with its traceback."""
    def boom(path):
        raise RuntimeError("planted")

    monkeypatch.setattr(fuzz_module, "analyze_capture", boom)
    cases, crashes, examples = fuzz_module.fuzz(5, 1, "pcap", tmp_path)
    assert crashes == 5 and "planted" in examples[0]
