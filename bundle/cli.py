"""netbundle's command line: thin; parses, calls, prints, exits with a documented code.

Exit codes: 0 ok; 1 internal error; 2 usage; 3 invalid bundle; 4 unsupported
bundle format version; 5 bundle written but some slice partial or failed;
6 could not write; 7 lab error; 8 render error; 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from bundle import __version__
from bundle._files import file_sha256
from bundle._entry import interrupt
from bundle.errors import NetbundleError, UsageError

if TYPE_CHECKING:
    from bundle.archive import Bundle
    from bundle.collect.request import CollectRequest


def _fatal(message: str, code: int) -> NoReturn:
    sys.stderr.write(f"netbundle: error: {message.splitlines()[0] if message else 'failed'}\n")
    raise SystemExit(code)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _fatal(f"{message} (see --help)", 2)


def _command(group: Any, name: str, **kw: Any) -> argparse.ArgumentParser:
    """A subcommand whose own --help page starts with what it does (its help line, as a sentence)."""
    text = kw.get("help", "")
    kw.setdefault("description", (text[:1].upper() + text[1:] + ".") if text else None)
    parser: argparse.ArgumentParser = group.add_parser(name, **kw)
    return parser


class _Names:
    """Choices read only when needed (a --help page, or the option given): the registries import heavy modules
    that other commands never need."""

    def __init__(self, load: Callable[[], list[str]]) -> None:
        self._load = load

    def __iter__(self) -> Iterator[str]:
        return iter(self._load())

    def __contains__(self, item: object) -> bool:
        return item in self._load()


def _existing(text: str) -> Path:
    """A bundle argument: a missing file is said with its path (and which argument) before anything runs."""
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"a folder, not a bundle: {text}")
    return path


def _read(path: Path, role: str = "", **kw: Any) -> Bundle:
    """read_bundle, its refusal naming the file (and, for diff, which of the two)."""
    from bundle.archive import read_bundle
    from bundle.errors import ArchiveError

    try:
        return read_bundle(path, **kw)
    except ArchiveError as exc:
        exc.args = (f"{role + ' ' if role else ''}{path}: {exc}",)
        raise


def _set_node(path: Path, role: str, node: str | None) -> Bundle:
    """A bundle, or one node's bundle out of an incident set (verified as the set is read)."""
    from bundle.archive.incidentset import is_set, read_set

    if not is_set(path):
        if node:
            raise UsageError(f"--{role}-node {node!r}: {path} is a bundle, not an incident set")
        return _read(path, role, tables=False)
    st = read_set(path)
    if node is None and len(st.bundles) == 1:
        return next(iter(st.bundles.values()))
    if node not in st.bundles:
        raise UsageError(f"{role}: {path} is an incident set; name its node with --{role}-node "
                         f"(nodes with a bundle: {', '.join(st.bundles) or 'none'})")
    return st.bundles[node]


def _side_name(path: Path, node: str | None) -> str:
    return f"{path.name} node {node}" if node else path.name


def _slice_names() -> list[str]:
    from bundle.collect.registry import collectors

    return list(collectors())


def _scenario_names() -> list[str]:
    from bundle.lab.scenarios import SCENARIOS

    return list(SCENARIOS)


def _add_collect_options(c: argparse.ArgumentParser) -> None:
    """What collect and watch share: targets, vantages, slices and their limits."""
    c.add_argument("--target", "-t", action="append", default=[], metavar="IP[:PORT]|NAME[:PORT]",
                   help="repeatable; a name is resolved in each vantage by its own resolver first")
    c.add_argument("--netns", action="append", default=[], metavar="NAME", help="a named netns (repeatable)")
    c.add_argument("--netns-pid", action="append", default=[], metavar="PID", help="a process's netns (repeatable)")
    c.add_argument("--netns-path", action="append", default=[], metavar="PATH", help="a netns file (repeatable)")
    c.add_argument("--host", action="store_true", help="also collect from this process's own netns "
                   "(the default when no netns is named)")
    c.add_argument("--client", metavar="VANTAGE", help="the vantage whose traffic fails, as named with --netns "
                   "(or its id): the ladder's verdict is decided for it (default: the pod of --pod, else the first "
                   "vantage named)")
    c.add_argument("--passive", action="store_true", help="send no probe packets")
    c.add_argument("--route-from", metavar="IP", help="also `route get` each target as if from this source")
    c.add_argument("--route-iif", metavar="IFNAME", help="also `route get` each target as if arriving on this interface")
    c.add_argument("--name", action="append", default=[], dest="names", metavar="NAME",
                   help="a DNS name to resolve as the vantage's resolver would (repeatable, at most 20)")
    c.add_argument("--dns-server", metavar="IP", help="also ask this server for each name's FQDN "
                   "(e.g. the kube-dns ClusterIP beside a NodeLocal cache)")
    c.add_argument("--dns-timeout", type=float, metavar="SECONDS",
                   help="cap each DNS wait below resolv.conf's timeout (recorded in the bundle)")
    c.add_argument("--capture-filter", metavar="EXPR", help="tcpdump-syntax filter (default: the targets' hosts "
                   "and ports, ICMP errors, DNS when names are asked; never port 22)")
    c.add_argument("--capture-iface", metavar="IFNAME", help="default: the interface `route get` picks for the "
                   "target; `any` captures every interface of the vantage (Linux cooked headers)")
    c.add_argument("--capture-packets", type=int, default=10000, metavar="N", help="packet limit (default 10000)")
    c.add_argument("--capture-bytes", type=int, default=8 << 20, metavar="BYTES", help="file size limit (default 8 MiB)")
    c.add_argument("--capture-seconds", type=float, default=10.0, metavar="S", help="time limit (default 10)")
    c.add_argument("--snaplen", type=int, default=128, metavar="BYTES",
                   help="bytes kept of each packet (default 128: headers, not payloads)")
    c.add_argument("--socket-samples", type=int, default=3, metavar="K",
                   help="state-count samples for the socket trend (default 3)")
    c.add_argument("--socket-interval", type=float, default=1.0, metavar="SECONDS",
                   help="seconds between socket samples (default 1)")
    c.add_argument("--socket-rows", type=int, default=20000, metavar="N",
                   help="socket rows kept beyond those of the targets (default 20000; counts stay exact)")
    c.add_argument("--service", action="append", default=[], dest="services", metavar="NS/NAME",
                   help="a Kubernetes Service: its EndpointSlices and pods from the API, its ClusterIP ports, "
                        "endpoints and DNS name as targets (repeatable)")
    c.add_argument("--pod", action="append", default=[], dest="pods", metavar="NS/NAME",
                   help="a Kubernetes pod: from the API, and its netns as a vantage when it runs here (repeatable)")
    c.add_argument("--kubeconfig", metavar="FILE", help="default: $KUBECONFIG, ~/.kube/config, or in-cluster")
    c.add_argument("--context", metavar="NAME", help="a kubeconfig context")
    c.add_argument("--endpointslices", type=Path, metavar="FILE",
                   help="EndpointSlices (JSON or YAML: one object, a List, or several documents) to judge the "
                        "dataplane's service map against, when the Kubernetes API is not asked")
    c.add_argument("--conntrack-rows", type=int, default=5000, metavar="N",
                   help="conntrack entries kept for the targets (default 5000; totals are always exact)")
    c.add_argument("--nat-samples", type=int, default=3, metavar="K",
                   help="conntrack counter samples over the window (default 3, one per --socket-interval)")
    c.add_argument("--timeout", type=float, default=60.0, help="overall deadline in seconds (default 60)")
    c.add_argument("--capture-min-seconds", type=float, metavar="S", help="keep capturing at least S seconds, even "
                   "once the other slices are done (fleet collect gives every node one shared window)")
    c.add_argument("--slice", action="append", dest="slices", metavar="NAME", choices=_Names(_slice_names),
                   help="only this slice (repeatable): %(choices)s")
    c.add_argument("--ticket", metavar="ID", help="the incident's ticket, kept in the manifest and shown on top")
    c.add_argument("--note", metavar="TEXT", help="a line for the next shift (what users see), kept in the manifest")


