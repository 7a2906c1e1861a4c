"""`netbundle watch`, the flight recorder, on real labs: an intermittent SYN drop (the `flaky` scenario: nft
`numgen random` drops one forwarded SYN in two) and a resolver that stops answering for a few seconds (a drop
rule switched on and off by the test). The watch fires, and its one bundle holds the packets from before the
trigger (checked against tcpdump reading the same ring), the probe history and a ladder naming the owner."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bundle.archive import read_bundle
from bundle.lab.scenarios import _DROP_DNS
from tests.conftest import sigint_default

pytestmark = pytest.mark.privileged


def _watch(*args: str, timeout: float = 150) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bundle", "watch", *args, "--json"], capture_output=True, text=True,
                          timeout=timeout)


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_an_intermittent_syn_drop_is_caught_with_what_came_before(lab_scores, tmp_path):
    """The `flaky` scenario as `lab score` ran it: `netbundle watch` on the client pod and the node until one
    bundle (tests/conftest.py lab_scores)."""
    bundle_path = lab_scores[1] / "flaky.tar.zst"
    b = read_bundle(bundle_path)
    rec = b.watch()
    assert rec is not None and rec.trigger.kind == "connect_failed" and rec.trigger.target == "10.244.1.3:8080"
    [tot] = rec.totals
    assert tot.failed >= 1 and tot.sent >= tot.failed and rec.vantage.endswith("-flaky-pod")
    assert b.manifest.invocation.argv[:2] == ["netbundle", "watch"]
    # the ring: the failed probe's SYN and its retransmissions (the probe began at the trigger's time and
    # gave up 2.5 s later), captured before the bundle was written
    ring = dict(b.operator_captures())[rec.ring_member]
    began = rec.trigger.at.timestamp() * 1e9
    lost = [f for f in ring.flows if f.server == "10.244.1.3:8080" and f.handshake.value == "syn_unanswered"
            and began <= f.first_ns <= began + 2.5e9]
    assert lost and max(f.syn_sent for f in lost) >= 2, [(f.client, f.handshake, f.syn_sent) for f in ring.flows]
    # differential: tcpdump reading the ring counts the same SYNs to the target as the analysis
    pcap = tmp_path / "ring.pcapng"
    pcap.write_bytes(_member(bundle_path, rec.ring_member.replace("analysis.json", "watch-ring.pcapng")))
    dump = subprocess.run(["tcpdump", "-nn", "-r", str(pcap), "tcp[tcpflags] & (tcp-syn|tcp-ack) == tcp-syn and "
                           "dst host 10.244.1.3 and dst port 8080"], capture_output=True, text=True, check=True)
    assert len(dump.stdout.splitlines()) == sum(f.syn_sent for f in ring.flows if f.server == "10.244.1.3:8080")
    # the probe history is evidence: the ladder names transport, the watch's finding counts the failures
    report = b.findings()
    [lad] = [x for x in report.ladders if x.target == "10.244.1.3:8080"]
    assert lad.owner.value == "transport"
    [wf] = [f for f in report.findings if f.id == "watch.connect_failures"]
    assert f"{tot.failed} of {tot.sent} TCP connects" in wf.summary and wf.vantage == rec.vantage
    show = subprocess.run([sys.executable, "-m", "bundle", "show", str(bundle_path)], capture_output=True, text=True)
    assert "trigger connect_failed" in show.stdout and f"{tot.failed} of {tot.sent} failed" in show.stdout
    # the appendix's timeline starts with the ring, the trigger marked across it, the collection after
    page = tmp_path / "a.html"
    subprocess.run([sys.executable, "-m", "bundle", "render", str(bundle_path), "-o", str(page)], check=True,
                   capture_output=True)
    html = page.read_text()
    timeline = html[html.index('id="timeline"'):]
    assert timeline.index("watch: ring before the trigger") < timeline.index(f"{rec.vantage} route")
    assert 'stroke="#b42318" stroke-width="2"><title>trigger connect_failed' in timeline


def _member(path: Path, name: str) -> bytes:
    import tarfile

    import pyzstd

    with pyzstd.ZstdFile(path) as zf, tarfile.open(fileobj=zf, mode="r|") as tar:
        for info in tar:
            if info.name.endswith("/" + name) or info.name == name:
                return tar.extractfile(info).read()
    raise AssertionError(f"{name} not in {path}")


def test_a_resolver_that_stops_answering_for_seconds_is_caught(lab, tmp_path):
    """dns-ndots (dnsmasq behind the kube-dns ClusterIP): the test drops DNS at the node for six seconds, three
    seconds into the watch. The watch fires on the failed resolution; the ring holds the unanswered queries."""
    info = lab("dns-ndots")
    node = info.namespaces["node"]
    rules = _DROP_DNS.replace("nb_lab", "nbt_flap")

    def flap() -> None:
        time.sleep(3)
        subprocess.run(["ip", "netns", "exec", node, "nft", "-f", "-"], input=rules, text=True, check=True)
        time.sleep(6)
        subprocess.run(["ip", "netns", "exec", node, "nft", "delete", "table", "inet", "nbt_flap"], check=True)

    flapper = threading.Thread(target=flap)
    flapper.start()
    try:
        proc = _watch("--name", "payments", "--netns", info.namespaces["pod"], "--for", "40s", "--max-bundles", "1",
                      "--post-trigger", "1", "--out-dir", str(tmp_path), "--slice", "route", "--slice", "capture")
    finally:
        flapper.join()
        subprocess.run(["ip", "netns", "exec", node, "nft", "delete", "table", "inet", "nbt_flap"],
                       capture_output=True)
    assert proc.returncode == 0, proc.stderr
    [bundle_path] = tmp_path.glob("watch-*.tar.zst")
    b = read_bundle(bundle_path)
    rec = b.watch()
    assert rec.trigger.kind == "dns_failed" and rec.trigger.target == "payments"
    ring = dict(b.operator_captures())[rec.ring_member]
    unanswered = [d for d in ring.dns if d.rcode is None and d.qname.startswith("payments")]
    answered = [d for d in ring.dns if d.rcode is not None and d.qname.startswith("payments")]
    assert unanswered and answered  # before the drop it answered; then the queries went unanswered
    assert any(f.id == "watch.dns_failures" for f in b.findings().findings)


def test_a_trigger_that_never_stops_is_bounded(tmp_path):
    """--trigger-cmd false fires every round: the cooldown spaces the bundles, --max-bundles ends the watch,
    every trigger held back is said; a disk floor above what is free writes nothing."""
    proc = _watch("--trigger-cmd", "false", "--every", "0.5", "--cooldown", "3", "--max-bundles", "2",
                  "--post-trigger", "0", "--for", "60s", "--no-counter-triggers", "--out-dir", str(tmp_path),
                  "--slice", "route", "--timeout", "10")
    assert proc.returncode == 0, proc.stderr
    events = _events(proc.stdout)
    bundles = [e for e in events if e["event"] == "bundle"]
    held = [e for e in events if e["event"] == "held_back"]
    assert len(bundles) == 2 and len(list(tmp_path.glob("watch-*.tar.zst"))) == 2
    assert held and all(e["why"].startswith("cooldown") for e in held)
    assert events[-1]["ended_by"] == "--max-bundles 2 written"
    first, second = (read_bundle(Path(e["path"])).watch() for e in bundles)
    assert second.bundle_index == 2 and second.triggers_seen > first.triggers_seen + 2
    assert first.trigger.kind == "command_failed"
    full = tmp_path / "floor"
    full.mkdir()
    proc = _watch("--trigger-cmd", "false", "--every", "0.5", "--for", "2s", "--disk-floor", str(1 << 40),
                  "--no-counter-triggers", "--out-dir", str(full), "--slice", "route")
    assert proc.returncode == 0 and not list(full.glob("*.tar.zst"))
    assert all(e["why"].startswith("only ") for e in _events(proc.stdout) if e["event"] == "held_back")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_it_cleanly(tmp_path, sig):
    """Nothing fired: SIGINT or SIGTERM ends the watch at once with exit 0 and no bundle, or with
    --bundle-on-exit one bundle whose trigger says so."""
    for on_exit in (False, True):
        out = tmp_path / f"exit-{on_exit}"
        out.mkdir()
        proc = subprocess.Popen([sys.executable, "-m", "bundle", "watch", "--trigger-cmd", "true", "--every", "0.5",
                                 "--no-counter-triggers", "--out-dir", str(out), "--slice", "route", "--json",
                                 *(["--bundle-on-exit"] if on_exit else [])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=sigint_default)
        time.sleep(2)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, stderr
        assert _events(stdout)[-1]["event"] == "stop"
        got = list(out.glob("*.tar.zst"))
        assert len(got) == (1 if on_exit else 0)
        if on_exit:
            assert read_bundle(got[0]).watch().trigger.kind == "exit"


_NEVER_ACCEPTS = """
import socket, time
s = socket.socket()
s.bind(("127.0.0.1", 9000))
s.listen(1)
time.sleep(600)
"""


def test_failures_are_named_with_the_counter_that_rose_with_them(tmp_path):
    """A listener that never accepts (backlog 1): once its accept queue is full the kernel drops the SYNs and
    counts TcpExtListenOverflows. The watch's probes fail, the counter rises in the same seconds, and the
    finding names the counter beside the failures."""
    import os

    from bundle.lab.topology import Topology

    t = Topology(f"nbt-wlo-{os.getpid() % 100000}")
    try:
        ns = t.add_netns("pod")
        t.spawn("pod", [sys.executable, "-c", _NEVER_ACCEPTS])
        t.wait_listening("pod", 9000)
        proc = _watch("--target", "127.0.0.1:9000", "--netns", ns, "--every", "0.5", "--connect-timeout", "0.5",
                      "--for", "40s", "--max-bundles", "1", "--post-trigger", "1", "--out-dir", str(tmp_path),
                      "--slice", "route", "--slice", "counters")
    finally:
        t.teardown()
    assert proc.returncode == 0, proc.stderr
    [path] = tmp_path.glob("watch-*.tar.zst")
    b = read_bundle(path)
    rec = b.watch()
    assert rec.trigger.kind in ("connect_failed", "counter_rise")
    assert any("TcpExtListenOverflows" in r.deltas for r in rec.counters)
    [wf] = [f for f in b.findings().findings if f.id == "watch.connect_failures"]
    assert "in the same seconds: " in wf.summary and "TcpExtListenOverflows +" in wf.summary, wf.summary
