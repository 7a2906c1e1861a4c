"""The fleet coordinator: one incident, many nodes, on the engines operators already run — here OpenSSH (the
user's own `ssh`, its config and agent): each node runs the same `netbundle collect` with the same options and the
same start time, its bundle comes back over the channel, checked end to end (the node's SHA-256 against the
file that arrived, then read as any bundle), and the set is written with whatever arrived. One node never
spoils the set: each failure ends within the node timeout and is named."""

from __future__ import annotations

import concurrent.futures
import re
import shlex
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bundle._files import file_sha256
from bundle.archive import read_bundle
from bundle.errors import NetbundleError
from bundle.models.incidentset import NodeOutcome

MAX_PARALLEL = 64
_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_SHA_LINE = re.compile(r"^sha256 ([0-9a-f]{64})  ", re.MULTILINE)
# Exit codes the remote script uses for its own failures (collect's own are 0-9 and 130).
NETBUNDLE_MISSING, SUDO_REFUSED, NO_BUNDLE = 91, 92, 93


@dataclass(frozen=True)
class SshFleet:
    hosts: tuple[str, ...]
    collect_args: tuple[str, ...]  # `netbundle collect` options, checked locally before any node is asked
    ssh_config: str | None = None
    remote_netbundle: str = "netbundle"
    parallel: int = 8
    node_timeout_s: float = 120.0
    start_at: float | None = None  # epoch seconds every node starts at
    connect_timeout_s: int = 10


@dataclass
class NodeResult:
    outcome: NodeOutcome
    file: Path | None = None


@dataclass
class Running:
    """What is in flight, for Ctrl-C: a way to stop each node's work (kill its ssh, delete its Job)."""
    stoppers: dict[str, Callable[[], None]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped: bool = False

    def register(self, node: str, stop: Callable[[], None]) -> None:
        with self.lock:
            self.stoppers[node] = stop
        if self.stopped:
            stop()

    def release(self, node: str) -> None:
        with self.lock:
            self.stoppers.pop(node, None)

    def stop_all(self) -> None:
        with self.lock:
            self.stopped = True
            stoppers = list(self.stoppers.values())
        for stop in stoppers:
            try:
                stop()
            except Exception:  # noqa: BLE001 - one node's cleanup never stops the others'
                pass


def remote_script(fleet: SshFleet) -> str:
    """What each node runs (as the login shell's `sh -c`): netbundle found, root or `sudo -n` (never a
    password prompt), the bundle written to a private temp folder, its bytes on stdout, collect's words on
    stderr, the folder removed whatever happens."""
    nb = shlex.quote(fleet.remote_netbundle)
    args = " ".join(shlex.quote(a) for a in ["collect", *fleet.collect_args]
                    + (["--start-at", f"{fleet.start_at:.3f}"] if fleet.start_at else []))
    return "\n".join([
        "umask 077",
        f"command -v {nb} >/dev/null 2>&1 || {{ echo 'netbundle is not installed here' >&2; exit {NETBUNDLE_MISSING}; }}",
        'd=$(mktemp -d "${TMPDIR:-/tmp}/netbundle-fleet.XXXXXX") || exit 1',
        "trap 'rm -rf \"$d\"' EXIT",
        'if [ "$(id -u)" = 0 ]; then run=""; else run="sudo -n"; '
        f"$run true 2>\"$d/sudo\" || {{ cat \"$d/sudo\" >&2; exit {SUDO_REFUSED}; }}; fi",
        f'$run {nb} {args} -o "$d/b.tar.zst" 2>"$d/err" >/dev/null; rc=$?',
        'cat "$d/err" >&2',
        f'[ -s "$d/b.tar.zst" ] || exit $(( rc == 0 ? {NO_BUNDLE} : rc ))',
        'cat "$d/b.tar.zst"',
        "exit $rc",
    ])


def ssh_argv(fleet: SshFleet, host: str) -> list[str]:
    argv = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={fleet.connect_timeout_s}", "-T"]
    if fleet.ssh_config:
        argv += ["-F", fleet.ssh_config]
    return [*argv, "--", host, "sh -c " + shlex.quote(remote_script(fleet))]


def node_outcome(host: str, started: datetime, code: int | None, stderr: str, **kw: object) -> NodeOutcome:
    finished = datetime.now(UTC)
    return NodeOutcome(node=host, started=started, finished=finished,
                       duration_s=round((finished - started).total_seconds(), 3), exit_code=code, **kw)  # type: ignore[arg-type]


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("sha256 ")]
    return (lines[-1] if lines else "")[:300]