def _add_watch_options(w: argparse.ArgumentParser) -> None:
    w.add_argument("--every", type=float, default=1.0, metavar="S",
                   help="seconds between probe rounds and counter reads (default 1; at least 0.2)")
    w.add_argument("--connect-timeout", type=float, default=1.0, metavar="S",
                   help="a connect probe with no answer by then has failed (default 1)")
    w.add_argument("--connect-slow-ms", type=float, metavar="MS", help="also trigger on a connect slower than this")
    w.add_argument("--dns-slow-ms", type=float, metavar="MS", help="also trigger on a resolution slower than this")
    w.add_argument("--counter", action="append", default=None, dest="counters", metavar="NAME",
                   help="trigger when this counter rises (repeatable; nstat names, or conntrack_drop, "
                        "conntrack_insert_failed...; default: conntrack drop/insert_failed/early_drop, "
                        "rp_filter drops, listen drops and overflows)")
    w.add_argument("--no-counter-triggers", action="store_true", help="record the counters, trigger on none")
    w.add_argument("--retrans-rate", type=float, metavar="N", help="trigger when TCP retransmissions exceed N/s")
    w.add_argument("--no-icmp-trigger", action="store_true", help="do not trigger on ICMP errors in the capture")
    w.add_argument("--trigger-cmd", metavar="CMD", help="run this each round (split like a shell, not run by one; "
                   "in netbundle's own netns); a non-zero exit is a trigger")
    w.add_argument("--ring-seconds", type=float, default=30.0, metavar="S",
                   help="capture kept from before a trigger (default 30)")
    w.add_argument("--ring-bytes", type=int, default=64 << 20, metavar="BYTES",
                   help="at most this much of it in memory (default 64 MiB)")
    w.add_argument("--post-trigger", type=float, default=2.0, metavar="S",
                   help="keep capturing this long after a trigger before freezing the ring (default 2: the "
                        "failure's own retransmissions)")
    w.add_argument("--cooldown", type=float, default=60.0, metavar="S",
                   help="no new bundle this long after one (default 60)")
    w.add_argument("--max-bundles", type=int, default=3, metavar="N", help="bundles this watch writes at most "
                                                                           "(default 3)")
    w.add_argument("--disk-floor", type=int, default=1024, metavar="MIB",
                   help="write no bundle when less than this is free in --out-dir (default 1024)")
    w.add_argument("--for", dest="duration", metavar="DURATION", help="stop after this long (90s, 30m, 4h; default: "
                                                                       "until SIGINT or SIGTERM)")
    w.add_argument("--bundle-on-exit", action="store_true", help="write a bundle when the watch ends even if "
                                                                 "nothing fired")
    w.add_argument("--out-dir", type=Path, default=Path("."), metavar="DIR", help="where bundles are written "
                                                                                    "(default: here)")
    w.add_argument("--json", action="store_true", help="print events (start, trigger, bundle, held_back, stop) as "
                                                       "JSON lines on stdout")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="netbundle", description="Network-incident evidence bundles for Linux and Kubernetes.")
    p.add_argument("--version", action="version", version=f"netbundle {__version__}")
    p.add_argument("--debug", action="store_true", help="re-raise errors with a traceback")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = _command(sub, "collect", help="gather evidence into one .tar.zst bundle")
    _add_collect_options(c)
    c.add_argument("--pcap", action="append", default=[], type=Path, metavar="FILE",
                   help="add an existing pcap/pcapng to the bundle, analysed like ours (repeatable)")
    c.add_argument("--start-at", type=float, metavar="EPOCH", help="start at this time (seconds since the epoch, "
                   "at most 300 s ahead): what `fleet collect` gives every node so their windows overlap")
    c.add_argument("-o", "--output", type=Path, metavar="FILE",
                   help="where to write the bundle (default: incident-YYYYmmdd-HHMM-<host>.tar.zst here); an "
                        "existing file is never replaced unless --force")
    c.add_argument("--force", action="store_true", help="replace an existing -o file")
    c.add_argument("--sign", metavar="KEY", help="sign the bundle with this OpenSSH key (a private key file, or a "
                   ".pub whose key is in the ssh-agent): writes BUNDLE.sig in SSHSIG format, namespace netbundle "
                   "(check with `netbundle verify` or `ssh-keygen -Y verify`)")
    c.add_argument("--json", action="store_true", help="print the outcome as JSON")


    w = _command(sub, "watch", help="a flight recorder: probe and sample every second, keep the last seconds of "
                                    "capture in memory, and on a failure write a bundle with what came before it")
    _add_collect_options(w)
    _add_watch_options(w)

    v = _command(sub, "validate", help="verify a bundle: structure, checksums, schemas, version")
    v.add_argument("bundle", type=_existing, help="the .tar.zst bundle (as collect wrote it)")
    v.add_argument("--json", action="store_true", help="print the result as JSON")
    vf = _command(sub, "verify", help="check a signed bundle: its signature (FILE.sig, OpenSSH SSHSIG, namespace "
                                       "netbundle) against allowed signers, then everything validate checks",
                        description="The same check as `ssh-keygen -Y verify -f ALLOWED -I ID -n netbundle -s "
                                    "FILE.sig < FILE`, done without OpenSSH (Ed25519 keys), then `validate`.")
    vf.add_argument("bundle", type=_existing, help="the .tar.zst bundle")
    vf.add_argument("--allowed-signers", type=Path, required=True, metavar="FILE",
                    help="who may sign, in ssh-keygen's ALLOWED SIGNERS format (principals [options] key)")
    vf.add_argument("--identity", metavar="PRINCIPAL", help="require this signer (default: any allowed one)")
    vf.add_argument("--signature", type=Path, metavar="FILE", help="default: BUNDLE.sig")

    s = _command(sub, "show", help="terminal summary of a bundle")
    s.add_argument("bundle", type=_existing, help="the .tar.zst bundle (as collect wrote it)")
    s.add_argument("--json", action="store_true", help="print the manifest as JSON")

    a = _command(sub, "analyze", help="recompute findings.json (the ladder and findings) from a bundle's documents")
    a.add_argument("bundle", type=_existing, help="the .tar.zst bundle (as collect wrote it)")
    a.add_argument("--json", action="store_true", help="print the whole report as JSON")

    sm = _command(sub, "summary", help="the ladder, five sentences and the findings, ready for a ticket")
    sm.add_argument("bundle", type=_existing, help="the .tar.zst bundle (as collect wrote it)")
    sm.add_argument("--format", choices=("md", "text", "json"), default="md")

    d = _command(sub, "diff", help="compare a failing bundle with a healthy one, differences that matter first")
    d.add_argument("failing", type=_existing, help="the bundle from the node (or pod) in trouble, or an incident set")
    d.add_argument("healthy", type=_existing, nargs="?",
                   help="a bundle from a comparable node that works (or a set); omitted with a set: both nodes "
                        "come from it")
    d.add_argument("--failing-node", metavar="NODE", help="in a set: the failing node's bundle")
    d.add_argument("--healthy-node", metavar="NODE", help="in a set: the working node's bundle")
    d.add_argument("--format", choices=("text", "md", "json", "html"), default="text")
    d.add_argument("--pair", action="append", default=[], metavar="FAILING_VANTAGE=HEALTHY_VANTAGE",
                   help="pair two vantages by hand (default: by role, the last word of the vantage id)")

    rd = _command(sub, "redact", help="a copy with IP addresses, MACs and hostnames replaced consistently")
    rd.add_argument("bundle", type=_existing, help="the bundle to redact (it is not changed)")
    rd.add_argument("-o", "--output", type=Path, required=True, metavar="FILE",
                    help="the shareable bundle to write; an existing file is never replaced unless --force")
    rd.add_argument("--force", action="store_true", help="replace an existing -o file")
    rd.add_argument("--map", type=Path, help="the mapping to use and update (default: OUTPUT.map.json, created); "
                                              "reuse it so two redacted bundles stay comparable")
    rd.add_argument("--keep-cidr", action="append", default=[], metavar="CIDR", help="leave these addresses as they are")

    r = _command(sub, "render", help="write the self-contained HTML appendix")
    r.add_argument("bundle", type=_existing, help="the .tar.zst bundle (as collect wrote it)")
    r.add_argument("-o", "--output", type=Path)

    fl = _command(sub, "fleet", help="one incident set from many nodes (over OpenSSH or Kubernetes Jobs)")
    fsub = fl.add_subparsers(dest="fleet_command", required=True, parser_class=_Parser, metavar="COMMAND",
                             help="collect (see its --help)")
    fc = _command(fsub, "collect", help="run the same `netbundle collect` on every node at the same start time "
                                        "and write one incident set with what arrived")
    fc.add_argument("--ssh", action="append", default=[], metavar="HOST[,HOST...]",
                    help="nodes as your ssh knows them (your config, keys and agent): repeatable or comma-separated")
    fc.add_argument("--ssh-file", type=_existing, metavar="FILE", help="nodes, one per line")
    fc.add_argument("--ssh-config", type=_existing, metavar="FILE", help="an ssh_config to use (ssh -F)")
    fc.add_argument("--kube", action="store_true",
                    help="Kubernetes engine: one Job per node; the nodes are --nodes, else those of the collect "
                         "options' --service (its ready endpoints) and --pod")
    fc.add_argument("--nodes", action="append", default=[], metavar="NODE[,NODE...]",
                    help="Kubernetes nodes by name (implies --kube)")
    fc.add_argument("--kubeconfig", metavar="FILE", help="default: $KUBECONFIG, ~/.kube/config, or in-cluster")
    fc.add_argument("--context", metavar="NAME", help="a kubeconfig context")
    fc.add_argument("--namespace", default="netbundle", metavar="NS",
                    help="where the Jobs are made and deleted (default netbundle; docs/deploy/fleet-rbac.yaml)")
    fc.add_argument("--image", default=f"localhost/netbundle:{__version__}", metavar="IMAGE",
                    help="the netbundle image the Jobs run (the Containerfile's; default %(default)s)")
    fc.add_argument("--service-account", default="netbundle", metavar="NAME",
                    help="the Jobs' ServiceAccount (docs/deploy/rbac.yaml; default netbundle)")
    fc.add_argument("--image-pull-grace", type=float, default=20.0, metavar="S",
                    help="a node whose image is still not pulled this long after the shared start is named "
                         "and left out (default 20)")
    fc.add_argument("--remote-netbundle", default="netbundle", metavar="PATH",
                    help="netbundle on the nodes (default: found on their PATH); root, or sudo -n, runs it")
    fc.add_argument("--parallel", type=int, default=8, metavar="N", help="nodes in flight at once (default 8)")
    fc.add_argument("--node-timeout", type=float, default=150.0, metavar="S",
                    help="a node not done by then is stopped and named (default 150)")
    fc.add_argument("--start-in", type=float, default=5.0, metavar="S",
                    help="every node starts this many seconds from now, all at once (default 5)")
    fc.add_argument("--window", type=float, default=10.0, metavar="S",
                    help="every node captures at least this long from the shared start (default 10), so the "
                         "captures can be compared end to end")
    fc.add_argument("-o", "--output", type=Path, help="the incident set (default incident-set-DATE-TIME.tar.zst)")
    fc.add_argument("--force", action="store_true", help="replace an existing output file")
    fc.add_argument("collect_args", nargs=argparse.REMAINDER, metavar="-- COLLECT-OPTIONS",
                    help="after --: the `netbundle collect` options every node runs with (targets, slices, limits)")

    lab = _command(sub, "lab", help="reproducible incident scenarios in network namespaces")
    lsub = lab.add_subparsers(dest="lab_command", required=True, parser_class=_Parser, metavar="COMMAND",
                              help="up, down, list or score (each has its --help)")
    up = _command(lsub, "up", help="build a scenario")
    up.add_argument("scenario", choices=_Names(_scenario_names), metavar="SCENARIO", help="one of: %(choices)s")
    up.add_argument("--json", action="store_true", help="print the lab (namespaces, targets, commands) as JSON")
    up.add_argument("--prefix", help="namespace name prefix (default nb-SCENARIO)")
    down = _command(lsub, "down", help="remove a scenario")
    down.add_argument("scenario", choices=_Names(_scenario_names), metavar="SCENARIO", help="one of: %(choices)s")
    down.add_argument("--prefix", help="namespace name prefix (default nb-SCENARIO)")
    ls = _command(lsub, "list", help="scenarios and whether they are up (under any prefix)")
    ls.add_argument("--prefix", help="only labs under this prefix")
    sc = _command(lsub, "score", help="build each scenario, collect, and hold the ladder against what the "
                                       "scenario must conclude: right/wrong per scenario and a total (exit 7 if "
                                       "any is wrong)")
    sc.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="default: every scenario")
    sc.add_argument("--keep", type=Path, metavar="DIR", help="keep each scenario's bundle there")
    sc.add_argument("--json", action="store_true", help="print the scores as JSON")
    sc.add_argument("--readonly", action="store_true",
                    help="also prove each collect (or watch) changed nothing: rules, routes, policy rules, links, "
                         "addresses, sysctls, neighbors and conntrack of every lab netns, read with the system's "
                         "own tools before and after (a change fails the scenario; the entries probes make are "
                         "listed)")
    return p


