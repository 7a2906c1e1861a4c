"""The HTML appendix: self-contained (no external request, checked in a real browser), and escaped."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from bundle.archive import read_bundle
from bundle.render import render_html
from tests.conftest import fresh, netbundle

pytestmark = pytest.mark.privileged

_FETCHING_ATTRS = {"src", "href", "srcset", "action", "formaction", "poster", "data", "background", "manifest",
                   "xlink:href", "ping", "cite", "longdesc", "usemap", "codebase", "archive"}


class _Fetches(HTMLParser):
    """Collects everything in a page that could make a browser fetch something."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self.csp = ""
        self._in_style = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "iframe", "img", "object", "embed", "link", "video", "audio", "source", "base", "frame"):
            self.found.append(f"<{tag}>")
        for name, value in attrs:
            if name in _FETCHING_ATTRS and not (name == "href" and (value or "").startswith("#")):
                self.found.append(f"{tag}[{name}]={value}")  # a link inside the page fetches nothing
            if name == "style" and value and "url(" in value:
                self.found.append(f"{tag}[style]")
        if tag == "meta" and dict(attrs).get("http-equiv") == "Content-Security-Policy":
            self.csp = dict(attrs).get("content") or ""
        self._in_style = tag == "style"

    def handle_data(self, data: str) -> None:
        if self._in_style and ("url(" in data or "@import" in data):
            self.found.append("css url()/@import")


def fetches(html: str) -> _Fetches:
    p = _Fetches()
    p.feed(html)
    return p


