"""The log-stream frame the Kubernetes engine reads bundles from: produced by the Job's own script (run here
with the real sh, coreutils' base64 and sha256sum), decoded in chunks of any size, and every way it can arrive
damaged is said rather than taken for a bundle."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from pathlib import Path

import pytest

from bundle.collect.kubefleet import NODE_SCRIPT, decode_frame


def _script_output(tmp_path: Path, payload: bytes, rc: int = 0) -> bytes:
    """The node script with a stand-in `netbundle` on PATH that writes `payload` as the bundle."""
    fake = tmp_path / "bin" / "netbundle"
    fake.parent.mkdir()
    (tmp_path / "payload").write_bytes(payload)
    fake.write_text(f"#!/bin/sh\necho 'collect says hello' >&2\n"
                    f"while [ $# -gt 0 ]; do [ \"$1\" = -o ] && cp {tmp_path}/payload \"$2\"; shift; done\nexit {rc}\n")
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:/usr/bin:/bin", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["sh", "-c", NODE_SCRIPT, "netbundle-fleet-node", "--passive"], capture_output=True,
                          env=env)
    assert proc.returncode == rc
    return proc.stderr + proc.stdout  # the kubelet's log: stderr was written first, then the frame


@pytest.mark.parametrize("size", [0, 1, 56, 57, 58, 100_003])
@pytest.mark.parametrize("chunk", [1, 7, 4096, 1 << 20])
def test_the_job_script_frame_decodes_byte_exact(tmp_path, size, chunk):
    payload = os.urandom(size) if size else b""
    log = _script_output(tmp_path, payload or b"x")
    payload = payload or b"x"
    sink = io.BytesIO()
    frame = decode_frame((log[i:i + chunk] for i in range(0, len(log), chunk)), sink, 1 << 30)
    assert frame.complete and frame.exit_code == 0 and frame.size == len(payload)
    assert sink.getvalue() == payload and frame.sha256 == hashlib.sha256(payload).hexdigest()
    assert list(frame.other) == ["collect says hello"]


def test_exit_code_of_an_incomplete_collect_travels(tmp_path):
    log = _script_output(tmp_path, b"partial bundle", rc=5)
    frame = decode_frame([log], io.BytesIO(), 1 << 30)
    assert frame.complete and frame.exit_code == 5


@pytest.mark.parametrize("damage, words", [
    (lambda log: log[: len(log) // 2], "the stream ended inside the frame"),
    (lambda log: log.replace(b"\n", b"\n\xff!\n", 3), "not base64"),
    (lambda log: log.replace(b"netbundle-frame-begin 3000", b"netbundle-frame-begin 9999999999"), "over the limit"),
    (lambda log: log.replace(b"netbundle-frame-begin 3000 ", b"netbundle-frame-begin 3000 zz"), "header is malformed"),
])
def test_a_damaged_frame_is_said(tmp_path, damage, words):
    log = damage(_script_output(tmp_path, os.urandom(3000)))
    frame = decode_frame([log], io.BytesIO(), 1 << 24)
    assert not frame.complete and words in frame.error, frame.error


def test_a_lost_line_is_caught_by_size_or_hash(tmp_path):
    """A log line dropped on the way (a rotation the reader missed): the byte count falls short of the header."""
    log = _script_output(tmp_path, os.urandom(3000))
    lines = log.split(b"\n")
    body_start = next(i for i, line in enumerate(lines) if line.startswith(b"netbundle-frame-begin")) + 1
    del lines[body_start + 3]
    frame = decode_frame([b"\n".join(lines)], io.BytesIO(), 1 << 24)
    assert not frame.complete and frame.written == 3000 - 57
