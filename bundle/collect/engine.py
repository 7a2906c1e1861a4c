"""Run every slice in every vantage of this node under one deadline, stage what arrives, write one bundle.
(The request and outcome: collect/request.py; the agent processes: collect/agents.py; the Kubernetes phase
that runs first: collect/kubephase.py.)

Each vantage gets one agent process inside its netns; agents run
concurrently. Whatever happens (a slice raising, hanging, an agent dying,
Ctrl-C, SIGTERM), what was collected is written and the manifest says what
was not and why.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import getpass
import json
import os
import platform
import queue
import re
import secrets
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bundle import __version__
from bundle.archive import StagedBundle, staged_bundle
from bundle.collect.agents import Agent
from bundle.collect.kubephase import KUBE_VANTAGE, KubePhase, kube_first
from bundle.collect.registry import collectors
from bundle.collect.request import CollectOutcome, CollectRequest, Finalizer, Progress
from bundle.errors import BundleWriteError, StagingError, UsageError
from bundle.models import (
    FORMAT_NAME,
    FORMAT_VERSION,
    READ_COMPATIBLE_FORMAT_VERSION,
    HostFacts,
    Invocation,
    Manifest,
    MediaType,
    Privileges,
    Provenance,
    SliceRun,
    SliceStatus,
    Vantage,
    VantageKind,
)

EXIT_OK = 0
EXIT_INCOMPLETE = 5
EXIT_INTERRUPTED = 130
_GRACE_S = 1.5  # the agent's own deadline sits this much inside ours


def host_facts() -> HostFacts:
    try:
        boot_id: str | None = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = None
    uname = platform.uname()
    return HostFacts(hostname=socket.gethostname(), kernel=f"{uname.release} {uname.version}",
                     boot_id=boot_id, machine=uname.machine)


def default_output(created: datetime, hostname: str, directory: Path = Path(".")) -> Path:
    """incident-YYYYmmdd-HHMM-<host>.tar.zst, never clobbering an earlier bundle."""
    host = re.sub(r"[^A-Za-z0-9.-]", "_", hostname)[:48] or "host"
    stem = f"incident-{created:%Y%m%d-%H%M}-{host}"
    candidate, n = directory / f"{stem}.tar.zst", 2
    while candidate.exists():
        candidate, n = directory / f"{stem}-{n}.tar.zst", n + 1
    return candidate


def _lost_member(run: SliceRun, why: str) -> None:
    """A member of this slice is not in the bundle: a complete slice becomes partial, and says which and why."""
    if run.status is SliceStatus.COMPLETE:
        run.status = SliceStatus.PARTIAL
    run.reason = "; ".join(filter(None, [run.reason, why]))


class _Run:
    """The bookkeeping of one collection: vantages, slice runs, staged members."""

    def __init__(self, req: CollectRequest, staged: StagedBundle, slices: list[str]) -> None:
        self.req = req
        self.staged = staged
        self.slices = slices
        self.vantages: dict[str, Vantage] = {}
        self.runs: dict[tuple[str, str], SliceRun] = {}
        for spec in req.vantages:
            self.vantages[spec.id] = Vantage(id=spec.id, kind=spec.kind, ref=spec.ref, entered=False)
            for name in slices:
                self.runs[(spec.id, name)] = SliceRun(slice=name, vantage=spec.id, status=SliceStatus.FAILED,
                                                      reason="not run")

    def on_vantage(self, vid: str, event: dict[str, Any]) -> None:
        v = self.vantages[vid]
        v.entered = bool(event.get("entered"))
        v.netns_inode = event.get("netns_inode")
        v.error = event.get("error")
        v.resolved = {str(k): [str(a) for a in val] for k, val in (event.get("resolved") or {}).items()}
        if event.get("privileges"):
            v.privileges = Privileges.model_validate(event["privileges"])
        if v.error:
            for name in self.slices:
                self.runs[(vid, name)].reason = v.error

    def on_slice(self, vid: str, event: dict[str, Any]) -> SliceRun:
        name = str(event.get("slice"))
        run = self.runs.get((vid, name))
        if run is None:
            raise ValueError(f"agent reported an unknown slice {name!r}")
        run.status = SliceStatus(event["status"])
        run.reason = event.get("reason")
        run.started = datetime.fromisoformat(event["started"]) if event.get("started") else None
        run.finished = datetime.fromisoformat(event["finished"]) if event.get("finished") else None
        run.duration_s = float(event.get("duration_s", 0.0))
        if isinstance(event.get("monotonic_start_ns"), int):
            run.monotonic_start_ns = event["monotonic_start_ns"]
        if isinstance(event.get("monotonic_end_ns"), int):
            run.monotonic_end_ns = event["monotonic_end_ns"]
        for art in event.get("artifacts", []):
            path = f"vantages/{vid}/{art['name']}"
            prov = Provenance.model_validate(art["provenance"])
            prov.slice, prov.vantage = name, vid
            try:
                data = base64.b64decode(art["data_b64"], validate=True)
            except (binascii.Error, ValueError):
                run.status, run.reason = SliceStatus.FAILED, f"agent sent a corrupt artifact {art['name']!r}"
                continue
            self._stage(run, path, data, art["media_type"], prov)
        if event.get("traceback"):
            self._stage(run, f"errors/{vid}-{name}.txt", str(event["traceback"]).encode(), MediaType.TRACEBACK,
                        Provenance(slice=name, vantage=vid, source="collector exception"))
        return run

    def _stage(self, run: SliceRun, path: str, data: bytes, media: str, prov: Provenance) -> None:
        """Stage one member of a slice; one that cannot be (a full disk) makes the slice partial, not the run fail."""
        try:
            self.staged.add_bytes(path, data, media, prov)
        except StagingError as exc:
            _lost_member(run, str(exc))
            return
        run.members.append(path)

    def drop_bulk(self, media_types: frozenset[str], why: str) -> list[str]:
        """Drop the staged members of these media types, marking their slices partial; the paths dropped."""
        dropped = [p for p, m in self.staged.members.items() if m.media_type in media_types]
        for path in dropped:
            self.staged.drop(path)
            for run in self.runs.values():
                if path in run.members:
                    run.members.remove(path)
                    _lost_member(run, f"{path} dropped: {why}")
        return dropped

    def close_pending(self, reason_for: Callable[[str], str]) -> None:
        for (vid, _), run in self.runs.items():
            if run.reason == "not run":
                run.reason = reason_for(vid)


def collect(req: CollectRequest, progress: Callable[[Progress], None] | None = None) -> CollectOutcome:
    """Collect every slice from every vantage and write the bundle; never raises for a slice's failure."""
    if not req.vantages:
        raise UsageError("no vantage to collect from")
    table = collectors()
    slices = req.slices or list(table)
    unknown = [s for s in slices if s not in table]
    if unknown:
        raise UsageError(f"unknown slice(s): {', '.join(unknown)} (known: {', '.join(table)})")
    created = datetime.now(UTC)
    host = host_facts()
    out = req.output or default_output(created, host.hostname)
    if not out.parent.is_dir():
        raise BundleWriteError(f"cannot write the bundle: {out.parent} is not a folder")
    try:  # a real attempt, not os.access(): capabilities and read-only mounts decide, not mode bits
        staged = StagedBundle(parent=out.parent.resolve())
    except OSError as exc:
        raise BundleWriteError(f"cannot write the bundle in {out.parent}: {exc.strerror}") from None
    try:
        return _collect(req, progress, table_slices=slices, staged=staged, created=created, host=host, out=out)
    finally:
        staged.cleanup()