def collect_node(fleet: SshFleet, host: str, folder: Path, running: Running) -> NodeResult:
    started = datetime.now(UTC)
    out = node_file(folder, host)
    try:
        with open(out, "wb") as sink, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(ssh_argv(fleet, host), stdin=subprocess.DEVNULL, stdout=sink, stderr=err)
            running.register(host, proc.kill)
            try:
                code = proc.wait(timeout=fleet.node_timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return NodeResult(node_outcome(host, started, None, "", outcome="timeout",
                                           detail=f"no answer within {fleet.node_timeout_s:g} s: stopped"))
            err.seek(0)
            stderr = err.read()[-20000:].decode(errors="replace")
    except OSError as exc:
        return NodeResult(node_outcome(host, started, None, "", outcome="failed", detail=f"cannot run ssh: {exc}"))
    finally:
        running.release(host)
    if running.stopped and code != 0:
        return NodeResult(node_outcome(host, started, code, stderr, outcome="failed", detail="interrupted"))
    if code == 255:
        return NodeResult(node_outcome(host, started, code, stderr, outcome="unreachable",
                                   detail=last_line(stderr) or "ssh failed"))
    if code == NETBUNDLE_MISSING:
        return NodeResult(node_outcome(host, started, code, stderr, outcome="netbundle_missing",
                                   detail=f"{fleet.remote_netbundle} not found on the node"))
    if code == SUDO_REFUSED:
        return NodeResult(node_outcome(host, started, code, stderr, outcome="sudo_refused",
                                   detail=last_line(stderr) or "sudo -n refused"))
    said = _SHA_LINE.findall(stderr)
    return judge_bundle(host, started, code, stderr, out, said[-1] if said else None)


def judge_bundle(node: str, started: datetime, code: int | None, stderr: str, out: Path,
                 said: str | None) -> NodeResult:
    """What a node's returned file is worth: collect's exit code, the SHA-256 the node said against the file
    that arrived, then read as any bundle (every member's hash). Both engines end here."""
    if code not in (0, 5) or not out.exists() or out.stat().st_size == 0:
        return NodeResult(node_outcome(node, started, code, stderr, outcome="failed",
                                   detail=last_line(stderr) or f"exit {code}"))
    got = file_sha256(out)
    if said is None or said != got:
        return NodeResult(node_outcome(node, started, code, stderr, outcome="invalid", sha256=got, remote_sha256=said,
                                   detail="the file that arrived is not the one the node wrote (SHA-256 differs)"))
    try:
        bundle = read_bundle(out)
    except NetbundleError as exc:
        return NodeResult(node_outcome(node, started, code, stderr, outcome="invalid", sha256=got, remote_sha256=said,
                                   detail=f"unreadable bundle: {exc}"))
    return NodeResult(node_outcome(node, started, code, stderr, outcome="collected" if code == 0 else "incomplete",
                               sha256=got, remote_sha256=said, bundle_id=bundle.manifest.bundle_id,
                               member=f"nodes/{out.name}",
                               detail="" if code == 0 else last_line(stderr)), out)


def node_file(folder: Path, node: str) -> Path:
    return folder / f"{_SAFE.sub('_', node)[:64] or 'node'}.tar.zst"


def run_fleet(nodes: tuple[str, ...], work: Callable[[str, Running], NodeResult], parallel: int,
              progress: Callable[[NodeOutcome], None] | None = None) -> list[NodeResult]:
    """Every node, at most `parallel` at a time; each `work` ends within its node timeout. Ctrl-C stops what is
    in flight (each node registered how: kill its ssh, delete its Job) and raises FleetInterrupted with what
    arrived, the rest marked interrupted."""
    running = Running()
    results: dict[str, NodeResult] = {}
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(MAX_PARALLEL, parallel)))
    futures = {pool.submit(work, n, running): n for n in nodes}
    try:
        for fut in concurrent.futures.as_completed(futures):
            res = fut.result()
            results[futures[fut]] = res
            if progress is not None:
                progress(res.outcome)
    except KeyboardInterrupt:
        running.stop_all()
        pool.shutdown(wait=True, cancel_futures=True)
        for fut, node in futures.items():
            if fut.done() and not fut.cancelled() and node not in results:
                results[node] = fut.result()
        now = datetime.now(UTC)
        for node in nodes:
            results.setdefault(node, NodeResult(NodeOutcome(node=node, outcome="failed", detail="interrupted",
                                                            started=now, finished=now, duration_s=0.0)))
        raise FleetInterrupted([results[n] for n in nodes]) from None
    pool.shutdown(wait=True)
    return [results[n] for n in nodes]


def collect_fleet(fleet: SshFleet, folder: Path,
                  progress: Callable[[NodeOutcome], None] | None = None) -> list[NodeResult]:
    """Every host over ssh (their nodes' temp folders go with their shells when Ctrl-C kills the ssh)."""
    return run_fleet(fleet.hosts, lambda h, running: collect_node(fleet, h, folder, running), fleet.parallel,
                     progress)


class FleetInterrupted(Exception):
    """Ctrl-C: the nodes' results so far (the rest marked interrupted), for the set to be written anyway."""

    def __init__(self, results: list[NodeResult]) -> None:
        super().__init__("interrupted")
        self.results = results


def wait_until(epoch: float, limit_s: float = 300.0) -> None:
    """Sleep until the shared start (bounded: a start further than limit_s ahead is an error of the caller)."""
    delay = epoch - time.time()
    if delay > limit_s:
        raise ValueError(f"the start is {delay:.0f} s ahead (at most {limit_s:.0f})")
    if delay > 0:
        time.sleep(delay)
