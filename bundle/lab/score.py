"""`netbundle lab score`: the engine's regression gate. Each scenario says what the ladder must conclude (the
row, the owner layer for the client and the finding that owns it, or that no row has an owner); a collected
bundle's findings.json is held against it."""

from __future__ import annotations

from dataclasses import dataclass

from bundle.models import FindingsReport


@dataclass(frozen=True)
class Expect:
    """row: the ladder row (target or name); owner None: no row may name an owner (a healthy scenario).
    causes: the finding that owns it (any of these ids)."""

    row: str | None
    owner: str | None
    causes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Score:
    scenario: str
    expected: str
    named: str
    right: bool

    def as_dict(self) -> dict[str, object]:
        return {"scenario": self.scenario, "expected": self.expected, "named": self.named, "right": self.right}


def _named(report: FindingsReport, row: str | None) -> str:
    ladders = [lad for lad in report.ladders if row is None or lad.target == row]
    if not ladders:
        return f"no ladder row {row}"
    out = []
    for lad in ladders:
        cause = report.findings[lad.cause].id if lad.cause is not None else None
        head = f"{lad.owner.value} ({cause})" if lad.owner is not None else "no owner" if lad.proven else "nothing proven"
        out.append(head if row is not None else f"{lad.target}: {head}")
    return "; ".join(out)


def score(scenario: str, expect: Expect, report: FindingsReport) -> Score:
    if expect.owner is None:
        owned = [lad for lad in report.ladders if lad.owner is not None]
        right = not owned and bool(report.ladders) and all(lad.proven for lad in report.ladders)
        return Score(scenario, "no owner on any row", _named(report, None), right)
    lad = next((lad for lad in report.ladders if lad.target == expect.row), None)
    cause = report.findings[lad.cause].id if lad is not None and lad.cause is not None else None
    right = lad is not None and lad.owner is not None and lad.owner.value == expect.owner and cause in expect.causes
    return Score(scenario, f"{expect.row}: {expect.owner} ({' or '.join(expect.causes)})", _named(report, expect.row),
                 right)