def _collect(req: CollectRequest, progress: Callable[[Progress], None] | None, *, table_slices: list[str],
             staged: StagedBundle, created: datetime, host: HostFacts, out: Path) -> CollectOutcome:
    deadline = time.monotonic() + req.timeout_s
    kube_phase: KubePhase | None = None
    if req.kube is not None:
        kube_phase = kube_first(req, req.kube, staged, progress, host.hostname)
        req = kube_phase.request
    try:
        return _collect_vantages(req, progress, table_slices=table_slices, staged=staged, out=out,
                                 created=created, host=host, deadline=deadline, kube_phase=kube_phase)
    finally:
        if kube_phase is not None and kube_phase.slices_file is not None:
            kube_phase.slices_file.unlink(missing_ok=True)


def _client(req: CollectRequest, vantages: list[Vantage]) -> str | None:
    """The vantage the ladder decides for: --client (by id or as named), else the pod of --pod, else the first
    vantage named (the host only when it is the only one)."""
    if req.client:
        return next((v.id for v in vantages if req.client in (v.id, v.ref)), None)
    named = [v for v in vantages if v.kind not in (VantageKind.HOST, VantageKind.KUBERNETES_API)]
    hosts = [v for v in vantages if v.kind is VantageKind.HOST]
    first = (named or hosts)[:1]
    return first[0].id if first else None


