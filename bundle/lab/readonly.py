"""`lab score --readonly` (and the tests): what a collect must leave as it found it in a netns: firewall rules, routes, policy rules, neighbors, links,
addresses, sysctls and the conntrack table — read with the system's own tools, so our decoders are not judging
themselves."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from bundle.netlink import ctnetlink

# Sysctls the kernel moves by itself (counts, not settings).
_VOLATILE_SYSCTLS = re.compile(r"^net\.netfilter\.nf_conntrack_count\b|\.stable_secret\b")
# Machine-wide settings a collect could be tempted to touch.
MACHINE_SYSCTLS = ("/proc/sys/net/netfilter/nf_conntrack_max", "/proc/sys/net/nf_conntrack_max",
                   "/proc/sys/net/ipv4/ip_forward")


def in_netns(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=True).stdout


def _plain_rules(text: str) -> str:
    text = re.sub(r"counter packets \d+ bytes \d+", "counter", text)
    return "\n".join(re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines() if not line.startswith("#"))


def state(ns: str) -> dict[str, str]:
    """Settings of one netns as text: anything here that differs after a collect is a mutation."""
    sysctls = in_netns(ns, "sysctl", "-a", "--ignore", "--pattern", r"^net\.")  # the rest is not per-netns
    return {
        "nft": _plain_rules(in_netns(ns, "nft", "list", "ruleset")),
        "iptables-nft": _plain_rules(in_netns(ns, "iptables-nft-save")),
        "iptables-legacy": _plain_rules(in_netns(ns, "iptables-legacy-save")),
        # IPv6 link-local routes appear by themselves once DAD ends on a new link: not ours, left out
        "routes": "\n".join(r for r in in_netns(ns, "ip", "-d", "route", "show", "table", "all").splitlines()
                             if "fe80:" not in r),
        "rules": in_netns(ns, "ip", "rule") + in_netns(ns, "ip", "-6", "rule"),
        "links": "\n".join(re.sub(r"\s+", " ", line) for line in in_netns(ns, "ip", "-o", "link").splitlines()),
        "addresses": in_netns(ns, "ip", "-br", "addr"),
        "sysctls": "\n".join(line for line in sysctls.splitlines() if not _VOLATILE_SYSCTLS.search(line)),
    }


@dataclass(frozen=True)
class Neighbor:
    dst: str
    dev: str
    lladdr: str | None
    permanent: bool


def neighbors(ns: str) -> set[Neighbor]:
    out = set()
    for line in in_netns(ns, "ip", "neigh", "show").splitlines():
        parts = line.split()
        if len(parts) < 3 or "dev" not in parts:
            continue
        lladdr = parts[parts.index("lladdr") + 1] if "lladdr" in parts else None
        out.add(Neighbor(parts[0], parts[parts.index("dev") + 1], lladdr, "PERMANENT" in parts))
    return out


ConnKey = tuple[int, str, int | None, str, int | None]


IPS_ASSURED = 1 << 2


def conntrack(ns: str) -> dict[ConnKey, tuple[int, bool]]:
    """Conntrack entries of a netns (by original tuple): remaining timeout, and whether the entry is assured."""
    table = ctnetlink.parse_listing(in_netns(ns, "conntrack", "-L"))
    return {(e.original.proto, e.original.src, e.original.sport, e.original.dst, e.original.dport):
            (e.timeout or 0, bool(e.status & IPS_ASSURED)) for e in table}


def machine() -> dict[str, str]:
    out = {}
    for path in MACHINE_SYSCTLS:
        try:
            with open(path) as fh:
                out[path] = fh.read().strip()
        except OSError:
            pass
    return out


def conntrack_full(ns: str) -> bool:
    """Whether the table is near its max, where the kernel evicts unassured entries itself (early_drop)."""
    out = subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-n", "net.netfilter.nf_conntrack_count",
                          "net.netfilter.nf_conntrack_max"], capture_output=True, text=True).stdout.split()
    return len(out) == 2 and int(out[0]) >= 0.9 * int(out[1])


@dataclass
class Snapshot:
    states: dict[str, dict[str, str]]
    neighbors: dict[str, set[Neighbor]]
    conntrack: dict[str, dict[ConnKey, tuple[int, bool]]]
    conntrack_full: dict[str, bool]
    machine: dict[str, str]


def snapshot(namespaces: list[str]) -> Snapshot:
    return Snapshot({ns: state(ns) for ns in namespaces}, {ns: neighbors(ns) for ns in namespaces},
                    {ns: conntrack(ns) for ns in namespaces}, {ns: conntrack_full(ns) for ns in namespaces},
                    machine())


@dataclass
class Changes:
    """What differs, split into mutations (a failure) and the entries our own probes are allowed to make."""

    mutations: list[str]
    probe_made: list[str]


def _kernel_own(key: ConnKey) -> bool:
    """The multicast membership reports (IGMP) the kernel sends by itself."""
    return key[0] == 2 or key[3].startswith(("224.", "ff02:"))


def compare(before: Snapshot, after: Snapshot,
            lab_prefixes: tuple[str, ...] = ("10.244.", "10.96.", "fd00:10:244:", "fd00:10:96:")) -> Changes:
    """Probes may add neighbor and conntrack entries between lab (or loopback) addresses; nothing else may
    appear, change or go."""
    mutations: list[str] = []
    probe_made: list[str] = []
    if before.machine != after.machine:
        mutations.append(f"machine sysctls: {before.machine} -> {after.machine}")
    for ns, was in before.states.items():
        now = after.states[ns]
        for key in was:
            if was[key] != now[key]:
                old, new = set(was[key].splitlines()), set(now[key].splitlines())
                mutations.append(f"{ns} {key}: -{sorted(old - new)[:5]} +{sorted(new - old)[:5]}")
    for ns, was_n in before.neighbors.items():
        now_n = after.neighbors[ns]
        # no entry removed or rewritten; new resolved entries for lab addresses are what probes cause
        for n in sorted(was_n - now_n, key=str):
            if n.lladdr is not None or n.permanent:
                if any(m.dst == n.dst and m.dev == n.dev and m.lladdr == n.lladdr for m in now_n):
                    continue
                rewritten = any(m.dst == n.dst and m.dev == n.dev and m.lladdr not in (None, n.lladdr) for m in now_n)
                # a dynamic entry the kernel let go (garbage collection of an unused stale entry: the threshold is
                # machine-wide, so other tests' namespaces set it off) is its own doing; a static entry gone, or
                # any entry pointed at another MAC, is a write
                if n.permanent or rewritten:
                    mutations.append(f"{ns} neighbor gone or changed: {n}")
                else:
                    probe_made.append(f"{ns} neighbor aged out by the kernel: {n.dst} dev {n.dev}")
        for n in sorted(now_n - was_n, key=str):
            if any(m.dst == n.dst and m.dev == n.dev for m in was_n):
                continue
            (probe_made if n.dst.startswith(lab_prefixes) or n.dst.startswith("fe80:") else mutations).append(
                f"{ns} new neighbor {n.dst} dev {n.dev}")
    for ns, was_c in before.conntrack.items():
        now_c = after.conntrack[ns]
        # an entry with a long timeout left must still be there: nothing deleted or flushed. (Where the table
        # is full the kernel evicts unassured entries itself, early_drop, as in conntrack-full.)
        full = before.conntrack_full[ns] or after.conntrack_full[ns]
        for ck, (timeout, assured) in was_c.items():
            if timeout > 60 and ck not in now_c and not _kernel_own(ck) and (assured or not full):
                mutations.append(f"{ns} conntrack entry gone: {ck}")
        for ck in now_c.keys() - was_c.keys():
            _, src, _, dst, _ = ck
            lab = all(a.startswith((*lab_prefixes, "127.")) or a == "::1" for a in (src, dst))
            (probe_made if lab or _kernel_own(ck) else mutations).append(f"{ns} new conntrack entry {ck}")
    return Changes(mutations, probe_made)
