"""`netbundle summary`: what a ticket needs, in Markdown, plain text or JSON — the ladder per target, the five
sentences, the findings with their next read-only commands, and the bundle's file name and SHA-256 so the
ticket points at exactly this evidence."""

from __future__ import annotations

import json
from pathlib import Path

from bundle._files import file_sha256
from bundle.archive import Bundle
from bundle.models import FindingsReport, LayerVerdict, TargetLadder
from bundle.render.view import build_view

_MARK = {"pass": "pass", "fail": "FAIL", "warn": "warn", "inconclusive": "inconclusive", "not applicable": "n/a",
         "not collected": "-"}


def _md(text: str) -> str:
    """Inert in Markdown: no HTML, no link or table syntax from the system under diagnosis."""
    return "".join("\\" + c if c in "\\`*_{}[]<>()#|!" else c for c in text.replace("\n", " "))


def _head(lad: TargetLadder, report: FindingsReport) -> str:
    """'owner dns (dns.dead_answer in netns-pod)', 'no failing layer' or 'nothing proven', for the client."""
    who = f" from {lad.client}" if lad.client else ""
    if lad.owner is None:
        return ("no failing layer" if lad.proven else "nothing proven") + who
    cause = report.findings[lad.cause] if lad.cause is not None else None
    return f"owner {lad.owner.value}" + (f" ({cause.id} in {cause.vantage})" if cause else "") + who


def _explained(lv: LayerVerdict, report: FindingsReport) -> str:
    return "; ".join(f"explained by {report.findings[i].id} in {report.findings[i].vantage}" for i in lv.explained_by)


def ticket_summary(bundle: Bundle, path: Path, fmt: str) -> str:
    view = build_view(bundle)
    report = view.report
    assert report is not None
    sha = file_sha256(path)
    if fmt == "json":
        return json.dumps({"bundle": path.name, "sha256": sha, "bundle_id": bundle.manifest.bundle_id,
                           **report.model_dump(mode="json")}, indent=1) + "\n"
    if fmt == "text":
        lines = [f"netbundle {path.name}  sha256 {sha}"]
        for lad in report.ladders:
            lines.append(f"{lad.target}: {_head(lad, report)}")
            for lv in lad.layers:
                noise = "  (noise until the owner is explained)" if lv.noise else ""
                why = _explained(lv, report)
                lines.append(f"  {lv.layer:<10} {_MARK[lv.verdict.value]:<13} {lv.reasons[0] if lv.reasons else ''}"
                             f"{noise}{'  (' + why + ')' if why else ''}")
        lines += [""] + report.summary + [""]
        lines += [f"[{f.severity.value}] {f.summary}" + (f"\n    next: {f.next_command}" if f.next_command else "")
                  for f in report.findings]
        if report.proof:
            lines.append("proof: " + ", ".join(report.proof))
        if report.capture:
            lines.append(f"capture: {report.capture}")
        return "\n".join(lines) + "\n"
    out = [f"### netbundle `{_md(path.name)}`", "", f"sha256 `{sha}` · bundle `{_md(bundle.manifest.bundle_id)}`", ""]
    for sentence in report.summary:
        out.append(f"- {_md(sentence)}")
    out.append("")
    for lad in report.ladders:
        out.append(f"**{_md(lad.target)}**: {_md(_head(lad, report))}")
        out += ["", "| layer | verdict | why |", "|---|---|---|"]
        for lv in lad.layers:
            why = _md(lv.reasons[0]) if lv.reasons else ""
            if lv.explained_by:
                why += " — " + _md(_explained(lv, report))
            out.append(f"| {lv.layer} | {_MARK[lv.verdict.value]}{' (noise)' if lv.noise else ''} | {why} |")
        out.append("")
    if report.findings:
        out.append("Findings:")
        for f in report.findings:
            nxt = f" — next: `{f.next_command.replace('`', '')}`" if f.next_command else ""
            out.append(f"- **{f.severity.value}** {_md(f.summary)}{nxt}")
        out.append("")
    if report.proof:
        out.append("Proof: " + ", ".join(f"`{_md(p)}`" for p in report.proof))
    if report.capture:
        out.append(f"Capture: `{_md(report.capture)}`")
    return "\n".join(out) + "\n"