MAX_CAPTURE_BYTES = 256 << 20  # half the reader's member limit: the bundle's other members fit beside it


def _refuse_existing(out: Path | None, force: bool) -> None:
    """Before any work: an existing output is evidence too (an earlier bundle, re-run from shell history)."""
    if out is not None and not force and (out.exists() or out.is_symlink()):
        from bundle.errors import BundleWriteError

        raise BundleWriteError(f"{out} exists: not overwritten (--force replaces it)")


_CAPTURE_DEFAULTS = {"capture_filter": None, "capture_iface": None, "capture_packets": 10000,
                     "capture_bytes": 8 << 20, "capture_seconds": 10.0, "snaplen": 128}


def _refuse_conflicts(args: argparse.Namespace) -> None:
    """Options that would silently do nothing: refused, each named with what it conflicts with."""
    if args.slices and "capture" not in args.slices:
        given = [k for k, v in _CAPTURE_DEFAULTS.items() if getattr(args, k) != v]
        if given:
            raise UsageError(f"--{given[0].replace('_', '-')} needs the capture slice, and --slice leaves it out "
                             f"(add --slice capture)")
    if args.passive and args.names:
        raise UsageError("--name asks the resolver, which sends DNS queries; --passive sends nothing: drop one "
                         "(resolv.conf is read either way)")


