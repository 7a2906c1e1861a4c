"""`netbundle watch`: a flight recorder for intermittent failures. In the watched vantage's netns, a prober
thread connects to each target and resolves each name (the resolver's own plan) every `every_s`, and reads the
kernel's counters; a capture ring keeps the last seconds of the targets' packets in memory. When a trigger fires
(a probe fails or is slow, a watched counter rises, an ICMP error is captured, the operator's command fails),
the ring is frozen a moment later and the full collection runs at once: one bundle holds the seconds before the
failure, the state right after it, and the trigger with the probe history. Cooldown, `max_bundles` and a disk
floor bound what it writes; everything it keeps in memory is bounded."""

from __future__ import annotations

import collections
import queue
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from bundle._netns import setns_net
from bundle.collect import connect
from bundle.collect.counters import read_all
from bundle.collect.ring import Ring
from bundle.models import ConnectOutcome
from bundle.models.watch import CounterReading, ProbeResult, ProbeTotals, RingStats, SocketCounts, Trigger
from bundle.netlink.sockdiag import dump_all

MAX_PROBES_KEPT = 3600  # probe results kept in the record (the totals count them all)
MAX_READINGS_KEPT = 600  # counter readings (only those where something rose)
MAX_SOCKET_SAMPLES = 720  # socket state counts (one every SOCKET_EVERY_S: an hour)
SOCKET_EVERY_S = 5.0  # a sock_diag dump of a big table costs; every few seconds is enough for a trend
# Counters whose rise is a trigger by default: a packet the kernel let go without a word.
DEFAULT_COUNTERS = ("conntrack_drop", "conntrack_insert_failed", "conntrack_early_drop",
                    "TcpExtIPReversePathFilter", "TcpExtListenDrops", "TcpExtListenOverflows")
# Also recorded (never triggers unless asked): the background a failure stands out from.
RECORDED = DEFAULT_COUNTERS + ("TcpRetransSegs", "TcpExtTCPSynRetrans", "IpInNoRoutes", "IpOutNoRoutes",
                               "IpInDiscards", "UdpRcvbufErrors", "TcpAttemptFails")


@dataclass(frozen=True)
class WatchPlan:
    vantage_id: str
    netns: Path | None  # None: this process's own netns
    connects: tuple[tuple[str, str, int], ...]  # (spec, address, port)
    names: tuple[str, ...]
    resolv_kind: str  # the vantage kind and ref, to read its resolv.conf as the DNS slice does
    resolv_ref: str | None
    capture_toward: tuple[str, ...]
    capture_filter: str | None
    every_s: float = 1.0
    connect_timeout_s: float = 1.0
    connect_slow_ms: float | None = None
    dns_slow_ms: float | None = None
    counters: tuple[str, ...] = DEFAULT_COUNTERS
    retrans_rate: float | None = None  # TcpRetransSegs per second above which a trigger fires
    icmp_trigger: bool = True
    trigger_cmd: tuple[str, ...] | None = None
    ring_seconds: float = 30.0
    ring_bytes: int = 64 << 20
    snaplen: int = 128
    post_trigger_s: float = 2.0
    cooldown_s: float = 60.0
    max_bundles: int = 3
    disk_floor_bytes: int = 1 << 30
    duration_s: float | None = None
    bundle_on_exit: bool = False


@dataclass
class WatchState:
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    totals: dict[tuple[str, str], ProbeTotals] = field(default_factory=dict)
    probes: collections.deque[ProbeResult] = field(default_factory=lambda: collections.deque(maxlen=MAX_PROBES_KEPT))
    probes_seen: int = 0
    readings: collections.deque[CounterReading] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_READINGS_KEPT))
    sockets: collections.deque[SocketCounts] = field(
        default_factory=lambda: collections.deque(maxlen=MAX_SOCKET_SAMPLES))
    triggers_seen: int = 0
    bundles: list[Path] = field(default_factory=list)
    held_back: list[str] = field(default_factory=list)  # why triggers wrote no bundle (cooldown, limit, disk)
    last_bundle_at: float | None = None
    ended_by: str = "stopped (SIGINT or SIGTERM)"

    @property
    def probes_dropped(self) -> int:
        return max(0, self.probes_seen - len(self.probes))

    def failures(self) -> int:
        return sum(t.failed for t in self.totals.values())


