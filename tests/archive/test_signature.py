"""Signed bundles: `collect --sign KEY` writes BUNDLE.sig with the operator's own `ssh-keygen` (a key file or the
ssh-agent); `ssh-keygen -Y verify` and `netbundle verify` both accept it, and both refuse it once a member is
changed (the archive rebuilt and resealed, so only the signature can tell), for another identity, or for a
signature made for another namespace."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from bundle.archive.signature import verify
from bundle.errors import SignatureError
from bundle.models.manifest import FORMAT_VERSION
from tests.archive.test_integrity import _members, _repack
from tests.conftest import fresh, netbundle

IDENTITY = "oncall@example.com"


@pytest.fixture
def key(tmp_path) -> tuple[Path, Path]:
    """(private key, allowed_signers naming its public key for netbundle)."""
    path = tmp_path / "id_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", str(path)], check=True)
    pub = (tmp_path / "id_ed25519.pub").read_text().split()
    allowed = tmp_path / "allowed_signers"
    allowed.write_text(f'{IDENTITY} namespaces="netbundle" {pub[0]} {pub[1]}\n')
    return path, allowed


def _ssh_verify(bundle: Path, allowed: Path, identity: str = IDENTITY, sig: Path | None = None) -> int:
    with open(bundle, "rb") as fh:
        return subprocess.run(["ssh-keygen", "-Y", "verify", "-f", str(allowed), "-I", identity, "-n", "netbundle",
                               "-s", str(sig or Path(f"{bundle}.sig"))], stdin=fh, capture_output=True).returncode


def _signed(tmp_path: Path, key: Path, name: str = "b.tar.zst", env: dict[str, str] | None = None) -> Path:
    out = tmp_path / name
    proc = subprocess.run([*netbundle_argv(), "collect", "--passive", "--slice", "route", "-o", str(out), "--sign",
                           str(key)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"signed: {out}.sig" in proc.stderr and f"sha256 " in proc.stderr
    return out


def netbundle_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "bundle"]


def test_a_signed_bundle_verifies_both_ways(tmp_path, key):
    out = _signed(tmp_path, key[0])
    assert _ssh_verify(out, key[1]) == 0
    proc = netbundle("verify", str(out), "--allowed-signers", str(key[1]), "--identity", IDENTITY)
    assert proc.returncode == 0, proc.stderr
    assert f"good netbundle signature by {IDENTITY} (ED25519 SHA256:" in proc.stdout and f"valid netbundle {FORMAT_VERSION}" in proc.stdout


def test_a_changed_member_is_refused_by_both(tmp_path, key):
    out = _signed(tmp_path, key[0])
    members = _members(out)
    changed = [(n, d.replace(b'"active_probes": false', b'"active_probes": true ')
                if n.endswith("route.json") else d) for n, d in members]
    assert changed != members
    # the manifest's SHA-256 for route.json must follow, or validate alone would see it: rebuild it honestly
    import hashlib
    import json

    manifest_name = next(n for n, _ in changed if n.endswith("/manifest.json"))
    doc = json.loads(dict(changed)[manifest_name])
    for m in doc["members"]:
        if m["path"].endswith("route.json"):
            m["sha256"] = hashlib.sha256(next(d for n, d in changed if n.endswith("route.json"))).hexdigest()
    new_manifest = json.dumps(doc, indent=2).encode()
    rebuilt = [(n, new_manifest if n == manifest_name else
                (hashlib.sha256(new_manifest).hexdigest() + "\n").encode() if n.endswith("/manifest.sha256") else d)
               for n, d in changed]
    out.write_bytes(_repack(rebuilt))
    assert netbundle("validate", str(out)).returncode == 0  # a valid bundle: only the signature can tell
    assert _ssh_verify(out, key[1]) != 0
    proc = netbundle("verify", str(out), "--allowed-signers", str(key[1]))
    assert proc.returncode == 3 and "does not match" in proc.stderr and proc.stderr.count("\n") == 1


def test_wrong_identity_and_wrong_namespace_are_refused(tmp_path, key):
    out = _signed(tmp_path, key[0])
    with pytest.raises(SignatureError, match="not in .* for someone@else"):
        verify(out, key[1], identity="someone@else")
    other = tmp_path / "other.sig"
    Path(f"{out}.sig").rename(tmp_path / "netbundle.sig")
    subprocess.run(["ssh-keygen", "-Y", "sign", "-q", "-f", str(key[0]), "-n", "file", str(out)], check=True,
                   stdin=subprocess.DEVNULL)
    Path(f"{out}.sig").rename(other)
    with pytest.raises(SignatureError, match="namespace 'file'"):
        verify(out, key[1], signature=other)
    assert _ssh_verify(out, key[1], sig=other) != 0


def test_signing_through_the_agent(tmp_path, key):
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        for _ in range(50):
            if sock.exists():
                break
            __import__("time").sleep(0.05)
        subprocess.run(["ssh-add", "-q", str(key[0])], env=env, check=True, capture_output=True)
        key[0].unlink()  # only the agent holds the private key now
        out = _signed(tmp_path, Path(f"{key[0]}.pub"), env=env)
        assert _ssh_verify(out, key[1]) == 0
        assert verify(out, key[1]).principal == IDENTITY
    finally:
        agent.terminate()
        agent.wait(timeout=10)


def test_an_existing_signature_is_never_replaced_unless_forced(tmp_path, key):
    out = _signed(tmp_path, key[0])
    sig = Path(f"{out}.sig")
    old = sig.read_bytes()
    out.unlink()  # the bundle gone, its signature left: a new collect to that name must not sign over it
    proc = netbundle("collect", "--passive", "--slice", "route", "-o", str(out), "--sign", str(key[0]))
    assert proc.returncode == 6 and f"{sig} exists" in proc.stderr and sig.read_bytes() == old
    proc = netbundle("collect", "--passive", "--slice", "route", "-o", str(out), "--sign", str(key[0]), "--force")
    assert proc.returncode == 0, proc.stderr
    assert sig.read_bytes() != old and _ssh_verify(out, key[1]) == 0


def test_an_unusable_key_leaves_the_bundle_and_says_so(tmp_path):
    bad = tmp_path / "not-a-key"
    bad.write_text("nothing here\n")
    out = fresh(tmp_path)
    proc = netbundle("collect", "--passive", "--slice", "route", "-o", str(out), "--sign", str(bad))
    assert proc.returncode == 9 and "but not signed" in proc.stderr and proc.stderr.strip().count("\n") <= 1
    assert out.exists() and netbundle("validate", str(out)).returncode == 0
    missing = netbundle("collect", "--passive", "-o", str(tmp_path / "c.tar.zst"), "--sign", str(tmp_path / "nope"))
    assert missing.returncode == 2 and not (tmp_path / "c.tar.zst").exists()