def _check_iface(name: str, specs: list[Any]) -> None:
    """--capture-iface must exist in every vantage it will be used in: said before collecting, not after."""
    if name == "any":
        return
    for sp in specs:
        if sp.path is None:
            argv = ["ip", "-j", "link", "show", "dev", name]
        else:
            argv = ["nsenter", f"--net={sp.path}", "ip", "-j", "link", "show", "dev", name]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return  # cannot look: the capture slice will say so
        if proc.returncode != 0:
            raise UsageError(f"--capture-iface {name}: no such interface in {sp.ref or sp.id}")


def _collect_request(args: argparse.Namespace, argv: list[str]) -> CollectRequest:
    """The collect options (checked: one clear line for each mistake) as the engine's request."""
    from bundle.collect import vantage
    from bundle.collect.request import CollectRequest  # noqa: F811 - at run time
    from bundle.collect.targets import parse_address, parse_target, valid_name
    from bundle.collect.nat import MAX_KEEP
    from bundle.archive import ReadLimits
    from bundle.collect.sockets import MAX_TABLE_ROWS
    from bundle.models.request import CollectOptions

    if args.timeout <= 0:
        raise UsageError("--timeout must be positive")
    targets = [parse_target(t) for t in args.target]
    specs = [vantage.named(n) for n in args.netns] + [vantage.pid(p) for p in args.netns_pid]
    specs += [vantage.path(p) for p in args.netns_path]
    if args.host or not specs:
        specs.insert(0, vantage.host())
    if args.socket_samples < 1 or args.socket_interval < 0 or not 0 <= args.socket_rows <= MAX_TABLE_ROWS:
        raise UsageError(f"--socket-samples must be >= 1, --socket-interval >= 0 and --socket-rows 0 to "
                         f"{MAX_TABLE_ROWS}")
    options: dict[str, Any] = {"socket_samples": args.socket_samples, "socket_interval": args.socket_interval,
                               "socket_rows": args.socket_rows}
    if args.capture_packets < 1 or args.capture_bytes < 4096 or args.capture_seconds <= 0:
        raise UsageError("--capture-packets >= 1, --capture-bytes >= 4096 and --capture-seconds > 0")
    # what collect writes, validate must read: a member stays under the reader's limits (docs/format.md)
    if args.capture_bytes > MAX_CAPTURE_BYTES:
        raise UsageError(f"--capture-bytes {args.capture_bytes}: at most {MAX_CAPTURE_BYTES} (the reader refuses "
                         f"members over {ReadLimits().max_member_bytes})")
    if not 16 <= args.snaplen <= 262144:
        raise UsageError("--snaplen must be 16-262144")
    if args.capture_filter is not None:
        from bundle.pcap.bpf import BpfError, compile_filter

        try:
            compile_filter(args.capture_filter)
        except BpfError as exc:
            raise UsageError(f"--capture-filter: {exc}") from None
        options["capture_filter"] = args.capture_filter
    if args.capture_iface:
        _check_iface(args.capture_iface, specs)
        options["capture_iface"] = args.capture_iface
    options.update(capture_packets=args.capture_packets, capture_bytes=args.capture_bytes,
                   capture_seconds=args.capture_seconds, snaplen=args.snaplen)
    if args.capture_min_seconds is not None:
        if not 0 < args.capture_min_seconds <= args.capture_seconds:
            raise UsageError("--capture-min-seconds must be > 0 and at most --capture-seconds")
        options["capture_min_seconds"] = args.capture_min_seconds
    if len(args.names) > 20:
        raise UsageError("at most 20 --name")
    for name in args.names:
        if not valid_name(name):
            raise UsageError(f"not a DNS name: {name!r}")
    _refuse_conflicts(args)
    if args.names:
        options["dns_names"] = list(args.names)
    if args.dns_server:
        options["dns_server"] = parse_address(args.dns_server, "--dns-server")
    if args.dns_timeout is not None:
        if args.dns_timeout <= 0:
            raise UsageError("--dns-timeout must be positive")
        options["dns_timeout"] = args.dns_timeout
    if args.route_from:
        options["route_from"] = parse_address(args.route_from, "--route-from")
    if args.route_iif:
        options["route_iif"] = args.route_iif
    if not 0 <= args.conntrack_rows <= MAX_KEEP or args.nat_samples < 1:
        raise UsageError(f"--conntrack-rows must be 0 to {MAX_KEEP} and --nat-samples >= 1")
    options.update(nat_keep=args.conntrack_rows, nat_samples=args.nat_samples, nat_interval=args.socket_interval)
    if args.endpointslices is not None:
        from bundle.collect.kubeproxy import ParseError, load_endpoint_slices

        try:
            load_endpoint_slices(args.endpointslices)
        except ParseError as exc:
            raise UsageError(f"--endpointslices: {exc}") from None
        options["endpointslices"] = str(args.endpointslices.resolve())
    pcaps: list[Path] = list(getattr(args, "pcap", []))
    for pcap in pcaps:
        if not pcap.is_file():
            raise UsageError(f"--pcap {pcap}: no such file")
        if pcap.stat().st_size > ReadLimits().max_member_bytes:
            raise UsageError(f"--pcap {pcap}: {pcap.stat().st_size} bytes, over the {ReadLimits().max_member_bytes}-"
                             f"byte member limit every reader applies (cut it with editcap)")
    if sum(p.stat().st_size for p in pcaps) > ReadLimits().max_total_bytes // 2:
        raise UsageError(f"--pcap: {len(pcaps)} files over {ReadLimits().max_total_bytes // 2} bytes together")
    kube_req = None
    if args.services or args.pods:
        from bundle.collect.kube import KubeRequest

        kube_req = KubeRequest(services=tuple(_ns_name(v, "--service") for v in args.services),
                               pods=tuple(_ns_name(v, "--pod") for v in args.pods), kubeconfig=args.kubeconfig,
                               context=args.context, budget_s=max(2.0, min(20.0, args.timeout / 3)))
    if args.client and not args.pods and not any(args.client in (sp.id, sp.ref) for sp in specs):
        raise UsageError(f"--client {args.client!r} is none of the vantages named "
                         f"({', '.join(sp.ref or sp.id for sp in specs)})")
    return CollectRequest(finalize=_findings_member, kube=kube_req, pcaps=pcaps,
                         options=CollectOptions.model_validate(options),
                         targets=targets, vantages=vantage.dedupe(specs), output=getattr(args, "output", None),
                          passive=args.passive,
                         timeout_s=args.timeout, ticket=args.ticket, note=args.note, argv=argv,
                         slices=args.slices, debug=args.debug, client=args.client, force=getattr(args, "force", False))


