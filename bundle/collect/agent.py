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
import time
import traceback
from datetime import UTC, datetime
from typing import Any

from bundle._netns import effective_caps, netns_inode, setns_net
from bundle.models import Privileges, SliceStatus, Target

PR_SET_PDEATHSIG = 1


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
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
    _emit({"event": "vantage", "entered": entered, "error": error,
           "netns_inode": netns_inode() if error is None else None,
           "privileges": privileges.model_dump(mode="json")})
    if error is not None:
        return

    from bundle.collect.base import SliceContext
    from bundle.collect.registry import collectors

    table = collectors()
    targets = tuple(Target.model_validate(t) for t in request["targets"])
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    for name in request["slices"]:
        cls = table[name]
        started_wall, started = _now(), time.monotonic()
        budget = min(float(request.get("slice_budget_s", 60)), deadline - started)
        unmet = cls.needs.unmet(caps)
        base = {"event": "slice", "slice": name, "started": started_wall}
        if unmet:
            _emit({**base, "status": SliceStatus.SKIPPED, "reason": "; ".join(unmet), "finished": _now(),
                   "duration_s": 0.0, "artifacts": []})
            continue
        ctx = SliceContext(vantage_id=request["vantage_id"], targets=targets, passive=bool(request["passive"]),
                           deadline=started + budget, capabilities=tuple(caps),
                           options=tuple(sorted((str(k), str(v)) for k, v in request.get("options", {}).items())))
        future = pool.submit(cls().collect, ctx)
        try:
            result = future.result(timeout=max(0.1, budget))
        except concurrent.futures.TimeoutError:
            _emit({**base, "status": SliceStatus.FAILED, "reason": f"timeout: no result within {budget:.1f} s",
                   "finished": _now(), "duration_s": round(time.monotonic() - started, 3), "artifacts": []})
            # The hung thread cannot be stopped; a fresh pool lets later slices run.
            pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
            continue
        except Exception as exc:  # contained: one slice never costs the others
            if request.get("debug"):
                raise
            tb = traceback.format_exc()
            _emit({**base, "status": SliceStatus.FAILED, "reason": f"{type(exc).__name__}: {exc}",
                   "finished": _now(), "duration_s": round(time.monotonic() - started, 3),
                   "traceback": tb, "artifacts": []})
            continue
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