def browser_requests(page: Path, tmp_path: Path, screenshot: Path | None = None,
                     console: list[str] | None = None) -> list[str]:
    """Open the page in headless Chromium inside an empty netns (only lo: nothing can leave this
    machine) and return every URL the page itself asked for, from Chromium's own net log. With `screenshot`,
    the top of the page (1280x1600) is saved there; `console` receives the page's console messages."""
    name = f"nbt-browser-{page.stem[:20]}"
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        log = tmp_path / f"{page.stem}-netlog.json"
        shot = [f"--screenshot={screenshot}", "--window-size=1280,1600"] if screenshot else ["--dump-dom"]
        proc = subprocess.run(
            ["ip", "netns", "exec", name, "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / ('profile-' + page.stem)}", f"--log-net-log={log}",
             "--net-log-capture-mode=Everything", "--virtual-time-budget=3000", "--enable-logging=stderr", "--v=0",
             *shot, page.as_uri()],
            capture_output=True, timeout=120, check=True, text=True,
        )
        if console is not None:
            # the page's own messages (Chromium's internal pages log theirs too, with chrome:// sources)
            console += [line for line in proc.stderr.splitlines()
                        if ("CONSOLE" in line or "Uncaught" in line) and "source: file://" in line]
        events = json.loads(log.read_text())
    finally:
        netns.remove(name)
    start_job = events["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    urls = []
    for ev in events["events"]:
        params = ev.get("params") or {}
        if ev["type"] == start_job and "file://" in str(params.get("network_isolation_key", "")):
            urls.append(params["url"])
    return urls


@pytest.fixture(scope="module")
def rendered(tmp_path_factory, mtu_lab) -> Path:
    tmp = tmp_path_factory.mktemp("render")
    out = fresh(tmp)
    proc = netbundle("collect", "--target", mtu_lab.targets[0], "--netns", mtu_lab.namespaces["pod"],
                     "--netns", mtu_lab.namespaces["node"], "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    html = tmp / "appendix.html"
    assert netbundle("render", str(out), "-o", str(html)).returncode == 0
    return html


def test_page_has_nothing_that_fetches(rendered):
    p = fetches(rendered.read_text())
    assert p.found == []
    assert "default-src 'none'" in p.csp


def test_static_check_catches_a_fetch():
    assert fetches('<img src="http://198.51.100.7/x.png">').found
    assert fetches("<style>body{background:url(http://x)}</style>").found


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed (make test installs it)")
def test_browser_makes_no_external_request(rendered, tmp_path):
    control = tmp_path / "control.html"
    control.write_text('<html><body><img src="http://198.51.100.7/x.png">x</body></html>')
    assert browser_requests(control, tmp_path) == ["http://198.51.100.7/x.png"]  # the probe can see a fetch
    noisy = tmp_path / "noisy.html"
    noisy.write_text("<html><body><script>console.error('nbt-console-probe')</script>x</body></html>")
    console: list[str] = []
    browser_requests(noisy, tmp_path, console=console)
    assert any("nbt-console-probe" in line for line in console)  # and a console message
    assert browser_requests(rendered, tmp_path) == []


def test_hostile_strings_are_escaped(tmp_path):
    """Interface names and operator text from the system under diagnosis never reach the HTML raw."""
    ns = "nbt-escape"
    netns.create(ns)
    # an iptables comment and a DNS name carrying markup reach the NAT slice, the ladder and the summary
    rules = ("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-NBTESCAPE0000001 - [0:0]\n:KUBE-SEP-NBTESCAPE0000001 - [0:0]\n"
             '-A KUBE-SERVICES -d 10.96.0.99/32 -p tcp -m comment --comment "x/<svg onload=alert(1)>:p cluster IP" '
             "-m tcp --dport 80 -j KUBE-SVC-NBTESCAPE0000001\n"
             "-A KUBE-SVC-NBTESCAPE0000001 -j KUBE-SEP-NBTESCAPE0000001\n"
             "-A KUBE-SEP-NBTESCAPE0000001 -p tcp -m tcp -j DNAT --to-destination 10.244.9.9:80\nCOMMIT\n")
    try:
        with IPRoute(netns=ns) as ipr:
            ipr.link("add", ifname="<script>", kind="veth", peer={"ifname": '"><i>x'})
        subprocess.run(["ip", "netns", "exec", ns, "iptables-nft-restore"], input=rules, text=True, check=True)
        out = fresh(tmp_path)
        proc = netbundle("collect", "--passive", "--netns", ns, "--ticket", "<script>alert(1)</script>",
                         "--note", "a&b <img src=x onerror=alert(1)>", "--target", "10.96.0.99:80",
                         "--name", "x.<b>bold</b>.example", "-o", str(out))
        assert proc.returncode in (0, 5, 2), proc.stderr
        if proc.returncode == 2:  # the name is refused at the door: not a DNS name
            assert "not a DNS name" in proc.stderr
            proc = netbundle("collect", "--passive", "--netns", ns, "--ticket", "<script>alert(1)</script>",
                             "--note", "a&b <img src=x onerror=alert(1)>", "--target", "10.96.0.99:80", "-o", str(out))
        assert proc.returncode in (0, 5), proc.stderr
    finally:
        netns.remove(ns)
    b = read_bundle(out)
    assert {l.name for l in b.route(f"netns-{ns}").links} >= {"<script>", '"><i>x'}
    assert any("<svg onload=alert(1)>" in s.service for s in b.nat(f"netns-{ns}").services)
    html = render_html(b)
    assert "<script>" not in html and "<i>x" not in html and "<img" not in html and "<svg onload" not in html
    assert "&lt;script&gt;" in html and "&#34;&gt;&lt;i&gt;x" in html and "&lt;svg onload=alert(1)&gt;" in html
    assert fetches(html).found == []
    show = netbundle("show", str(out)).stdout
    assert "<script>alert(1)</script>" in show  # the terminal shows text as text
    md = netbundle("summary", str(out)).stdout
    assert "<script>" not in md and "<img" not in md and "<svg onload" not in md  # Markdown shows it as text


def test_evidence_links_land_on_sections_and_the_timeline_is_drawn(rendered):
    """Every in-page link (findings -> the slice that holds their evidence) has its target; the timeline shows
    each slice's window with its samples."""
    import re

    html = rendered.read_text()
    ids = set(re.findall(r'id="([^"]+)"', html))
    links = set(re.findall(r'href="#([^"]+)"', html))
    assert links and links <= ids, links - ids
    assert 'aria-label="collection timeline"' in html
    timeline = html[html.index('aria-label="collection timeline"'):html.index("</svg>", html.index('aria-label="collection timeline"'))]
    assert timeline.count("<rect") >= 8  # two vantages, their slices' windows
    assert "socket states at +" in timeline and "conntrack count" in timeline


def test_long_neighbor_tables_show_the_worst_first():
    from bundle.models import Neighbor, NeighborState
    from bundle.render.html import worst_first

    ok = [Neighbor(family=4, dev="eth0", dst=f"10.244.1.{i}", lladdr="02:00:00:00:00:01",
                   states=[NeighborState.REACHABLE], router=False) for i in range(2, 250)]
    stale = Neighbor(family=4, dev="eth0", dst="10.244.2.1", lladdr="02:00:00:00:00:02",
                     states=[NeighborState.STALE], router=False)
    failed = Neighbor(family=4, dev="eth0", dst="10.244.2.2", lladdr=None, states=[NeighborState.FAILED],
                      router=False)
    ordered = worst_first([*ok, stale, failed])
    assert ordered[:2] == [failed, stale] and ordered[2:] == ok  # stable among equals


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """The appendix of a bare netns (lo down: no address, no route) with a very long name: empty tables and
    one long unbreakable word in many cells."""
    tmp = tmp_path_factory.mktemp("bare")
    name = "nbt-" + "averylongnetnsnamewithoutanybreak" * 2
    netns.create(name)
    try:
        out = fresh(tmp)
        proc = netbundle("collect", "--passive", "--netns", name, "--target", "10.244.99.1:8080", "-o", str(out))
        assert proc.returncode in (0, 5), proc.stderr
    finally:
        netns.remove(name)
    page = tmp / "b.html"
    netbundle("render", str(out), "-o", str(page), check=True)
    return page


@pytest.mark.privileged
@pytest.mark.parametrize("which", ["rendered", "bare"])
def test_the_appendix_never_scrolls_sideways_at_1280(which, request, tmp_path):
    """At 1280 px the page is no wider than the window: long filters, paths and rules wrap, wide tables scroll
    inside themselves (measured by Chromium on a copy with a one-line probe script and no CSP)."""
    import re as _re
    import shutil

    if shutil.which("chromium") is None:
        pytest.fail("chromium is not installed (make test installs it)")
    html = request.getfixturevalue(which).read_text()
    html = _re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    probe = ("<script>window.onload=()=>{document.title='W'+document.documentElement.scrollWidth+"
             "'/'+window.innerWidth};</script></body>")
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", probe))
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000",
                           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=3000", "--dump-dom",
                           page.as_uri()], capture_output=True, text=True, timeout=120, check=True)
    m = _re.search(r"<title>W(\d+)/(\d+)</title>", proc.stdout)
    assert m, proc.stdout[:300]
    assert int(m.group(1)) <= int(m.group(2)), m.group(0)


@pytest.mark.privileged
def test_empty_tables_say_none(bare):
    """A table with no rows says so (an empty table reads like a rendering fault)."""
    html = bare.read_text()
    for table in re.findall(r"<table.*?</table>", html, flags=re.S):
        rows = re.findall(r"<tr", table)
        assert len(rows) >= 2, table[:200]  # a header and at least one row: data, or "none"