def _cmd_collect(args: argparse.Namespace, argv: list[str]) -> int:
    from bundle.collect.engine import collect
    from bundle.collect.request import Progress

    _refuse_existing(args.output, args.force)
    if args.sign and not Path(args.sign).is_file():
        raise UsageError(f"--sign {args.sign}: no such key file")
    if args.sign and args.output is not None:
        _refuse_existing(args.output.with_name(args.output.name + ".sig"), args.force)
    tty = sys.stderr.isatty() and not args.json

    def progress(ev: Progress) -> None:
        if tty:
            why = f"  ({ev.reason})" if ev.reason else ""
            sys.stderr.write(f"  {ev.vantage:<24} {ev.slice:<8} {ev.status.value:<8} {ev.duration_s:6.1f}s{why}\n")

    req = _collect_request(args, argv)
    if args.start_at is not None:
        from bundle.collect.fleet import wait_until

        try:
            wait_until(args.start_at)
        except ValueError as exc:
            raise UsageError(f"--start-at: {exc}") from None
    outcome = collect(req, progress)
    sha = file_sha256(outcome.path) if outcome.path is not None else None  # the ticket pins this exact file
    if args.json:
        print(json.dumps({"bundle": str(outcome.path), "sha256": sha, "exit_code": outcome.exit_code,
                          "slices": [s.model_dump(mode="json") for s in outcome.manifest.slices] if outcome.manifest else []}))
    else:
        print(outcome.path)
        if sha:
            sys.stderr.write(f"sha256 {sha}  {outcome.path}\n")
    if args.sign and outcome.path is not None:
        from bundle.archive.signature import sign
        from bundle.errors import SigningError

        if args.force:  # the bundle it signed was just replaced
            outcome.path.with_name(outcome.path.name + ".sig").unlink(missing_ok=True)
        try:
            sig = sign(outcome.path, args.sign)
        except SigningError as exc:
            raise SigningError(f"bundle written ({outcome.path}) but not signed: {exc}") from None
        if not args.json:
            sys.stderr.write(f"signed: {sig}\n")
        if outcome.exit_code == 5 and outcome.manifest:
            bad = [f"{s.vantage}/{s.slice}: {s.status.value} ({s.reason})" for s in outcome.manifest.slices
                   if s.status.value in ("partial", "failed")]
            sys.stderr.write("netbundle: bundle written, but not every slice completed:\n  " + "\n  ".join(bad) + "\n")
        if outcome.interrupted:
            sys.stderr.write("netbundle: interrupted; the bundle holds what was collected before\n")
    return outcome.exit_code


def _cmd_validate(args: argparse.Namespace) -> int:
    from bundle.archive import read_bundle
    from bundle.archive.incidentset import is_set, read_set

    if is_set(args.bundle):
        st = read_set(args.bundle)
        got = sum(1 for n in st.manifest.nodes if n.member)
        if args.json:
            print(json.dumps({"valid": True, "set_id": st.manifest.set_id, "nodes": len(st.manifest.nodes),
                              "bundles": got}))
        else:
            print(f"{args.bundle}: valid netbundle set {st.manifest.format_version}, {got} of "
                  f"{len(st.manifest.nodes)} node bundles verified")
        return 0
    b = _read(args.bundle)
    if args.json:
        print(json.dumps({"valid": True, "bundle_id": b.manifest.bundle_id,
                          "format_version": b.manifest.format_version, "members": len(b.manifest.members)}))
    else:
        print(f"{args.bundle}: valid netbundle {b.manifest.format_version}, {len(b.manifest.members)} members verified")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from bundle.archive import read_bundle
    from bundle.archive.signature import verify

    signer = verify(args.bundle, args.allowed_signers, args.signature, args.identity)
    b = _read(args.bundle)
    print(f"{args.bundle}: good netbundle signature by {signer.principal} ({signer.key_type} {signer.fingerprint}); "
          f"valid netbundle {b.manifest.format_version}, {len(b.manifest.members)} members verified")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from bundle.archive import read_bundle
    from bundle.archive.incidentset import is_set, read_set
    from bundle.render.text import set_summary, summary

    if is_set(args.bundle):
        st = read_set(args.bundle)
        if args.json:
            print(st.manifest.model_dump_json(indent=2))
        else:
            sys.stdout.write(set_summary(st))
        return 0
    b = _read(args.bundle, tables=False)
    if args.json:
        print(b.manifest.model_dump_json(indent=2))
    else:
        sys.stdout.write(summary(b))
    return 0


def _findings_member(bundle: Bundle, watch: Any = None) -> list[tuple[str, bytes, str, str]]:
    """findings.json for the collect: computed as `netbundle analyze` computes it (a watch's bundle: with the
    watch record it is about to hold, which the staged bundle does not have yet)."""
    from bundle.analyze.report import build_report
    from bundle.models import MediaType
    from bundle.render.view import inputs

    inp = inputs(bundle)
    if watch is not None:
        inp.watch = watch
    report = build_report(inp)
    return [("findings.json", report.model_dump_json(indent=1).encode(), MediaType.FINDINGS,
             "netbundle analyze: findings and the layer ladder from the collected documents")]


def _cmd_analyze(args: argparse.Namespace) -> int:
    from bundle.analyze.report import build_report
    from bundle.archive import read_bundle
    from bundle.render.view import inputs

    b = _read(args.bundle, tables=False)
    report = build_report(inputs(b))
    stored = b.findings()
    if args.json:
        print(report.model_dump_json(indent=1))
        return 0
    for lad in report.ladders:
        head = (f"owner {lad.owner.value}" if lad.owner else "no failing layer" if lad.proven else "nothing proven")
        print(f"{lad.target} (client {lad.client}): {head}  " +
              "  ".join(f"{lv.layer.value}={lv.verdict.value}{'*' if lv.noise else ''}" for lv in lad.layers))
        if lad.cause is not None:
            c = report.findings[lad.cause]
            print(f"  cause: {c.id} in {c.vantage}")
    for sentence in report.summary:
        print(f"  {sentence}")
    if stored is None:
        print("(the bundle has no findings.json this netbundle reads: written before format 1.2, recomputed here)")
    elif stored.model_dump(exclude={"findings"}) != report.model_dump(exclude={"findings"}) or \
            [f.id for f in stored.findings] != [f.id for f in report.findings]:
        print("(findings.json in the bundle differs from this netbundle's analysis: a newer analysis speaks here)")
    return 0


def _cmd_summary(args: argparse.Namespace) -> int:
    from bundle.archive import read_bundle
    from bundle.archive.incidentset import is_set, read_set
    from bundle.render.summary import ticket_summary
    from bundle.render.text import set_summary

    if is_set(args.bundle):  # the set's own lines on top, then each node's ticket summary
        st = read_set(args.bundle)
        sys.stdout.write(set_summary(st).split("\n\n== node")[0].rstrip() + "\n")
        for n in st.manifest.nodes:
            if n.node in st.bundles:
                sys.stdout.write(f"\n== node {n.node}\n" + ticket_summary(st.bundles[n.node], args.bundle, args.format))
        return 0
    b = _read(args.bundle, tables=False)
    sys.stdout.write(ticket_summary(b, args.bundle, args.format))
    return 0


def _cmd_diff(args: argparse.Namespace) -> int:
    from bundle.analyze._common import VantageDocs
    from bundle.analyze.diff import diff

    def sides(path: Path, role: str) -> list[VantageDocs]:
        b = _set_node(path, role, args.failing_node if role == "failing" else args.healthy_node)

        def ruleset(vid: str) -> str | None:
            data = b.texts.get(f"vantages/{vid}/nft-ruleset.txt")
            return data.decode(errors="replace") if data is not None else None

        return [VantageDocs(v.id, b.route(v.id), b.sockets(v.id), b.dns(v.id), b.nat(v.id), ruleset(v.id))
                for v in b.manifest.vantages if v.id != "kubernetes-api"]

    overrides = {}
    for item in args.pair:
        f, sep, h = item.partition("=")
        if not sep or not f or not h:
            raise UsageError(f"--pair {item!r}: expected FAILING_VANTAGE=HEALTHY_VANTAGE")
        overrides[f] = h
    healthy_path = args.healthy or args.failing
    if args.healthy is None and not (args.failing_node and args.healthy_node):
        raise UsageError("give a healthy bundle, or with a set --failing-node and --healthy-node "
                         "(`netbundle show SET` lists the working and failing endpoint nodes it found)")
    report = diff(sides(args.failing, "failing"), sides(healthy_path, "healthy"), overrides)
    if args.format == "html":
        from bundle.render.html import render_diff_html

        sys.stdout.write(render_diff_html(report, _side_name(args.failing, args.failing_node),
                                          _side_name(healthy_path, args.healthy_node)))
        return 0
    if args.format == "json":
        print(json.dumps({"pairs": report.pairs, "unpaired": report.unpaired,
                          "leads": [d.__dict__ for d in report.leads],
                          "expected": [d.__dict__ for d in report.expected]}, indent=1))
        return 0
    md = args.format == "md"
    out = [f"{'### ' if md else ''}diff: {_side_name(args.failing, args.failing_node)} (failing) vs "
           f"{_side_name(healthy_path, args.healthy_node)} (healthy)"]
    out += [f"{'- ' if md else '  '}pair {f} ~ {h}" for f, h in report.pairs]
    out += [f"{'- ' if md else '  '}no partner: {v}" for v in report.unpaired]
    out.append("")
    out.append("differences that can explain the fault, most telling first:" if report.leads else
               "no difference that could explain a fault")
    for d in report.leads:
        out.append(f"{'- ' if md else '  '}[{d.area}] {d.key}: {d.failing}  vs  {d.healthy}   ({d.pair})")
    if report.expected:
        out += ["", f"expected between any two machines ({len(report.expected)}): node addresses, MACs, counters"]
        out += [f"{'- ' if md else '  '}[{d.area}] {d.key}: {d.failing}  vs  {d.healthy}" for d in report.expected[:40]]
    print("\n".join(out))
    return 0


