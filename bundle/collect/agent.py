"""The probe process of one vantage: enters the netns, runs the slices, streams results.

Run as `python -m bundle.collect.agent` by the engine, a request (JSON) on
stdin; one JSON line per event on stdout, flushed as each slice finishes so
that a killed agent has still delivered what it finished. All slices of a
vantage share this one process (pyroute2's import alone costs ~0.3 s).
"""

from __future__ import annotations

import base64
import concurrent.futures
import ctypes
import ctypes.util
import json
import os
import signal
import sys
import threading
import time
import traceback
from datetime import UTC, datetime
from collections.abc import Callable
from typing import Any

from bundle._netns import effective_caps, netns_inode, setns_net
from bundle.models import Privileges, SliceStatus, Target

PR_SET_PDEATHSIG = 1


_EMIT_LOCK = threading.Lock()


def _emit(event: dict[str, Any]) -> None:
    line = json.dumps(event, separators=(",", ":")) + "\n"
    with _EMIT_LOCK:
        sys.stdout.write(line)
        sys.stdout.flush()


def _die_with_parent() -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _now() -> str:
    return datetime.now(UTC).isoformat()


def run(request: dict[str, Any]) -> None:
    deadline = time.monotonic() + float(request["timeout_s"])
    path = request.get("netns_path")
    entered = False
    error = None
    if path:
        try:
            setns_net(path)
            entered = True
        except OSError as exc:
            error = f"cannot enter netns {path}: {exc.strerror}"
    cap_hex, caps = effective_caps()
    privileges = Privileges(uid=os.getuid(), euid=os.geteuid(), cap_effective=cap_hex, capabilities=caps)
    vantage_event = {"event": "vantage", "entered": entered, "error": error,
                     "netns_inode": netns_inode() if error is None else None,
                     "privileges": privileges.model_dump(mode="json"), "resolved": {}}
    if error is not None:
        _emit(vantage_event)
        return

    from bundle.collect.base import SliceContext
    from bundle.collect.dns import resolve_targets
    from bundle.models.request import CollectOptions
    from bundle.collect.registry import collectors

    table = collectors()
    options = CollectOptions.model_validate(request.get("options") or {})
    where = request.get("vantage") or {}
    kind, ref = str(where.get("kind") or "host"), where.get("ref") or None
    asked = [Target.model_validate(t) for t in request["targets"]]
    max_wait = options.dns_timeout
    targets_list, name_reports, answers = resolve_targets(
        asked, kind, ref,
        passive=bool(request["passive"]), deadline=min(deadline, time.monotonic() + 20), max_wait=max_wait)
    targets = tuple(targets_list)
    vantage_event["resolved"] = answers
    _emit(vantage_event)
    # Slices of one vantage run side by side, so the capture window, socket samples and probes overlap.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(request["slices"])))
    running: dict[concurrent.futures.Future[Any], tuple[str, str, float, float]] = {}
    mono_start: dict[str, int] = {}
    runnable = [n for n in request["slices"] if not table[n].needs.unmet(caps)]
    # A latch, not a barrier: a slice "arrives" when its passive snapshot is taken (at its gate) or when it
    # ends, whichever is first; a slice at its gate waits until every slice has arrived.
    arrived: set[str] = set()
    latch = threading.Condition()
    finished: set[str] = set()

    def arrive(slice_name: str) -> None:
        with latch:
            arrived.add(slice_name)
            latch.notify_all()

    def gate_for(slice_name: str) -> Callable[[], None]:
        def gate() -> None:
            arrive(slice_name)
            with latch:
                latch.wait_for(lambda: arrived >= set(runnable),
                               timeout=max(0.1, min(10.0, deadline - time.monotonic())))
        return gate

    def ended_callback(slice_name: str) -> Callable[[concurrent.futures.Future[Any]], None]:
        def ended(_: concurrent.futures.Future[Any]) -> None:
            finished.add(slice_name)
            arrive(slice_name)
        return ended

    def peers_done_for(slice_name: str) -> Callable[[], bool]:
        peers = [n for n in runnable if n != slice_name and not table[n].spans_window]
        return lambda: bool(peers) and all(n in finished for n in peers)  # alone, a slice runs to its limits

    for name in request["slices"]:
        cls = table[name]
        started_wall, started = _now(), time.monotonic()
        budget = min(float(request.get("slice_budget_s", 60)), deadline - started)
        unmet = cls.needs.unmet(caps)
        if unmet:
            _emit({"event": "slice", "slice": name, "started": started_wall, "status": SliceStatus.SKIPPED,
                   "reason": "; ".join(unmet), "finished": _now(), "duration_s": 0.0, "artifacts": []})
            continue
        ctx = SliceContext(vantage_id=request["vantage_id"], targets=targets, passive=bool(request["passive"]),
                           deadline=started + budget, capabilities=tuple(caps),
                           options=options, vantage_kind=kind, vantage_ref=ref, disk_free=where.get("disk_free"),
                           probe_gate=gate_for(name), resolved_names=tuple(name_reports),
                           peers_done=peers_done_for(name),
                           alone=not any(n != name and not table[n].spans_window for n in runnable))
        future = pool.submit(cls().collect, ctx)
        future.add_done_callback(ended_callback(name))
        running[future] = (name, started_wall, started, budget)
        mono_start[name] = time.monotonic_ns()
    hard_stop = max((started + budget for _, _, started, budget in running.values()), default=time.monotonic())
    try:
        for future in concurrent.futures.as_completed(running, timeout=max(0.1, hard_stop - time.monotonic())):
            _report(future, *running[future], debug=bool(request.get("debug")),
                    mono_start=mono_start.get(running[future][0]))
    except concurrent.futures.TimeoutError:
        pass
    for future, (name, started_wall, started, budget) in running.items():
        if not future.done():
            # A hung slice's thread cannot be stopped; main() exits the process without waiting for it.
            _emit({"event": "slice", "slice": name, "started": started_wall, "status": SliceStatus.FAILED,
                   "reason": f"timeout: no result within {budget:.1f} s", "finished": _now(),
                   "duration_s": round(time.monotonic() - started, 3), "artifacts": []})


def _report(future: concurrent.futures.Future[Any], name: str, started_wall: str, started: float, budget: float,
            *, debug: bool, mono_start: int | None = None) -> None:
    base = {"event": "slice", "slice": name, "started": started_wall, "monotonic_start_ns": mono_start,
            "monotonic_end_ns": time.monotonic_ns()}
    try:
        result = future.result()
    except Exception as exc:  # contained: one slice never costs the others
        if debug:
            raise
        _emit({**base, "status": SliceStatus.FAILED, "reason": f"{type(exc).__name__}: {exc}",
               "finished": _now(), "duration_s": round(time.monotonic() - started, 3),
               "traceback": "".join(traceback.format_exception(exc)), "artifacts": []})
        return
    _emit({
        **base, "status": result.status, "reason": result.reason, "finished": _now(),
        "duration_s": round(time.monotonic() - started, 3),
        "artifacts": [
            {"name": a.name, "media_type": str(a.media_type), "data_b64": base64.b64encode(a.data).decode(),
             "provenance": a.provenance.model_dump(mode="json")}
            for a in result.artifacts
        ],
    })


def main() -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the engine decides what an interrupt means
    request = json.loads(sys.stdin.read())
    try:
        run(request)
        _emit({"event": "done"})
    finally:
        sys.stdout.flush()
        os._exit(0)  # do not wait for a hung slice thread


if __name__ == "__main__":
    main()