def _collect_vantages(req: CollectRequest, progress: Callable[[Progress], None] | None, *, table_slices: list[str],
                      staged: StagedBundle, out: Path, created: datetime, host: HostFacts, deadline: float,
                      kube_phase: KubePhase | None) -> CollectOutcome:
    run = _Run(req, staged, table_slices)
    if kube_phase is not None:
        run.vantages[KUBE_VANTAGE] = kube_phase.vantage
        run.runs[(KUBE_VANTAGE, "kube")] = kube_phase.run
    events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
    agents: dict[str, Agent] = {}
    for spec in req.vantages:
        problem = spec.problem()
        if problem:
            run.vantages[spec.id].error = problem
            for name in table_slices:
                run.runs[(spec.id, name)].reason = problem
            continue
        request = {
            "vantage_id": spec.id, "netns_path": str(spec.path) if spec.path else None,
            "targets": [t.model_dump(mode="json") for t in req.targets], "passive": req.passive,
            "timeout_s": max(1.0, req.timeout_s - _GRACE_S), "slice_budget_s": req.timeout_s,
            "slices": table_slices, "debug": req.debug,
            "options": req.options.model_copy(update={"dns_names": list(dict.fromkeys(
                [*req.options.dns_names, *(t.name for t in req.targets if t.name)]))}).model_dump(mode="json"),
            "vantage": {"kind": spec.kind.value, "ref": spec.ref or None,
                        "disk_free": shutil.disk_usage(out.parent).free},
        }
        agents[spec.id] = Agent(spec, request, events)
    for agent in agents.values():
        agent.spawn()
    for agent in agents.values():
        agent.start()
    live = set(agents)
    interrupted = False
    timed_out = False
    try:
        while live:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            try:
                vid, event = events.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            _dispatch(run, agents, live, vid, event, progress)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        for agent in agents.values():
            agent.kill()
    # Keep whatever the agents delivered before they were stopped.
    for agent in agents.values():
        agent.join(timeout=2)
    while True:
        try:
            vid, event = events.get_nowait()
        except queue.Empty:
            break
        _dispatch(run, agents, live, vid, event, progress)

    def reason_for(vid: str) -> str:
        if interrupted:
            return "interrupted before this slice finished"
        if timed_out:
            return f"timeout: the overall deadline of {req.timeout_s:g} s passed"
        agent = agents.get(vid)
        tail = agent.stderr_tail().strip().splitlines()[-1:] if agent else []
        return "agent exited before this slice ran" + (f": {tail[0]}" if tail else "")

    run.close_pending(reason_for)
    for spec in req.vantages:  # a pod deleted mid-collect: later evidence may show its teardown, not the incident
        v = run.vantages[spec.id]
        if v.entered:
            v.lost = spec.fate(v.netns_inode)
    for i, pcap in enumerate(req.pcaps):
        _add_pcap(staged, pcap, i)
    for vid, agent in agents.items():
        tail = agent.stderr_tail()
        agent.stderr.close()  # a watch collects many times in one process
        if tail.strip():
            with contextlib.suppress(StagingError):  # a diagnostic only: a full disk may cost it
                staged.add_bytes(f"errors/{vid}-agent.txt", tail.encode(), MediaType.TEXT,
                                 Provenance(vantage=vid, source="agent stderr", truncated=len(tail) >= 2000))

    def exit_code() -> int:
        if interrupted:
            return EXIT_INTERRUPTED
        if {r.status for r in run.runs.values()} <= {SliceStatus.COMPLETE, SliceStatus.SKIPPED}:
            return EXIT_OK
        return EXIT_INCOMPLETE

    code = exit_code()
    manifest = Manifest(
        format=FORMAT_NAME, format_version=FORMAT_VERSION, read_compatible_version=READ_COMPATIBLE_FORMAT_VERSION,
        bundle_id=f"netbundle-{created:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}",
        created=created, finished=datetime.now(UTC), tool_version=__version__, host=host,
        invocation=Invocation(argv=req.argv, user=_user(), uid=os.getuid(), exit_code=code, ticket=req.ticket,
                              note=req.note, passive=req.passive, timeout_s=req.timeout_s),
        targets=req.targets, vantages=list(run.vantages.values()), client=_client(req, list(run.vantages.values())),
        slices=list(run.runs.values()), members=list(staged.members.values()),
    )
    if req.finalize is not None and not interrupted:
        _finalize(req.finalize, manifest, staged)
        manifest.members = list(staged.members.values())
    tiers = iter(_BULK)
    while True:
        try:
            written = staged.write(manifest, out, overwrite=req.force)
            break
        except BundleWriteError as exc:
            if not (isinstance(exc.__cause__, OSError) and exc.__cause__.errno == errno.ENOSPC):
                raise
            # The bundle does not fit: give up the bulk, tier by tier; the documents that explain it stay.
            for what, media in tiers:
                if run.drop_bulk(media, f"no space left on the device to write the bundle ({what} go first)"):
                    break
            else:
                raise
            manifest.members = list(staged.members.values())
            manifest.invocation.exit_code = code = exit_code()
    return CollectOutcome(path=written, manifest=manifest, exit_code=code, interrupted=interrupted)


