"""docs/findings.md lists exactly the finding ids the analysis emits: read from the code's calls (the first
argument of an `add(...)` or `CounterRule(...)` call, or the strings in `Finding(id=...)`), not from a list kept
beside it;
and it names every explanation rule the analysis applies."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_ID = re.compile(r"^[a-z_]+\.[a-z_]+$")


def _emitted() -> set[str]:
    ids: set[str] = set()
    for path in (ROOT / "bundle" / "analyze").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            values = [node.args[0]] if name in ("add", "CounterRule") and node.args else []
            values += [c for k in node.keywords if name == "Finding" and k.arg == "id" for c in ast.walk(k.value)]
            ids |= {v.value for v in values if isinstance(v, ast.Constant) and isinstance(v.value, str)
                    and _ID.match(v.value)}
    return ids


def _documented() -> set[str]:
    text = (ROOT / "docs" / "findings.md").read_text()
    return set(re.findall(r"^\| `([a-z_]+\.[a-z_]+)` \|", text, flags=re.M))


def test_every_finding_is_documented_and_nothing_else():
    emitted, documented = _emitted(), _documented()
    assert len(emitted) > 40  # the walk found the calls
    assert sorted(emitted - documented) == [] and sorted(documented - emitted) == []


def _rules() -> set[str]:
    """The names the explanation rules give: every string in the first argument of an `_explain(...)` call."""
    names: set[str] = set()
    for node in ast.walk(ast.parse((ROOT / "bundle" / "analyze" / "explain.py").read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "_explain" and node.args:
            names |= {c.value for c in ast.walk(node.args[0]) if isinstance(c, ast.Constant)
                      and isinstance(c.value, str) and re.fullmatch(r"[a-z_]+", c.value)}
    return names


def test_every_explanation_rule_is_documented_and_nothing_else():
    text = (ROOT / "docs" / "findings.md").read_text()
    section = text[text.index("## Explanation rules"):]
    documented = set(re.findall(r"^\| `([a-z_]+)` \| ", section, flags=re.M))
    rules = _rules()
    assert len(rules) >= 10
    assert sorted(rules - documented) == [] and sorted(documented - rules) == []
