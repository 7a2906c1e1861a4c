"""Signed bundles in OpenSSH's SSHSIG format (namespace "netbundle"), so `ssh-keygen -Y verify` checks them as
well as `netbundle verify` does: the signature is FILE.sig beside the bundle, over the bundle's bytes.

Signing runs the operator's own `ssh-keygen -Y sign` (a key file, or a public key whose private half is in the
ssh-agent): no key handling of ours. Verifying is done here (OpenSSH's PROTOCOL.sshsig; Ed25519 keys) against an
allowed_signers file as ssh-keygen reads it, so a reader needs no OpenSSH to check a bundle it was handed."""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import shlex
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bundle.errors import SignatureError, SigningError

NAMESPACE = "netbundle"
_ARMOR = ("-----BEGIN SSH SIGNATURE-----", "-----END SSH SIGNATURE-----")
_HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}


@dataclass(frozen=True)
class Signer:
    principal: str
    key_type: str
    fingerprint: str  # SHA256:..., as ssh-keygen prints it


def signature_path(bundle: Path) -> Path:
    return bundle.with_name(bundle.name + ".sig")


def sign(bundle: Path, key: str, timeout: float = 60.0) -> Path:
    """FILE.sig from `ssh-keygen -Y sign -f KEY -n netbundle FILE`; SigningError with ssh-keygen's words. An
    existing FILE.sig is the caller's to move (ssh-keygen would ask, and a stale one must never pass as new)."""
    if signature_path(bundle).exists():
        raise SigningError(f"{signature_path(bundle)} exists: not overwritten")
    try:
        proc = subprocess.run(["ssh-keygen", "-Y", "sign", "-q", "-f", key, "-n", NAMESPACE, str(bundle)],
                              capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise SigningError("ssh-keygen is not installed (OpenSSH signs bundles)") from None
    except subprocess.TimeoutExpired:
        raise SigningError(f"ssh-keygen did not finish in {timeout:g} s (a passphrase prompt?)") from None
    out = signature_path(bundle)
    if proc.returncode != 0 or not out.exists():
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise SigningError(f"ssh-keygen -Y sign -f {shlex.quote(key)}: {why}")
    return out


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise SignatureError("malformed signature: truncated")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def u32(self) -> int:
        return int(struct.unpack("!I", self.take(4))[0])

    def string(self) -> bytes:
        return self.take(self.u32())


def _string(b: bytes) -> bytes:
    return struct.pack("!I", len(b)) + b


def _fingerprint(blob: bytes) -> str:
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _unarmor(text: str) -> bytes:
    lines = [line.strip() for line in text.strip().splitlines()]
    if len(lines) < 3 or lines[0] != _ARMOR[0] or lines[-1] != _ARMOR[1]:
        raise SignatureError("not an SSH signature (no BEGIN/END SSH SIGNATURE armor)")
    try:
        return base64.b64decode("".join(lines[1:-1]), validate=True)
    except ValueError:
        raise SignatureError("malformed signature: not base64") from None


def _allowed(path: Path, blob: bytes) -> list[tuple[str, list[str]]]:
    """(principals, namespaces) of each allowed_signers line naming this key (ssh-keygen's ALLOWED SIGNERS
    format: principals, options, key type, base64 key)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise SignatureError(f"cannot read {path}: {exc.strerror}") from None
    key = base64.b64encode(blob).decode()
    out = []
    for line in text.splitlines():
        parts = shlex.split(line, comments=True)
        if len(parts) < 3:
            continue
        principals, rest = parts[0], parts[1:]
        options = rest.pop(0) if not rest[0].startswith(("ssh-", "ecdsa-", "sk-")) else ""
        if len(rest) >= 2 and rest[1] == key:
            spaces = [o.split("=", 1)[1].strip('"') for o in options.split(",") if o.startswith("namespaces=")]
            out.append((principals, ",".join(spaces).split(",") if spaces else []))
    return out


def verify(bundle: Path, allowed_signers: Path, signature: Path | None = None,
           identity: str | None = None) -> Signer:
    """Check FILE.sig over the bundle's bytes: the SSHSIG structure, the namespace, the key in allowed_signers
    (for identity when given) and the Ed25519 signature. SignatureError says which check failed."""
    sig_file = signature or signature_path(bundle)
    try:
        r = _Reader(_unarmor(sig_file.read_text()))
    except OSError as exc:
        raise SignatureError(f"cannot read {sig_file}: {exc.strerror}") from None
    if r.take(6) != b"SSHSIG" or r.u32() != 1:
        raise SignatureError("not an SSHSIG version 1 signature")
    blob, namespace, _reserved, hash_alg, sig_blob = r.string(), r.string(), r.string(), r.string(), r.string()
    if namespace.decode(errors="replace") != NAMESPACE:
        raise SignatureError(f"signed for namespace {namespace.decode(errors='replace')!r}, not {NAMESPACE!r}")
    key = _Reader(blob)
    key_type = key.string().decode(errors="replace")
    if key_type != "ssh-ed25519":
        raise SignatureError(f"{key_type} keys are not verified here (use ssh-keygen -Y verify)")
    raw_key = key.string()
    hasher = _HASHES.get(hash_alg.decode(errors="replace"))
    if hasher is None:
        raise SignatureError(f"unknown hash algorithm {hash_alg!r}")
    sig = _Reader(sig_blob)
    if sig.string() != b"ssh-ed25519":
        raise SignatureError("the signature's algorithm is not its key's")
    raw_sig = sig.string()
    h = hasher()
    try:
        with open(bundle, "rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    except OSError as exc:
        raise SignatureError(f"cannot read {bundle}: {exc.strerror}") from None
    signed = b"SSHSIG" + _string(namespace) + _string(b"") + _string(hash_alg) + _string(h.digest())
    try:
        Ed25519PublicKey.from_public_bytes(raw_key).verify(raw_sig, signed)
    except (InvalidSignature, ValueError):
        raise SignatureError(f"the signature does not match {bundle.name}: the file changed after it was "
                             f"signed, or it was signed by another key") from None
    fingerprint = _fingerprint(blob)
    matches = [(p, ns) for p, ns in _allowed(allowed_signers, blob) if not ns or NAMESPACE in ns]
    if identity is not None:
        matches = [(p, ns) for p, ns in matches if any(fnmatch.fnmatchcase(identity, pat) for pat in p.split(","))]
    if not matches:
        who = f" for {identity}" if identity else ""
        raise SignatureError(f"the key {fingerprint} is not in {allowed_signers}{who} for namespace {NAMESPACE}")
    return Signer(principal=identity or matches[0][0], key_type="ED25519", fingerprint=fingerprint)
