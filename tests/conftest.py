"""Shared fixtures: lab scenarios under an `nbt-` prefix, removed after use.

Privileged tests need root and real namespaces. On a laptop without root they
skip; with NETBUNDLE_REQUIRE_PRIVILEGED=1 (CI) a skipped privileged test fails.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from bundle.lab import scenarios
from bundle.lab.scenarios import LabInfo

REPO = Path(__file__).resolve().parent.parent
REQUIRE_PRIVILEGED = os.environ.get("NETBUNDLE_REQUIRE_PRIVILEGED") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="privileged: needs root for network namespaces")
    for item in items:
        if "privileged" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if REQUIRE_PRIVILEGED and report.skipped and "privileged" in item.keywords:
        report.outcome = "failed"
        report.longrepr = f"privileged test skipped under NETBUNDLE_REQUIRE_PRIVILEGED=1: {report.longrepr}"


def _prefix(name: str) -> str:
    return f"nbt-{name}-{os.getpid() % 100000}"


@pytest.fixture(scope="session")
def lab() -> Iterator[Callable[[str], LabInfo]]:
    """lab("syn-drop"): a scenario built once per session under an nbt- prefix, removed at the end."""
    built: dict[str, LabInfo] = {}
    stack = ExitStack()

    def get(scenario: str) -> LabInfo:
        if scenario not in built:
            built[scenario] = stack.enter_context(scenarios.running(scenario, _prefix(scenario.replace("-", ""))))
        return built[scenario]

    with stack:
        yield get


@pytest.fixture(scope="session")
def mtu_lab(lab: Callable[[str], LabInfo]) -> LabInfo:
    return lab("mtu")


@pytest.fixture(scope="session")
def healthy_lab(lab: Callable[[str], LabInfo]) -> LabInfo:
    return lab("healthy")


CORPUS = REPO.parent / "shared" / "corpus"


@pytest.fixture(scope="session")
def lab_scores(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, object], Path]:
    """One `netbundle lab score --readonly` over every scenario, its bundles kept: the ladder's tests read them,
    the read-only tests its before/after comparison of every lab netns, and the watch's tests the `flaky` bundle
    (scored by a real `netbundle watch`)."""
    import json

    keep = tmp_path_factory.mktemp("score")
    proc = netbundle("lab", "score", "--json", "--readonly", "--keep", str(keep), timeout=1500)
    assert proc.returncode in (0, 7), proc.stderr
    return json.loads(proc.stdout), keep


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This checkout's wheel and its dependencies' (pip's cache and index as configured): what the wheel test
    installs from with no index, and what the image is built from (`make image` does the same)."""
    out = tmp_path_factory.mktemp("wheelhouse")
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-build-isolation", "-q", "-w", str(out),
                            str(REPO)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    return out


def corpus_file(rel: str) -> Path:
    """A file of ../shared/corpus: skipped where the corpus is absent, a failure in CI (it is always there)."""
    path = CORPUS / rel
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"corpus file missing in CI: {path}")
        pytest.skip(f"corpus file missing: {path}")
    return path


def netbundle(*args: str, timeout: float = 120, check: bool = False, **kw: object) -> subprocess.CompletedProcess[str]:
    """Run the real CLI as a user would."""
    return subprocess.run([sys.executable, "-m", "bundle", *args], capture_output=True, text=True,
                          timeout=timeout, check=check, cwd=kw.pop("cwd", None))  # type: ignore[arg-type]


def sigint_default() -> None:
    """preexec_fn for a child a test will send SIGINT: a shell starts background jobs (a CI runner's too) with
    SIGINT ignored, Python then keeps it ignored, and the child would never see the operator's Ctrl-C."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ip_json(netns: str, *args: str) -> list[dict[str, object]]:
    import json

    out = subprocess.run(["ip", "-n", netns, "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out) if out.strip() else []



def fresh(folder: Path, stem: str = "b") -> Path:
    """A bundle path nothing has been written to yet: collect never overwrites one, so a test that collects
    twice into one folder takes a new name each time."""
    n = 0
    while (folder / f"{stem}{n or ''}.tar.zst").exists():
        n += 1
    return folder / f"{stem}{n or ''}.tar.zst"
