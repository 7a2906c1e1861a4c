"""The CNI's NetworkPolicy rules as the node's netfilter holds them, with their packet counters: Calico's
`cali-` chains and kube-router's `KUBE-NWPLCY-`/`KUBE-POD-FW-` chains in the filter table, read with
`iptables-save -c` (both backends, both families). Read twice by the counters slice, so a DROP rule hit during
the window shows. CNIs that enforce in eBPF or OVS (Cilium, Calico's eBPF mode, Antrea) leave nothing here."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from bundle.models.counters import PolicyChain

PREFIXES = {"cali-": "calico", "KUBE-NWPLCY-": "kube-router", "KUBE-POD-FW-": "kube-router"}
TOOLS = (("iptables-nft-save", "iptables-nft", 4), ("iptables-legacy-save", "iptables-legacy", 4),
         ("ip6tables-nft-save", "iptables-nft", 6), ("ip6tables-legacy-save", "iptables-legacy", 6))
MAX_CHAINS = 500
TIMEOUT_S = 5.0


def _engine(chain: str) -> str | None:
    return next((engine for prefix, engine in PREFIXES.items() if chain.startswith(prefix)), None)


def parse(text: str, backend: str, family: int) -> list[PolicyChain]:
    """`iptables-save -c -t filter`: every rule line `[pkts:bytes] -A CHAIN ...` of a CNI policy chain, summed per
    chain; DROP/REJECT rules apart (the packets the policies refused); the interfaces its rules name, that name
    its way in, or that its Calico name carries."""
    chains: dict[str, PolicyChain] = {}
    entered: dict[str, list[str]] = {}  # chain -> the interfaces of the rules that jump or go to it
    for line in text.splitlines():
        if not line.startswith("[") or " -A " not in line:
            continue
        counts, _, rule = line.partition(" ")
        try:
            packets, _, nbytes = counts.strip("[]").partition(":")
            pk, by = int(packets), int(nbytes)
            tokens = shlex.split(rule)
        except ValueError:
            continue
        if len(tokens) < 2 or tokens[0] != "-A":
            continue
        ifaces = [tokens[tokens.index(f) + 1] for f in ("-i", "-o") if f in tokens[:-1]]
        for jump in ("-j", "-g"):
            if jump in tokens[:-1] and ifaces:
                entered.setdefault(tokens[tokens.index(jump) + 1], []).extend(ifaces)
        if (engine := _engine(tokens[1])) is None:
            continue
        chain = chains.get(tokens[1])
        if chain is None:
            if len(chains) >= MAX_CHAINS:
                continue
            chain = chains[tokens[1]] = PolicyChain(backend=backend, family=family, chain=tokens[1], engine=engine)
        chain.rules += 1
        chain.packets += pk
        chain.bytes += by
        target = tokens[tokens.index("-j") + 1] if "-j" in tokens[:-1] else ""
        if target in ("DROP", "REJECT"):
            chain.drop_packets += pk
        for name in ifaces:
            if name not in chain.interfaces:
                chain.interfaces.append(name)
    for chain in chains.values():
        # Calico names a workload's chains after its interface (cali-tw-IFACE to it, cali-fw-IFACE from it), and
        # its dispatch chains reach them with -o/-i IFACE -g: both say which interface the chain guards
        named = [chain.chain[len(p):] for p in ("cali-tw-", "cali-fw-") if chain.chain.startswith(p)]
        for name in named + entered.get(chain.chain, []):
            if name not in chain.interfaces:
                chain.interfaces.append(name)
    return list(chains.values())


def _legacy_filter(family: int) -> bool:
    """Whether the legacy filter table exists here: dumping one that does not would load it (a write)."""
    try:
        names = Path("/proc/net/ip_tables_names" if family == 4 else "/proc/net/ip6_tables_names").read_text()
    except OSError:
        return False
    return "filter" in names.split()


def read() -> tuple[list[PolicyChain], list[str]]:
    """Every CNI policy chain of this netns's filter tables, and what could not be read (tool: why)."""
    out: list[PolicyChain] = []
    problems: list[str] = []
    for tool, backend, family in TOOLS:
        if shutil.which(tool) is None or (backend == "iptables-legacy" and not _legacy_filter(family)):
            continue
        try:
            proc = subprocess.run([tool, "-c", "-t", "filter"], capture_output=True, text=True, timeout=TIMEOUT_S,
                                  check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            problems.append(f"{tool}: {exc}")
            continue
        if proc.returncode != 0:
            if "does not exist" not in proc.stderr and "Table does not exist" not in proc.stderr:
                problems.append(f"{tool}: {proc.stderr.strip()[:200] or f'exit {proc.returncode}'}")
            continue
        out += parse(proc.stdout, backend, family)
    return out, problems