def _cmd_redact(args: argparse.Namespace) -> int:
    from bundle.redact import Redactor, redact_bundle

    if args.output.resolve() == args.bundle.resolve():
        raise UsageError("redact writes a new bundle: -o must differ from the input")
    _refuse_existing(args.output, args.force)
    from bundle.archive.incidentset import is_set
    from bundle.redact import redact_set

    map_path: Path = args.map or args.output.with_name(args.output.name + ".map.json")
    redactor = Redactor.load(map_path, args.keep_cidr)
    redact = redact_set if is_set(args.bundle) else redact_bundle  # a set: one map across every node
    written = redact(args.bundle, args.output, redactor, overwrite=args.force)
    redactor.save(map_path)
    print(written)
    print(f"map (keep it; it is not in the bundle): {map_path}", file=sys.stderr)
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from bundle._files import write_private
    from bundle.archive import read_bundle
    from bundle.archive.incidentset import is_set, read_set
    from bundle.render.html import render_html, render_set_html
    from bundle.render.view import set_view

    out: Path = args.output or args.bundle.with_name(args.bundle.name.removesuffix(".tar.zst") + ".html")
    if is_set(args.bundle):  # one appendix: the verdicts across the nodes, then each node's sections
        html = render_set_html(set_view(read_set(args.bundle)))
    else:
        html = render_html(_read(args.bundle, tables=False))
    try:
        write_private(out, html.encode("utf-8"))  # the same unredacted evidence as the bundle: 0600 like it
    except OSError as exc:
        from bundle.errors import RenderError

        raise RenderError(f"cannot write {out}: {exc.strerror}") from None
    print(out)
    return 0


