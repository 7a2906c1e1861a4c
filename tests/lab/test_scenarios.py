"""Lab scenarios through the CLI: built for real, working as described, and removed completely."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from bundle.lab.topology import existing_namespaces, netns_pids
from tests.conftest import netbundle

pytestmark = pytest.mark.privileged


def _exec(ns: str, code: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=20)


def test_healthy_up_works_and_down_removes_everything():
    prefix = f"nbt-cli-{os.getpid() % 10000}"
    proc = netbundle("lab", "up", "healthy", "--prefix", prefix, "--json")
    try:
        assert proc.returncode == 0, proc.stderr
        info = json.loads(proc.stdout)
        ns = info["namespaces"]
        assert set(ns) == {"pod", "node", "remote", "server"}
        assert all(name.startswith(prefix + "-") for name in ns.values())
        assert info["collect"][:2] == ["netbundle", "collect"] and "--netns" in info["collect"]
        assert info["down"] == ["netbundle", "lab", "down", "healthy", "--prefix", prefix]
        # The control case really works: TCP to the server pod and across to the remote node.
        code = ("import socket\nfor a in ('10.244.1.3', '10.244.0.2'):\n"
                "    s = socket.create_connection((a, 8080), timeout=3); print(a, len(s.recv(100))); s.close()")
        out = _exec(ns["pod"], code)
        assert out.returncode == 0, out.stderr
        assert "10.244.1.3 100" in out.stdout and "10.244.0.2 100" in out.stdout
        again = netbundle("lab", "up", "healthy", "--prefix", prefix)
        assert again.returncode == 7 and "already exists" in again.stderr
        assert set(ns.values()) <= set(existing_namespaces())  # a failed second `up` removed nothing of the first
    finally:
        down = netbundle("lab", "down", "healthy", "--prefix", prefix)
    assert down.returncode == 0, down.stderr
    assert not [n for n in existing_namespaces() if n.startswith(prefix)]


def test_mtu_lab_is_a_real_blackhole(mtu_lab):
    pod = mtu_lab.namespaces["pod"]
    small = subprocess.run(["ip", "netns", "exec", pod, "ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1372",
                            "10.244.0.2"], capture_output=True)
    big = subprocess.run(["ip", "netns", "exec", pod, "ping", "-c", "1", "-W", "1", "-M", "do", "-s", "1373",
                          "10.244.0.2"], capture_output=True)
    assert small.returncode == 0 and big.returncode != 0
    assert netns_pids(mtu_lab.namespaces["remote"])  # the listener runs there


def test_lab_list_shows_state():
    proc = netbundle("lab", "list")
    assert proc.returncode == 0 and "healthy" in proc.stdout and "mtu" in proc.stdout