# What a full disk costs first when the bundle does not fit: captures, then full row tables (their summaries stay).
_BULK: tuple[tuple[str, frozenset[str]], ...] = (
    ("captures", frozenset({MediaType.PCAPNG, "application/vnd.tcpdump.pcap"})),
    ("row tables", frozenset({MediaType.SOCKET_TABLE})),
)




def _finalize(finalize: Finalizer, manifest: Manifest, staged: StagedBundle) -> None:
    """Members computed from the collected documents. Failing here never costs the bundle: the error is kept."""
    started = time.monotonic()
    try:
        extra = finalize(staged_bundle(manifest, staged))
    except Exception:  # noqa: BLE001 - whatever analysis hits, the evidence is still written
        with contextlib.suppress(StagingError):
            staged.add_bytes("errors/finalize.txt", traceback.format_exc().encode(), MediaType.TRACEBACK,
                             Provenance(source="analysis at collect time"))
        return
    for path, data, media, source in extra:
        with contextlib.suppress(StagingError):  # recomputable: `netbundle analyze` gives the same result
            staged.add_bytes(path, data, media,
                             Provenance(source=source, duration_s=round(time.monotonic() - started, 6)))


MAX_PCAP_BYTES = 512 << 20


def _add_pcap(staged: StagedBundle, path: Path, index: int) -> None:
    """An operator's capture (`--pcap`), kept as evidence beside its analysis, read like one of ours."""
    from bundle.analyze.pcap import analyze_capture

    started = time.monotonic()
    name = re.sub(r"[^A-Za-z0-9._-]", "_", path.name)[:80] or "capture"
    folder = f"captures/{index}-{name}"
    try:
        size = path.stat().st_size
        if size > MAX_PCAP_BYTES:
            raise BundleWriteError(f"--pcap {path}: {size} bytes is over the {MAX_PCAP_BYTES >> 20} MiB limit")
        data = path.read_bytes()
    except OSError as exc:
        raise BundleWriteError(f"--pcap {path}: {exc.strerror}") from None
    staged.add_bytes(f"{folder}/{name}", data, "application/vnd.tcpdump.pcap",
                     Provenance(source=f"operator-supplied capture {path}", slice="capture"))
    analysis = analyze_capture(path, name)
    staged.add_bytes(f"{folder}/analysis.json", analysis.model_dump_json(indent=1).encode(), MediaType.CAPTURE_ANALYSIS,
                     Provenance(source=f"analysis of {path}", slice="capture",
                                duration_s=round(time.monotonic() - started, 6)))


def _dispatch(run: _Run, agents: dict[str, Agent], live: set[str], vid: str, event: dict[str, Any],
              progress: Callable[[Progress], None] | None) -> None:
    kind = event.get("event")
    if kind == "vantage":
        run.on_vantage(vid, event)
    elif kind == "slice":
        try:
            sr = run.on_slice(vid, event)
        except (ValueError, KeyError, TypeError) as exc:
            return _note_bad_event(run, vid, exc)
        if progress is not None:
            progress(Progress(vantage=vid, slice=sr.slice, status=sr.status, duration_s=sr.duration_s, reason=sr.reason))
    elif kind == "crash":
        run.vantages[vid].error = str(event.get("reason"))
    elif kind == "exit":
        live.discard(vid)
    return None


def _note_bad_event(run: _Run, vid: str, exc: Exception) -> None:
    v = run.vantages[vid]
    v.error = f"agent sent a malformed event: {exc}"


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