def _duration(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(s|m|h)?", text.strip())
    if not m:
        raise UsageError(f"--for {text!r}: expected a duration such as 90s, 30m or 4h")
    return float(m.group(1)) * {"s": 1, "m": 60, "h": 3600, None: 1}[m.group(2)]


def _cmd_watch(args: argparse.Namespace, argv: list[str]) -> int:
    import dataclasses
    import shlex
    import signal as sig
    import tempfile
    from datetime import UTC, datetime

    from bundle.collect.capture import default_filter
    from bundle.collect.base import ResolvedTarget
    from bundle.collect.dns import load_conf
    from bundle.collect.engine import collect, host_facts
    from bundle.collect.watch import DEFAULT_COUNTERS, Event, WatchPlan, WatchState, Watcher
    from bundle.models.watch import RingStats, Trigger, WatchRecord
    from bundle.render.text import printable as _printable

    req = _collect_request(args, argv)
    if not 0.2 <= args.every <= 3600 or args.connect_timeout <= 0 or args.post_trigger < 0 or args.cooldown < 0:
        raise UsageError("--every 0.2-3600, --connect-timeout > 0, --post-trigger >= 0, --cooldown >= 0")
    if not 1 <= args.max_bundles <= 100 or args.disk_floor < 0 or args.ring_seconds <= 0:
        raise UsageError("--max-bundles 1-100, --disk-floor >= 0, --ring-seconds > 0")
    if not 4096 <= args.ring_bytes <= MAX_CAPTURE_BYTES:
        raise UsageError(f"--ring-bytes 4096-{MAX_CAPTURE_BYTES} (a bundle member's limit)")
    if not args.out_dir.is_dir():
        raise UsageError(f"--out-dir {args.out_dir}: not a folder")
    duration = _duration(args.duration) if args.duration else None
    chosen = next((v for v in req.vantages if args.client in (v.id, v.ref)), None) if args.client else None
    watched = chosen or next((v for v in req.vantages if v.path is not None), req.vantages[0])
    connects = tuple((t.spec, t.address, t.port) for t in req.targets if t.address and t.port)
    names = tuple(dict.fromkeys([*(t.name for t in req.targets if t.name), *req.options.dns_names]))
    if not connects and not names and args.trigger_cmd is None and args.no_counter_triggers:
        raise UsageError("nothing to watch: give --target IP:PORT, --name NAME, --trigger-cmd or counters")
    _, _, conf, _ = load_conf(watched.kind.value, watched.ref)
    toward = [a for _, a, _ in connects] + (conf.nameservers if conf and names else [])
    expr = req.options.capture_filter or default_filter(
        tuple(ResolvedTarget(spec=s, address=a, port=p) for s, a, p in connects), bool(names),
        os.environ.get("SSH_CONNECTION"))
    plan = WatchPlan(  # --passive: no probe is sent; the ring, the counters and --trigger-cmd still watch
        vantage_id=watched.id, netns=watched.path, connects=() if req.passive else connects,
        names=() if req.passive else names, resolv_kind=watched.kind.value, resolv_ref=watched.ref,
        capture_toward=tuple(toward), capture_filter=expr if toward else None,
        every_s=args.every, connect_timeout_s=args.connect_timeout, connect_slow_ms=args.connect_slow_ms,
        dns_slow_ms=args.dns_slow_ms,
        counters=() if args.no_counter_triggers else tuple(args.counters or DEFAULT_COUNTERS),
        retrans_rate=args.retrans_rate, icmp_trigger=not args.no_icmp_trigger,
        trigger_cmd=tuple(shlex.split(args.trigger_cmd)) if args.trigger_cmd else None,
        ring_seconds=args.ring_seconds, ring_bytes=args.ring_bytes, snaplen=req.options.snaplen or 128,
        post_trigger_s=args.post_trigger, cooldown_s=args.cooldown, max_bundles=args.max_bundles,
        disk_floor_bytes=args.disk_floor << 20, duration_s=duration, bundle_on_exit=args.bundle_on_exit)
    hostname = host_facts().hostname

    def write(trigger: Trigger, ring: bytes, stats: RingStats, st: WatchState) -> Path | None:
        n = len(st.bundles) + 1
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", hostname)[:64] or "host"
        out = args.out_dir / f"watch-{safe}-{trigger.at:%Y%m%d-%H%M%S}-{n}.tar.zst"
        with tempfile.TemporaryDirectory(prefix=".netbundle-watch-", dir=args.out_dir) as tmp:
            pcaps = []
            if ring:
                pcaps = [Path(tmp) / "watch-ring.pcapng"]
                pcaps[0].write_bytes(ring)
            record = WatchRecord(
                started=st.started, written=datetime.now(UTC), vantage=plan.vantage_id, every_s=plan.every_s,
                post_trigger_s=plan.post_trigger_s, trigger=trigger, triggers_seen=st.triggers_seen, bundle_index=n,
                totals=list(st.totals.values()), probes=list(st.probes), probes_dropped=st.probes_dropped,
                counters=list(st.readings), sockets=list(st.sockets), ring=stats,
                ring_member="captures/0-watch-ring.pcapng/analysis.json" if ring else None)
            outcome = collect(dataclasses.replace(req, output=out, force=False, pcaps=pcaps,
                                                  finalize=_watch_finalizer(record)))
        return outcome.path

    def event(ev: Event) -> None:
        if args.json:
            print(json.dumps({"event": ev.kind, "at": datetime.now(UTC).isoformat(), **ev.detail}), flush=True)
        elif ev.kind in ("trigger", "bundle", "held_back", "error"):
            line = {"trigger": lambda d: f"trigger: {d.get('kind')}: {d.get('detail')}",
                    "bundle": lambda d: f"bundle written: {d.get('path')}",
                    "held_back": lambda d: f"no bundle for this trigger: {d.get('why')}",
                    "error": lambda d: f"error ({d.get('what')}): {d.get('error')}"}[ev.kind](ev.detail)
            sys.stderr.write(("\r\033[K" if tty else "") + _printable(line) + "\n")

    tty = sys.stderr.isatty() and not args.json

    def status(line: str) -> None:
        if tty:
            sys.stderr.write("\r\033[K" + _printable(line)[:200])
            sys.stderr.flush()

    watcher = Watcher(plan, write, event, status, disk=args.out_dir)
    previous = {s: sig.signal(s, lambda *_: watcher.stop.set()) for s in (sig.SIGINT, sig.SIGTERM)}
    try:
        state = watcher.run()
    finally:
        for s, handler in previous.items():
            sig.signal(s, handler)
    if tty:
        sys.stderr.write("\n")
    if not args.json:
        for p in state.bundles:
            print(p)
        sys.stderr.write(f"watch ended ({state.ended_by}): {sum(t.sent for t in state.totals.values())} probes, "
                         f"{state.failures()} failed, {state.triggers_seen} trigger(s), {len(state.bundles)} "
                         f"bundle(s)\n")
    return 0


def _watch_finalizer(record: Any) -> Callable[[Bundle], list[tuple[str, bytes, str, str]]]:
    """watch.json, and findings.json computed with it (the probe history is evidence the snapshot lacks)."""
    def finalize(bundle: Bundle) -> list[tuple[str, bytes, str, str]]:
        from bundle.models import MediaType

        return [("watch.json", record.model_dump_json(indent=1).encode(), MediaType.WATCH,
                 "netbundle watch: the probe history, the counters that rose, the trigger, the ring's figures"),
                *_findings_member(bundle, record)]
    return finalize


def _cmd_lab(args: argparse.Namespace) -> int:
    from bundle.lab import scenarios

    if args.lab_command == "up":
        info = scenarios.up(args.scenario, args.prefix)
        if args.json:
            print(json.dumps(info.as_dict(), indent=2))
        else:
            sys.stdout.write(info.describe())
    elif args.lab_command == "down":
        removed = scenarios.down(args.scenario, args.prefix)
        print(f"removed {len(removed)} namespace(s): {' '.join(removed) or '-'}")
    elif args.lab_command == "score":
        return _lab_score(args)
    else:
        rows = scenarios.status(args.prefix)
        width = max([len(r[0]) for r in rows] + [8])
        for name, prefix, ns in rows:
            where = f"up under {prefix}: {' '.join(ns)}" if ns else "down"
            print(f"{name:<{width}}  {where}")
    return 0


def _lab_score(args: argparse.Namespace) -> int:
    """Each scenario under its own prefix (nbs<pid>-…, so two runs never share a namespace), collected by a real
    `netbundle collect`, scored, removed."""
    import subprocess
    import tempfile

    from bundle.archive import read_bundle
    from bundle.errors import LabError
    from bundle.lab import scenarios
    from bundle.lab import readonly
    from bundle.lab.readonly import Changes
    from bundle.lab.score import Score, score

    names = args.scenarios or sorted(scenarios.SCENARIOS)
    unknown = [n for n in names if n not in scenarios.SCENARIOS]
    if unknown:
        raise UsageError(f"unknown scenario(s) {', '.join(unknown)} (known: {', '.join(scenarios.SCENARIOS)})")
    keep = args.keep or Path(tempfile.mkdtemp(prefix="netbundle-score-"))
    keep.mkdir(parents=True, exist_ok=True)
    rows: list[Score] = []
    touched: dict[str, Changes] = {}
    for name in names:
        out = keep / f"{name}.tar.zst"
        out.unlink(missing_ok=True)
        changes = None
        with scenarios.running(name, f"nbs{os.getpid() % 100000}-{name}") as info, \
                tempfile.TemporaryDirectory(prefix=".watch-", dir=keep) as watched:
            before = readonly.snapshot(sorted(info.namespaces.values())) if args.readonly else None
            if info.watch:  # an intermittent fault: the flight recorder's one bundle
                proc = subprocess.run([sys.executable, "-m", "bundle", *info.watch_argv(watched)[1:]],
                                      capture_output=True, text=True, timeout=300)
                got = sorted(Path(watched).glob("*.tar.zst"))
                if proc.returncode == 0 and got:
                    got[0].rename(out)
            else:
                proc = subprocess.run([sys.executable, "-m", "bundle", *info.collect_argv()[1:], "-o", str(out)],
                                      capture_output=True, text=True, timeout=300)
            if before is not None:
                changes = readonly.compare(before, readonly.snapshot(sorted(info.namespaces.values())))
        if proc.returncode not in (0, 5) or not out.exists():
            raise LabError(f"{name}: {'watch' if info.watch else 'collect'} failed (exit {proc.returncode}"
                           f"{', no bundle' if not out.exists() else ''}): {proc.stderr.strip()[-300:]}")
        report = read_bundle(out, tables=False).findings()
        if report is None:
            raise LabError(f"{name}: the bundle has no findings.json")
        rows.append(score(name, info.verdict, report))
        if changes is not None:
            touched[name] = changes
        if not args.json:
            r = rows[-1]
            print(f"{'right' if r.right else 'WRONG':<6} {name:<22} expected {r.expected}; named {r.named}")
            if changes is not None:
                print(f"{'':<6} {'':<22} read-only: {'CHANGED ' + '; '.join(changes.mutations[:3]) if changes.mutations else 'nothing changed'}"
                      f" ({len(changes.probe_made)} entries made by probes)")
    right = sum(r.right for r in rows)
    changed = [n for n, c in touched.items() if c.mutations]
    if args.json:
        print(json.dumps({"scores": [{**r.as_dict(), **({"readonly": {
            "mutations": touched[r.scenario].mutations, "probe_made": touched[r.scenario].probe_made[:20],
            "probe_made_count": len(touched[r.scenario].probe_made)}} if r.scenario in touched else {})}
            for r in rows], "right": right, "total": len(rows), "changed": changed, "bundles": str(keep)}, indent=1))
    else:
        print(f"{right}/{len(rows)} right" + (f"; read-only: {len(changed)} changed something" if args.readonly
                                               else "") + f"; bundles in {keep}")
    return 0 if right == len(rows) and not changed else 7


def _cmd_fleet(args: argparse.Namespace, argv: list[str]) -> int:
    import getpass
    import secrets
    import tempfile
    import time
    from datetime import UTC, datetime

    from bundle.archive.incidentset import write_set
    from bundle.collect.fleet import FleetInterrupted, SshFleet, collect_fleet

    hosts = [h.strip() for v in args.ssh for h in v.split(",") if h.strip()]
    if args.ssh_file:
        hosts += [line.strip() for line in args.ssh_file.read_text().splitlines()
                  if line.strip() and not line.lstrip().startswith("#")]
    hosts = list(dict.fromkeys(hosts))
    kube = args.kube or bool(args.nodes)
    if kube and hosts:
        raise UsageError("one engine per set: --ssh/--ssh-file or --kube/--nodes, not both")
    if not kube and not hosts:
        raise UsageError("no node: give --ssh HOST[,HOST...], --ssh-file FILE, or --kube [--nodes NODE[,NODE...]]")
    if len(hosts) > 256 or any(h.startswith("-") or any(c.isspace() for c in h) for h in hosts):
        raise UsageError("nodes: at most 256 host names, none starting with '-' or holding spaces")
    if not 1 <= args.parallel <= 64 or args.node_timeout <= 0 or not 0 <= args.start_in <= 300:
        raise UsageError("--parallel 1-64, --node-timeout > 0, --start-in 0-300")
    rest = list(args.collect_args)
    if rest[:1] == ["--"]:
        rest = rest[1:]
    owned = {"-o", "--output", "--force", "--sign", "--start-at", "--json"}
    clash = sorted({a.split("=")[0] for a in rest} & owned)
    if clash:
        raise UsageError(f"{', '.join(clash)}: the fleet sets these for every node (use the fleet's own -o/--force)")
    node_args = _parser().parse_args(["collect", *rest])  # a typo is refused here, before any node is asked
    if node_args.pcap:
        raise UsageError("--pcap: a node cannot read this machine's files")
    capturing = node_args.slices is None or "capture" in node_args.slices
    if capturing and node_args.capture_min_seconds is None and args.window > 0:
        if args.window > node_args.capture_seconds:
            raise UsageError(f"--window {args.window:g}: longer than the nodes' --capture-seconds")
        rest += ["--capture-min-seconds", f"{args.window:g}"]
    _refuse_existing(args.output, args.force)
    created = datetime.now(UTC)
    out = args.output or Path(f"incident-set-{created:%Y%m%d-%H%M%S}.tar.zst")
    run_id = secrets.token_hex(4)
    if kube:
        from bundle.collect.kube import KubeConfigError, api_client
        from bundle.collect.kubefleet import KubeFleet, collect_kube_fleet, select_nodes

        nodes = [n.strip() for v in args.nodes for n in v.split(",") if n.strip()]
        if any(not _DNS1123.match(n) for n in nodes) or not _DNS1123.match(args.namespace):
            raise UsageError("--nodes and --namespace: Kubernetes names (lowercase DNS-1123)")
        try:
            client, _server, _ctx = api_client(args.kubeconfig, args.context)
        except KubeConfigError as exc:
            raise UsageError(str(exc)) from None
        if not nodes:
            nodes, notes = select_nodes(client, [_ns_name(v, "--service") for v in node_args.services],
                                        [_ns_name(v, "--pod") for v in node_args.pods])
            for note in notes:
                sys.stderr.write(f"netbundle: {note}\n")
            if not nodes:
                raise UsageError("no node: give --nodes, or a --service with ready endpoints or a scheduled --pod "
                                 "after --")
        nodes = list(dict.fromkeys(nodes))[:256]
        start_at = time.time() + args.start_in
        engine = "kubernetes"
        kfleet = KubeFleet(nodes=tuple(nodes), collect_args=tuple(rest), run_id=run_id, image=args.image,
                           namespace=args.namespace, service_account=args.service_account, parallel=args.parallel,
                           node_timeout_s=args.node_timeout + args.start_in, start_at=start_at,
                           pull_grace_s=args.image_pull_grace)

        def run(folder: Path, progress: Callable[[Any], None]) -> Any:
            return collect_kube_fleet(kfleet, client, folder, progress)
    else:
        start_at = time.time() + args.start_in
        engine = "ssh"
        fleet = SshFleet(hosts=tuple(hosts), collect_args=tuple(rest),
                         ssh_config=str(args.ssh_config) if args.ssh_config else None,
                         remote_netbundle=args.remote_netbundle, parallel=args.parallel,
                         node_timeout_s=args.node_timeout + args.start_in, start_at=start_at)

        def run(folder: Path, progress: Callable[[Any], None]) -> Any:
            return collect_fleet(fleet, folder, progress)

    def progress(n: Any) -> None:
        sys.stderr.write(f"  {n.node:<28} {n.outcome:<18} {n.duration_s:6.1f}s{('  ' + n.detail) if n.detail else ''}\n")

    interrupted = False
    with tempfile.TemporaryDirectory(prefix=".netbundle-fleet-", dir=out.parent.resolve()) as tmp:
        try:
            results = run(Path(tmp), progress)
        except FleetInterrupted as exc:
            results, interrupted = exc.results, True
        from bundle.models.incidentset import SetManifest

        manifest = SetManifest(set_id=f"set-{created:%Y%m%dT%H%M%SZ}-{run_id}", engine=engine,
                               created=created, finished=datetime.now(UTC), user=getpass.getuser(), argv=argv,
                               start_at=datetime.fromtimestamp(start_at, UTC), nodes=[r.outcome for r in results])
        files = {r.outcome.member: r.file for r in results if r.outcome.member and r.file is not None}
        path = write_set(manifest, files, out, overwrite=args.force)
    got = [r for r in results if r.outcome.member]
    bad = [r.outcome for r in results if r.outcome.outcome != "collected"]
    print(path)
    sys.stderr.write(f"collected {len(got)} of {len(results)}"
                     + "".join(f"; node {n.node}: {n.outcome}" + (f" ({n.detail})" if n.detail else "") for n in bad)
                     + "\n")
    return 130 if interrupted else 0 if not bad else 5


# Every subcommand but collect, which also takes the raw argv for the manifest.
_COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "validate": _cmd_validate, "verify": _cmd_verify, "show": _cmd_show, "analyze": _cmd_analyze, "summary": _cmd_summary,
    "diff": _cmd_diff, "redact": _cmd_redact, "render": _cmd_render, "lab": _cmd_lab,
}


