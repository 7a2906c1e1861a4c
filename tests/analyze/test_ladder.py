"""The ladder on every lab scenario, through `netbundle lab score` (the engine's regression gate): each scenario
built, collected by a real `netbundle collect`, and its owner and cause held against what the scenario says.
Then, on the same bundles: findings.json equals `netbundle analyze`, the "explained by" chains the rules must
draw, the healthy scenarios' red herrings kept at info, and each appendix opened in headless Chromium."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bundle.archive import read_bundle
from bundle.lab import scenarios
from bundle.models import FindingsReport, Layer, TargetLadder, Verdict
from tests.conftest import netbundle

pytestmark = pytest.mark.privileged
NEW = ("k8s-healthy", "context-only", "stale-dnat-blackhole", "rp-filter", "stale-dns-record", "name-refused",
       "mtu-behind-dnat", "reject-with-endpoints")


@pytest.fixture(scope="module")
def scored(lab_scores) -> tuple[dict[str, object], Path]:
    """One `lab score` over every scenario (tests/conftest.py); its bundles kept for the tests below."""
    return lab_scores


def _report(scored: tuple[dict[str, object], Path], scenario: str) -> FindingsReport:
    report = read_bundle(scored[1] / f"{scenario}.tar.zst").findings()
    assert report is not None, "findings.json is written at collect time"
    return report


def _row(report: FindingsReport, target: str) -> TargetLadder:
    return next(lad for lad in report.ladders if lad.target == target)


def _ids(report: FindingsReport, indexes: list[int]) -> set[str]:
    return {report.findings[i].id for i in indexes}


def test_every_scenario_scores_right(scored):
    result, _ = scored
    assert result["total"] == len(scenarios.SCENARIOS) >= 19
    wrong = [s for s in result["scores"] if not s["right"]]  # type: ignore[union-attr]
    assert wrong == [] and result["right"] == result["total"]
    assert set(NEW) <= {s["scenario"] for s in result["scores"]}  # type: ignore[union-attr]


def test_score_is_a_gate(scored, tmp_path):
    """lab score exits 7 and says WRONG when a scenario's verdict does not hold: scored here against a bundle
    of another scenario through the same scoring code."""
    from bundle.lab.score import Expect, score

    report = _report(scored, "healthy")
    row = score("healthy-as-mtu", Expect("10.244.0.2:8080", "route", ("mtu.blackhole",)), report)
    assert not row.right and row.named == "no owner"
    assert not score("mtu-as-healthy", Expect(None, None), _report(scored, "mtu")).right


@pytest.mark.parametrize("scenario", sorted(scenarios.SCENARIOS))
def test_findings_json_is_analyze_and_the_appendix_opens(scored, tmp_path, scenario):
    out = scored[1] / f"{scenario}.tar.zst"
    stored = _report(scored, scenario)
    recomputed = json.loads(netbundle("analyze", "--json", str(out), check=True).stdout)
    assert recomputed == json.loads(stored.model_dump_json())
    assert stored.summary and len(stored.summary) <= 5
    # one fact, one finding: repeated symptoms of one kind, vantage and target are counted, not listed
    keys = [(f.id, f.vantage, f.target) for f in stored.findings]
    assert len(keys) == len({(i, v, t.model_dump_json() if t else None) for i, v, t in keys}), keys
    for lad in stored.ladders:
        assert lad.client is not None and lad.vantages and {v.role.value for v in lad.vantages} >= {"client"}
        if lad.owner is not None:  # a layer before the owner fails only as the cause's symptom
            before = [lv for lv in lad.layers][: [lv.layer for lv in lad.layers].index(lad.owner)]
            assert all(lv.verdict is not Verdict.FAIL or lv.explained_by for lv in before), lad
            assert stored.proof
    _browse(out, tmp_path, scenario)


def test_symptom_explained_by_stale_dnat(scored):
    report = _report(scored, "stale-dnat")
    lad = _row(report, "10.96.0.20:443")
    transport = lad.layers[1]
    assert transport.verdict is Verdict.FAIL and _ids(report, transport.explained_by) == {"service.stale_dnat"}
    [e] = [e for e in report.explanations if e.rule == "stale_dnat"]
    assert {"transport.connect_timeout", "transport.syn_sent_stuck"} <= _ids(report, e.effects)
    assert all(report.findings[i].vantage == lad.client for i in e.effects)  # the client's symptoms
    # the capture's unanswered SYN is the same fact as the probe's timeout: one finding, its packets cited
    [timeout] = [f for f in report.findings if f.id == "transport.connect_timeout" and f.vantage == lad.client]
    assert any(ev.member.endswith("/capture.json") for ev in timeout.evidence)
    assert not [f for f in report.findings if f.id == "capture.syn_unanswered" and f.vantage == lad.client
                and f.target is not None and f.target.address == "10.96.0.20"]
    assert "explains the transport failure" in report.summary[1]


def test_stale_dnat_into_a_blackhole(scored):
    report = _report(scored, "stale-dnat-blackhole")
    front = _row(report, "10.96.0.20:443")
    assert front.owner is Layer.SERVICE
    # the old pod address: the node (on the client's path) refuses it, and that explains the client's timeout
    gone = _row(report, f"{scenarios.GONE_POD}:8080")
    cause = report.findings[gone.cause]  # type: ignore[index]
    assert gone.owner is Layer.ROUTE and cause.id == "route.no_route" and cause.vantage.endswith("-node")
    assert cause.vantage in {v.vantage for v in gone.vantages if v.role.value == "path"}


def test_conntrack_exhaustion_explains_new_flows(scored):
    report = _report(scored, "conntrack-full")
    lad = _row(report, "10.244.0.2:9090")
    cause = report.findings[lad.cause]  # type: ignore[index]
    assert cause.vantage.endswith("-node") and cause.id.startswith("service.conntrack_")
    assert _ids(report, lad.layers[1].explained_by) <= {"service.conntrack_near_max", "service.conntrack_dropping"}
    assert lad.layers[1].explained_by


def test_rp_filter_cites_the_counter_on_the_path(scored):
    report = _report(scored, "rp-filter")
    lad = _row(report, "10.244.0.2:8080")
    cause = report.findings[lad.cause]  # type: ignore[index]
    assert cause.id == "counters.rp_filter_drops" and cause.vantage.endswith("-node")
    assert cause.severity.value == "critical"  # it explains the client's failure
    assert [e.pointer for e in cause.evidence] == ["delta.TcpExtIPReversePathFilter"]
    node = read_bundle(scored[1] / "rp-filter.tar.zst").counters(cause.vantage)
    assert node is not None and node.delta["TcpExtIPReversePathFilter"] > 0
    [e] = [e for e in report.explanations if e.cause == lad.cause]
    assert e.rule == "rp_filter_asymmetric" and "transport.connect_timeout" in _ids(report, e.effects)
    # the node's own connects work (its capture still sees the pod's forwarded SYNs go unanswered)
    b = read_bundle(scored[1] / "rp-filter.tar.zst")
    probes = b.sockets(cause.vantage).probes  # type: ignore[union-attr]
    assert [p.outcome.value for p in probes if p.port == 8080] == ["connected"]
    assert next(v for v in lad.vantages if v.vantage == cause.vantage).role.value == "path"


def test_dead_dns_answer_owns_the_connect_failure(scored):
    report = _report(scored, "stale-dns-record")
    lad = _row(report, "orders:8080")
    cause = report.findings[lad.cause]  # type: ignore[index]
    assert cause.id == "dns.dead_answer" and cause.target is not None
    assert cause.target.address == scenarios.GONE_POD and cause.target.name == "orders"
    assert lad.layers[1].verdict is Verdict.FAIL and lad.layers[1].explained_by == [lad.cause]
    assert "blackhole" in cause.summary


def test_refused_name_target_reaches_its_ladder(scored):
    report = _report(scored, "name-refused")
    lad = _row(report, "inventory:8080")
    transport = lad.layers[1]
    assert "transport.refused" in _ids(report, transport.findings)
    assert report.findings[lad.cause].vantage.endswith("-server")  # type: ignore[index]
    # the probe's refusal and the capture's RST are one fact: one critical finding, the packets as its evidence
    assert not [f for f in report.findings if f.id == "capture.syn_rst" and f.vantage == lad.client]


def test_refusal_by_an_unsynced_proxy_is_the_service_plane(scored):
    report = _report(scored, "reject-with-endpoints")
    lad = _row(report, f"{scenarios.CART_IP}:80")
    assert "transport.refused" in _ids(report, lad.layers[1].findings)
    assert _ids(report, lad.layers[1].explained_by) == {"service.reject_with_endpoints"}


def test_mtu_behind_dnat(scored):
    report = _report(scored, "mtu-behind-dnat")
    lad = _row(report, f"{scenarios.SHOP_IP}:80")
    cause = report.findings[lad.cause]  # type: ignore[index]
    assert cause.target is not None and cause.target.address == "10.244.0.2"  # the endpoint behind the DNAT
    assert lad.layers[1].verdict is Verdict.PASS  # the handshake is small: only the sweep shows it


def test_kubernetes_normal_is_never_an_owner(scored):
    report = _report(scored, "k8s-healthy")
    assert all(lad.owner is None and lad.proven for lad in report.ladders)
    by_id: dict[str, set[str]] = {}
    for f in report.findings:
        by_id.setdefault(f.id, set()).add(f.severity.value)
    assert by_id.get("dns.search_amplification") == {"info"}  # ndots:5 answered fast
    assert by_id.get("capture.icmp_error") == {"info"}  # kube-proxy rejects the ping to the ClusterIP
    assert "No layer fails for the client" in report.summary[1]
    # the node cannot resolve the short name: its own ladder fails, the summary says it is not the client's
    payments = _row(report, "payments:443")
    node = next(v for v in payments.vantages if v.vantage.endswith("-node"))
    assert node.layers[2].verdict is Verdict.FAIL and node.role.value != "client"
    assert "Failures seen only from" in report.summary[1]


def test_failure_seen_only_from_context(scored):
    report = _report(scored, "context-only")
    lad = _row(report, f"{scenarios.SERVICE_IP}:{scenarios.SERVICE_PORT}")
    assert lad.owner is None and lad.layers[1].verdict is Verdict.PASS
    node = next(v for v in lad.vantages if v.vantage.endswith("-node"))
    assert node.layers[0].verdict is Verdict.FAIL  # the node's own: no route to the Service range


def test_client_path_split(scored):
    """syn-drop: fails from the pod, works from the node; the pod's path is named. Refused from everywhere
    (no-listener) or the target itself failing (stale-neighbor): no vantage vouches."""
    report = _report(scored, "syn-drop")
    owner = _row(report, "10.244.1.3:8080").layers[1]
    assert any(re.match(r"fails from netns-nbs\d+-syn-drop-pod but works from netns-nbs\d+-syn-drop-node", r)
               for r in owner.reasons), owner.reasons
    for scenario, row in (("no-listener", "10.244.1.3:8080"), ("stale-neighbor", "10.244.0.2:8080")):
        lad = _row(_report(scored, scenario), row)
        layer = next(lv for lv in lad.layers if lv.layer is lad.owner)
        assert not any(r.startswith("fails from ") for r in layer.reasons), layer.reasons
    stale = _report(scored, "stale-neighbor")
    [f] = [f for f in stale.findings if f.id == "neighbor.stale_mac"]
    assert scenarios.STALE_MAC in f.summary and f.vantage.endswith("-node")


ARTIFACTS = Path(__file__).resolve().parents[2] / "build" / "test-artifacts" / "screenshots"


def _browse(out: Path, tmp_path: Path, scenario: str) -> None:
    """The scenario's appendix in headless Chromium: no console message, no request; the top kept as a PNG."""
    import shutil

    from tests.render.test_html import browser_requests

    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed (make test installs it)")
    page = tmp_path / f"{scenario}.html"
    netbundle("render", str(out), "-o", str(page), check=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / f"{scenario}.png"
    shot.unlink(missing_ok=True)
    console: list[str] = []
    assert browser_requests(page, tmp_path, screenshot=shot, console=console) == []
    assert console == []
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _collect(tmp_path: Path, info) -> Path:
    out = tmp_path / f"{info.scenario}.tar.zst"
    proc = netbundle(*info.collect_argv()[1:], "-o", str(out))
    assert proc.returncode in (0, 5), proc.stderr
    return out


def test_healthy_is_all_pass(healthy_lab, tmp_path):
    report = read_bundle(_collect(tmp_path, healthy_lab)).findings()
    assert report is not None and report.ladders
    for lad in report.ladders:
        assert lad.owner is None and lad.proven
        assert {lv.verdict.value for lv in lad.layers} <= {"pass", "not applicable", "not collected"}, lad
        assert [lv.verdict.value for lv in lad.layers[:2]] == ["pass", "pass"]
    assert "No layer fails" in report.summary[1]


def test_summary_formats(healthy_lab, tmp_path):
    out = _collect(tmp_path, healthy_lab)
    md = netbundle("summary", str(out), check=True).stdout
    text = netbundle("summary", str(out), "--format", "text", check=True).stdout
    js = json.loads(netbundle("summary", str(out), "--format", "json", check=True).stdout)
    import hashlib
    sha = hashlib.sha256(out.read_bytes()).hexdigest()
    assert sha in md and sha in text and js["sha256"] == sha and js["bundle"] == out.name
    assert "| route | pass |" in md and js["ladders"]


def test_node_wide_drops_do_not_fail_a_working_target(scored):
    """A busy healthy node's conntrack refuses a flow now and then (insert_failed +1: the UDP DNS race): a
    critical finding about no target. On the healthy scenario's bundle with that one counter raised on the node
    (the client's path), every target's connects still pass: the service layer warns, nothing owns. The
    conntrack-full scenario, where the client's own flows die, keeps its owner (test_every_scenario_scores_right)."""
    from bundle.analyze.report import build_report
    from bundle.render.view import inputs

    inp = inputs(read_bundle(scored[1] / "healthy.tar.zst"))
    node = next(d for d in inp.docs if d.vantage.endswith("-node"))
    last = node.nat.samples[-1]
    node.nat.samples[-1] = last.model_copy(update={"totals": {**last.totals, "insert_failed": 1}})
    report = build_report(inp)
    assert "service.conntrack_dropping" in {f.id for f in report.findings if f.severity.value == "critical"}
    for lad in report.ladders:
        service = next(lv for lv in lad.layers if lv.layer is Layer.SERVICE)
        assert lad.owner is None, (lad.target, lad.owner)
        if lad.client == node.vantage or node.vantage in {v.vantage for v in lad.vantages if v.role.value == "path"}:
            assert service.verdict is Verdict.WARN and "node-wide" in " ".join(service.reasons)


def test_a_lost_insert_race_does_not_explain_dead_connects(scored):
    """conntrack's insert_failed alone is the clash race of two packets of one flow (UDP DNS's A and AAAA): it
    can lose a query, never every SYN of a connect. On the syn-drop scenario (a firewall drops the SYNs), the
    client's conntrack with insert_failed +1 must not take the connect timeouts from transport; with drop +1 (a
    full table refusing entries) it does."""
    from bundle.analyze.report import build_report
    from bundle.render.view import inputs

    def owner(counter: str):
        inp = inputs(read_bundle(scored[1] / "syn-drop.tar.zst"))
        pod = next(d for d in inp.docs if d.vantage.endswith("-pod"))
        last = pod.nat.samples[-1]
        pod.nat.samples[-1] = last.model_copy(update={"totals": {**last.totals, counter: last.totals[counter] + 1}})
        report = build_report(inp)
        assert "service.conntrack_dropping" in {f.id for f in report.findings}
        return _row(report, "10.244.1.3:8080").owner

    assert owner("insert_failed") is Layer.TRANSPORT
    assert owner("drop") is Layer.SERVICE


def test_rp_filter_explains_only_where_replies_can_be_dropped(scored):
    """Strict rp_filter drops a reply that arrives on an interface other than the route back to its source. On
    the rp-filter scenario (replies return over eth1, strict everywhere) the counter owns the timeouts; with only
    the flow's own egress (eth0) strict, no reply of this flow can be dropped by it: the rule must not claim
    them, whatever else raised the netns-wide counter."""
    from bundle.analyze.report import build_report
    from bundle.render.view import inputs

    def owner(strict_only_egress: bool):
        inp = inputs(read_bundle(scored[1] / "rp-filter.tar.zst"))
        node = next(d for d in inp.docs if d.vantage.endswith("-node"))
        if strict_only_egress:
            ifs = [s.model_copy(update={"rp_filter_effective": 0}) if s.name != "eth0" else s
                   for s in node.route.sysctls.interfaces]
            node.route = node.route.model_copy(update={"sysctls": node.route.sysctls.model_copy(
                update={"interfaces": ifs})})
        report = build_report(inp)
        return _row(report, "10.244.0.2:8080").owner, {x.rule for x in report.explanations}

    assert owner(False) == (Layer.ROUTE, {"rp_filter_asymmetric"})
    assert owner(True) == (Layer.TRANSPORT, set())