class Prober:
    """A thread inside the vantage's netns that runs one round of probes and counter reads when asked."""

    def __init__(self, plan: WatchPlan) -> None:
        self.plan = plan
        self._asks: queue.Queue[bool] = queue.Queue()
        self._answers: queue.Queue[tuple[list[ProbeResult], dict[str, int], SocketCounts | None] | BaseException] = \
            queue.Queue()
        self._last_sockets = 0.0
        self._thread = threading.Thread(target=self._run, name="netbundle-prober", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._asks.put(False)
        self._thread.join(timeout=10)

    def round(self, timeout_s: float) -> tuple[list[ProbeResult], dict[str, int], SocketCounts | None]:
        self._asks.put(True)
        got = self._answers.get(timeout=timeout_s)
        if isinstance(got, BaseException):
            raise got
        return got

    def _run(self) -> None:
        try:
            if self.plan.netns is not None:
                setns_net(self.plan.netns)
        except OSError as exc:
            while self._asks.get():
                self._answers.put(exc)
            return
        while self._asks.get():
            try:
                self._answers.put((self._probes(), read_counters(), self._socket_counts()))
            except Exception as exc:  # noqa: BLE001 - handed to the watch loop, which says it
                self._answers.put(exc)

    def _probes(self) -> list[ProbeResult]:
        out: list[ProbeResult] = []
        for spec, address, port in self.plan.connects:
            at = datetime.now(UTC)
            p = connect.probe(spec, address, port, attempts=1, timeout=self.plan.connect_timeout_s)
            a = p.attempts[0]
            ok = p.outcome is ConnectOutcome.CONNECTED
            out.append(ProbeResult(at=at, kind="connect", target=spec, ok=ok, latency_ms=a.latency_ms,
                                   outcome=p.outcome.value))
        for name in self.plan.names:
            out.append(self._resolve(name))
        return out

    def _socket_counts(self) -> SocketCounts | None:
        """TCP states in the netns (sock_diag, no TCP_INFO), every SOCKET_EVERY_S at most."""
        now = time.monotonic()
        if now - self._last_sockets < SOCKET_EVERY_S:
            return None
        self._last_sockets = now
        tcp: collections.Counter[str] = collections.Counter()
        per = {spec: collections.Counter[str]() for spec, _, _ in self.plan.connects}
        try:
            for s in dump_all(with_tcp_info=False):
                if s.protocol == 6:
                    tcp[s.state] += 1
                    for spec, address, port in self.plan.connects:
                        if s.remote in (address, f"::ffff:{address}") and s.rport == port:
                            per[spec][s.state] += 1
        except OSError:
            return None
        return SocketCounts(at=datetime.now(UTC), tcp=dict(tcp), to_targets={k: dict(v) for k, v in per.items()})

    def _resolve(self, name: str) -> ProbeResult:
        from bundle.collect.dns import load_conf, query_families, resolve
        from bundle.collect.dnswire import Exchanger
        from bundle.models.dns import Outcome

        at = datetime.now(UTC)
        _, _, conf, why = load_conf(self.plan.resolv_kind, self.plan.resolv_ref)
        if conf is None:
            return ProbeResult(at=at, kind="dns", target=name, ok=False, outcome=f"no resolv.conf ({why})")
        budget = max(1.0, self.plan.every_s * 5)
        res = resolve(name, conf, query_families(), Exchanger(conf.options, time.monotonic() + budget, max_wait=budget))
        return ProbeResult(at=at, kind="dns", target=name, ok=res.outcome is Outcome.ANSWERED,
                           latency_ms=res.total_ms, outcome=res.outcome.value)


def read_counters() -> dict[str, int]:
    """The calling thread's netns counters (/proc/thread-self/net: this thread's, not the process's), with
    conntrack's per-CPU statistics summed as conntrack_<field>."""
    base = Path("/proc/thread-self/net")
    values, _unreadable = read_all(tuple(str(base / name) for name in ("snmp", "netstat", "snmp6")))
    try:
        lines = (base / "stat" / "nf_conntrack").read_text().split("\n")
        head = lines[0].split()
        for line in lines[1:]:
            parts = line.split()
            if len(parts) != len(head):
                continue
            for key, raw in zip(head, parts, strict=True):
                if key != "entries":  # the same global count on every CPU's line
                    values[f"conntrack_{key}"] = values.get(f"conntrack_{key}", 0) + int(raw, 16)
    except (OSError, ValueError, IndexError):
        pass
    return values


@dataclass
class Event:
    kind: str  # start, trigger, bundle, held_back, error, stop
    detail: dict[str, object]


class Watcher:
    """The loop. `write_bundle(trigger, ring_pcapng, ring_stats, state)` is the caller's (the CLI's): it runs
    the full collection with the ring and the record and returns the bundle's path (or None)."""

    def __init__(self, plan: WatchPlan, write_bundle: Callable[[Trigger, bytes, RingStats, WatchState], Path | None],
                 on_event: Callable[[Event], None], status: Callable[[str], None] | None = None,
                 disk: Path = Path(".")) -> None:
        self.plan, self.write_bundle, self.on_event, self.status, self.disk = plan, write_bundle, on_event, status, disk
        self.state = WatchState()
        self.stop = threading.Event()
        self._last_counters: dict[str, int] | None = None
        self._last_at = time.monotonic()

    def run(self) -> WatchState:
        plan = self.plan
        ring = None
        if plan.capture_filter:
            ring = Ring(plan.netns, list(plan.capture_toward), plan.capture_filter, plan.ring_seconds, plan.ring_bytes,
                        plan.snaplen)
            ring.start()
        prober = Prober(plan)
        prober.start()
        self.on_event(Event("start", {"vantage": plan.vantage_id, "ring": ring.stats.interfaces if ring else [],
                                      "ring_unavailable": ring.stats.unavailable if ring else "no capture filter"}))
        until = time.monotonic() + plan.duration_s if plan.duration_s else None
        if until is not None:
            self.state.ended_by = f"--for {plan.duration_s:g} s elapsed"
        last_trigger: Trigger | None = None
        try:
            while not self.stop.is_set() and (until is None or time.monotonic() < until):
                tick = time.monotonic()
                fired = self._tick(prober, ring)
                if fired:
                    self.state.triggers_seen += 1
                    last_trigger = fired[0]
                    self.on_event(Event("trigger", fired[0].model_dump(mode="json")))
                    why = self._held_back()
                    if why:
                        self.state.held_back.append(why)
                        self.on_event(Event("held_back", {"why": why}))
                    else:
                        self._bundle(fired[0], ring)
                        if len(self.state.bundles) >= plan.max_bundles:
                            self.state.ended_by = f"--max-bundles {plan.max_bundles} written"
                            break  # nothing more this watch may write
                self._status(ring)
                self.stop.wait(max(0.0, plan.every_s - (time.monotonic() - tick)))
        finally:
            prober.stop()
            if plan.bundle_on_exit and not self.state.bundles and self._held_back() is None:
                self._bundle(Trigger(at=datetime.now(UTC), kind="exit", detail="--bundle-on-exit: the watch "
                                     "ended" + (f"; last trigger {last_trigger.kind}" if last_trigger else "")), ring)
            if ring is not None:
                ring.stop()
            self.on_event(Event("stop", {"ended_by": self.state.ended_by,
                                         "bundles": [str(p) for p in self.state.bundles],
                                         "triggers": self.state.triggers_seen, "held_back": self.state.held_back}))
        return self.state

    def _held_back(self) -> str | None:
        st, plan = self.state, self.plan
        if len(st.bundles) >= plan.max_bundles:
            return f"--max-bundles {plan.max_bundles} reached"
        if st.last_bundle_at is not None and time.monotonic() - st.last_bundle_at < plan.cooldown_s:
            return f"cooldown ({plan.cooldown_s:g} s after the last bundle)"
        free = shutil.disk_usage(self.disk).free
        if free < plan.disk_floor_bytes:
            return f"only {free >> 20} MiB free in {self.disk} (floor {plan.disk_floor_bytes >> 20} MiB)"
        return None

    def _bundle(self, trigger: Trigger, ring: Ring | None) -> None:
        self.stop.wait(self.plan.post_trigger_s)  # the failure's own retransmissions, then freeze
        data, stats = ring.snapshot(self.plan.vantage_id) if ring else (b"", RingStats(
            seconds=self.plan.ring_seconds, bytes_limit=self.plan.ring_bytes, unavailable="no capture filter"))
        try:
            path = self.write_bundle(trigger, data, stats, self.state)
        except Exception as exc:  # noqa: BLE001 - one failed write never ends the watch
            self.on_event(Event("error", {"what": "writing the bundle", "error": str(exc)[:300]}))
            path = None
        self.state.last_bundle_at = time.monotonic()
        if path is not None:
            self.state.bundles.append(path)
            self.on_event(Event("bundle", {"path": str(path), "trigger": trigger.kind}))

    def _tick(self, prober: Prober, ring: Ring | None) -> list[Trigger]:
        plan, st = self.plan, self.state
        fired: list[Trigger] = []
        try:
            probes, counters, sockets = prober.round(
                timeout_s=max(10.0, plan.every_s * 10 + plan.connect_timeout_s * 4))
        except (queue.Empty, OSError) as exc:
            self.on_event(Event("error", {"what": "probes", "error": str(exc) or "no answer"}))
            return []
        if sockets is not None:
            st.sockets.append(sockets)
        for p in probes:
            st.probes.append(p)
            st.probes_seen += 1
            t = st.totals.setdefault((p.kind, p.target), ProbeTotals(kind=p.kind, target=p.target))
            t.sent += 1
            slow_ms = plan.connect_slow_ms if p.kind == "connect" else plan.dns_slow_ms
            if not p.ok:
                t.failed += 1
                t.first_failure = t.first_failure or p.at
                t.last_failure = p.at
                fired.append(Trigger(at=p.at, kind=f"{p.kind}_failed", target=p.target,
                                     detail=f"{p.kind} {p.target}: {p.outcome}"
                                            + (f" after {p.latency_ms:.0f} ms" if p.latency_ms is not None else "")))
            elif slow_ms is not None and p.latency_ms is not None and p.latency_ms > slow_ms:
                t.slow += 1
                fired.append(Trigger(at=p.at, kind=f"{p.kind}_slow", target=p.target,
                                     detail=f"{p.kind} {p.target}: {p.latency_ms:.0f} ms > {slow_ms:g} ms"))
        now = datetime.now(UTC)
        elapsed = max(1e-3, time.monotonic() - self._last_at)
        self._last_at = time.monotonic()
        if self._last_counters is not None:
            deltas = {k: counters[k] - self._last_counters[k] for k in RECORDED
                      if k in counters and k in self._last_counters and counters[k] > self._last_counters[k]}
            if deltas:
                st.readings.append(CounterReading(at=now, deltas=deltas))
            for name in plan.counters:
                if deltas.get(name):
                    fired.append(Trigger(at=now, kind="counter_rise", target=None,
                                         detail=f"{name} +{deltas[name]} in {elapsed:.1f} s"))
            rate = deltas.get("TcpRetransSegs", 0) / elapsed
            if plan.retrans_rate is not None and rate > plan.retrans_rate:
                fired.append(Trigger(at=now, kind="counter_rise", detail=f"TcpRetransSegs {rate:.1f}/s > "
                                                                         f"{plan.retrans_rate:g}/s"))
        self._last_counters = counters
        if ring is not None and plan.icmp_trigger:
            errors = ring.take_icmp_errors()
            if errors:
                fired.append(Trigger(at=datetime.fromtimestamp(errors[0][0] / 1e9, UTC), kind="icmp_error",
                                     detail=f"{errors[0][1]}" + (f" (+{len(errors) - 1} more)" if len(errors) > 1 else "")))
        if plan.trigger_cmd:
            try:
                rc = subprocess.run(list(plan.trigger_cmd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, timeout=max(1.0, plan.every_s * 5)).returncode
            except (OSError, subprocess.TimeoutExpired) as exc:
                rc, note = -1, str(exc)
            else:
                note = f"exit {rc}"
            if rc != 0:
                fired.append(Trigger(at=datetime.now(UTC), kind="command_failed", detail=f"--trigger-cmd: {note}"))
        return fired

    def _status(self, ring: Ring | None) -> None:
        if self.status is None:
            return
        st = self.state
        sent = sum(t.sent for t in st.totals.values())
        packets, kept = ring.fill() if ring else (0, 0)
        up = datetime.now(UTC) - st.started
        self.status(f"watching {self.plan.vantage_id}: {sent} probes, {st.failures()} failed; ring {packets} pkts "
                    f"{kept / 1048576:.1f}/{self.plan.ring_bytes / 1048576:.0f} MiB; triggers {st.triggers_seen}; "
                    f"bundles {len(st.bundles)}/{self.plan.max_bundles}; up {int(up.total_seconds())} s")
