"""The self-contained HTML postmortem appendix (jinja2, autoescape on, no external requests)."""

from __future__ import annotations

import functools
import re
import shlex

import jinja2
from markupsafe import Markup

from bundle._resources import data_dir
from bundle.analyze.diff import DiffReport
from bundle.archive import Bundle
from bundle.errors import RenderError
from bundle.models import Neighbor, StateSample
from bundle.render.view import BAD_NEIGHBOR_STATES, TREND_STATES, SetView, build_view, missing_capabilities

TEMPLATE = "appendix.html.j2"


def sparkline(samples: list[StateSample], state: str, width: int = 90, height: int = 18) -> Markup:
    """An inline SVG polyline of one TCP state's count over the samples (numbers only: safe to emit)."""
    values = [smp.tcp.get(state, 0) for smp in samples]
    if not values:
        return Markup("")
    top = max(values) or 1
    step = width / max(1, len(values) - 1)
    points = " ".join(f"{i * step:.1f},{height - 2 - (v / top) * (height - 4):.1f}" for i, v in enumerate(values))
    return Markup(f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img">'
                  f'<polyline fill="none" stroke="#3060a0" stroke-width="1.5" points="{points}"/></svg>')


def _environment() -> jinja2.Environment:
    try:
        folder = data_dir("templates")
    except FileNotFoundError as exc:
        raise RenderError(str(exc)) from None
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        autoescape=True,  # everything from the system under diagnosis is escaped
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["shjoin"] = shlex.join
    env.filters["anchor"] = anchor
    env.filters["worst_first"] = worst_first
    return env


_NEIGHBOR_RANK = {"FAILED": 0, "INCOMPLETE": 1, "STALE": 2, "PROBE": 3, "DELAY": 4}


def worst_first(neighbors: list[Neighbor]) -> list[Neighbor]:
    """FAILED and INCOMPLETE entries first, then STALE: what a long table must not hide below its fold."""
    return sorted(neighbors, key=lambda n: min((_NEIGHBOR_RANK.get(s.value, 9) for s in n.states), default=9))


_SECTIONS = {"route.json": "route", "sockets.json": "sockets", "dns.json": "dns", "nat.json": "nat",
             "capture.json": "capture", "capture.pcapng": "capture", "kube.json": "kube"}


def anchor(member: str) -> str:
    """The section of the appendix that shows a member, as a fragment id (route-<vantage>), or "" when none does."""
    parts = member.split("/")
    if len(parts) >= 3 and parts[0] == "vantages":
        if parts[1] == "kubernetes-api":
            return "kube"
        section = _SECTIONS.get(parts[2])
        if section:
            return f"{section}-{_fragment(parts[1])}" if section != "dns" else "dns"
    return "findings" if member == "findings.json" else ""


RAW_SHOWN = 200_000  # characters of a raw dump folded into the page; the whole file stays in the bundle


def _raw(bundle: Bundle, path: str) -> str:
    data = bundle.texts.get(path)
    if data is None:
        return ""
    text = data[:RAW_SHOWN].decode(errors="replace")
    return text + (f"\n… ({len(data) - RAW_SHOWN} more bytes in {path})" if len(data) > RAW_SHOWN else "")


def _fragment(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def render_diff_html(report: DiffReport, failing: str, healthy: str) -> str:
    """`netbundle diff --format html`: the same escaping and no-fetch page as the appendix."""
    try:
        return _environment().get_template("diff.html.j2").render(report=report, failing=failing, healthy=healthy)
    except jinja2.TemplateError as exc:
        raise RenderError(f"template diff.html.j2: {exc}") from None


def render_html(bundle: Bundle) -> str:
    try:
        template = _environment().get_template(TEMPLATE)
        return template.render(view=build_view(bundle), bad_states=BAD_NEIGHBOR_STATES,
                               missing_caps=missing_capabilities, sparkline=sparkline, trend_states=TREND_STATES,
                               raw=lambda path: _raw(bundle, path))
    except jinja2.TemplateError as exc:
        raise RenderError(f"template {TEMPLATE}: {exc}") from None


def render_set_html(sv: SetView) -> str:
    """One appendix for an incident set: the verdicts across the nodes on top, then each node's own sections
    (their anchors prefixed per node, so links inside a node's part stay in it)."""
    raws = [functools.partial(_raw, s.bundle) if s.bundle is not None else str for s in sv.nodes]
    try:
        return _environment().get_template("set.html.j2").render(
            sv=sv, raws=raws, bad_states=BAD_NEIGHBOR_STATES, missing_caps=missing_capabilities, sparkline=sparkline,
            trend_states=TREND_STATES)
    except jinja2.TemplateError as exc:
        raise RenderError(f"template set.html.j2: {exc}") from None