_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def _ns_name(value: str, flag: str) -> tuple[str, str]:
    """NS/NAME (NAME alone: the default namespace), both DNS-1123 names as the API requires."""
    ns, _, name = value.rpartition("/")
    ns = ns or "default"
    if not _DNS1123.match(ns) or not _DNS1123.match(name):
        raise UsageError(f"{flag} {value!r}: expected NAMESPACE/NAME")
    return ns, name


def main(argv: Sequence[str] | None = None) -> int:
    raw = list(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, interrupt)
    try:
        args = _parser().parse_args(raw)
    except KeyboardInterrupt:
        _fatal("interrupted", 130)
    try:
        if args.command == "collect":
            code = _cmd_collect(args, ["netbundle", *raw])
        elif args.command == "fleet":
            code = _cmd_fleet(args, ["netbundle", *raw])
        elif args.command == "watch":
            code = _cmd_watch(args, ["netbundle", *raw])
        else:
            code = _COMMANDS[args.command](args)
    except NetbundleError as exc:
        if args.debug:
            raise
        _fatal(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        _fatal("interrupted", 130)
    except BrokenPipeError:
        return 0
    except Exception as exc:  # the one-line promise holds for our own bugs too
        if args.debug:
            raise
        _fatal(f"internal error: {type(exc).__name__}: {exc} (re-run with --debug for a traceback)", 1)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
