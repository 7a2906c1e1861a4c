"""A small topology builder for lab scenarios: netns, veth, bridge, addresses,
routes, MTU, sysctls, nftables rules and helper processes.

It only ever touches namespaces it created (never the machine's own
interfaces), and `teardown()` removes them all, with their processes.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from pyroute2 import IPRoute, netns

from bundle._netns import named_netns_path, setns_net
from bundle.errors import LabError


def existing_namespaces() -> list[str]:
    return sorted(netns.listnetns())


def netns_pids(name: str) -> list[int]:
    """Processes whose netns is this one (what `ip netns pids` does)."""
    try:
        target = os.stat(named_netns_path(name)).st_ino
    except OSError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


LAB_RUN_DIR = Path("/run/netbundle-lab")
NETNS_ETC_DIR = Path("/etc/netns")


def remove_namespace(name: str) -> None:
    """Kill what runs inside, then delete the netns (its veths go with it) and its /etc/netns/NAME files."""
    for pid in netns_pids(name):
        if pid != os.getpid():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    if name in existing_namespaces():
        netns.remove(name)
    etc = NETNS_ETC_DIR / name
    if etc.is_dir() and not etc.is_symlink():
        shutil.rmtree(etc, ignore_errors=True)


def restore_machine_sysctls(prefix: str) -> list[str]:
    """Put back the machine-wide sysctls a lab under this prefix changed; what was restored."""
    record = LAB_RUN_DIR / prefix / "machine-sysctls"
    done: list[str] = []
    try:
        lines = record.read_text().splitlines()
    except OSError:
        return done
    for line in lines:
        key, _, old = line.partition("=")
        try:
            Path("/proc/sys/" + key.replace(".", "/")).write_text(old)
            done.append(f"{key}={old}")
        except OSError:
            continue
    record.unlink(missing_ok=True)
    return done


class Topology:
    """Namespaces named <prefix>-<role>; every call fails loudly as a LabError."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.namespaces: dict[str, str] = {}

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None) -> None:
        self.teardown()

    def name(self, role: str) -> str:
        return f"{self.prefix}-{role}"

    def ipr(self, role: str) -> Any:
        return IPRoute(netns=self.namespaces[role])

    def add_netns(self, role: str) -> str:
        name = self.name(role)
        if name in existing_namespaces():
            raise LabError(f"netns {name} already exists (run `netbundle lab down` or remove it first)")
        netns.create(name)
        self.namespaces[role] = name
        with self.ipr(role) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        return name

    def veth(self, role_a: str, if_a: str, role_b: str, if_b: str, mtu: int = 1500, mtu_b: int | None = None) -> None:
        """A veth pair, both ends at mtu unless mtu_b sets the second end apart."""
        with self.ipr(role_a) as a:
            a.link("add", ifname=if_a, kind="veth", peer={"ifname": if_b, "net_ns_fd": self.namespaces[role_b]})
        self.link_up(role_a, if_a, mtu)
        self.link_up(role_b, if_b, mtu_b or mtu)

    def bridge(self, role: str, ifname: str, mtu: int = 1500) -> None:
        with self.ipr(role) as ipr:
            ipr.link("add", ifname=ifname, kind="bridge")
        self.link_up(role, ifname, mtu)

    def enslave(self, role: str, ifname: str, bridge: str) -> None:
        with self.ipr(role) as ipr:
            ipr.link("set", index=self._index(ipr, ifname), master=self._index(ipr, bridge))

    def link_up(self, role: str, ifname: str, mtu: int | None = None) -> None:
        with self.ipr(role) as ipr:
            kwargs: dict[str, Any] = {"state": "up"}
            if mtu:
                kwargs["mtu"] = mtu
            ipr.link("set", index=self._index(ipr, ifname), **kwargs)

    def address(self, role: str, ifname: str, cidr: str) -> None:
        iface = ipaddress.ip_interface(cidr)
        with self.ipr(role) as ipr:
            ipr.addr("add", index=self._index(ipr, ifname), address=str(iface.ip), prefixlen=iface.network.prefixlen)

    def route(self, role: str, dst: str, gateway: str | None = None, dev: str | None = None,
              kind: str | None = None, replace: bool = False) -> None:
        """A route; kind "blackhole", "unreachable" or "prohibit" for one that refuses (a CNI's block route)."""
        with self.ipr(role) as ipr:
            kwargs: dict[str, Any] = {"dst": dst}
            if gateway:
                kwargs["gateway"] = gateway
            if dev:
                kwargs["oif"] = self._index(ipr, dev)
            if kind:
                kwargs["type"] = kind
            ipr.route("replace" if replace else "add", **kwargs)

    def neighbor(self, role: str, ifname: str, dst: str, lladdr: str) -> None:
        """A static (PERMANENT) neighbor entry, as an overlay CNI programs one for each peer node."""
        with self.ipr(role) as ipr:
            ipr.neigh("replace", dst=dst, lladdr=lladdr, ifindex=self._index(ipr, ifname), state=0x80)

    def sysctl(self, role: str, key: str, value: str) -> None:
        """Write /proc/sys/<key> inside the netns, from a forked child that entered it."""
        path = "/proc/sys/" + key.replace(".", "/")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - child
            code = 0
            try:
                setns_net(named_netns_path(self.namespaces[role]))
                with open(path, "w") as fh:
                    fh.write(value)
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise LabError(f"could not set {key}={value} in {self.namespaces[role]}")

    def warm(self, role: str, address: str) -> None:
        """One ping, so both ends of a link already know each other's MAC — as on a running node — before any
        collection (whose probes would otherwise create the neighbor entries)."""
        self._run(role, ["ping", "-c", "1", "-W", "2", address])

    def nft(self, role: str, ruleset: str) -> None:
        self._run(role, ["nft", "-f", "-"], ruleset)

    def iptables_restore(self, role: str, rules: str, legacy: bool = False) -> None:
        """Load iptables-save format rules (nft backend unless legacy) into the netns, as kube-proxy does."""
        self._run(role, ["iptables-legacy-restore" if legacy else "iptables-nft-restore", "--noflush"], rules)

    def machine_sysctl(self, key: str, value: str) -> None:
        """Set a machine-wide sysctl for this lab, first recording its old value in the lab's run folder, so
        teardown, `netbundle lab down` or the next lab start puts it back even after a crash."""
        path = "/proc/sys/" + key.replace(".", "/")
        record = self.run_dir() / "machine-sysctls"
        try:
            old = Path(path).read_text().strip()
            if not record.exists() or key not in record.read_text():
                with open(record, "a") as fh:
                    fh.write(f"{key}={old}\n")
            Path(path).write_text(value)
        except OSError as exc:
            raise LabError(f"could not set {key}={value}: {exc.strerror}") from None

    def spawn(self, role: str, argv: list[str]) -> None:
        """Start a detached helper process inside the netns; teardown kills it."""
        try:
            proc = subprocess.run(
                ["ip", "netns", "exec", self.namespaces[role], "setsid", "-f", *argv],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LabError(f"could not start {argv[0]} in {self.namespaces[role]}: {exc}") from None
        if proc.returncode != 0:
            raise LabError(f"could not start {argv[0]} in {self.namespaces[role]} (exit {proc.returncode})")

    def netns_file(self, role: str, name: str, content: str) -> Path:
        """/etc/netns/<netns>/<name>: what `ip netns exec` bind-mounts over /etc/<name> (resolv.conf)."""
        folder = NETNS_ETC_DIR / self.namespaces[role]
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / name
        path.write_text(content)
        return path

    def run_dir(self) -> Path:
        """A folder for this lab's logs and pid files, removed with the lab."""
        folder = LAB_RUN_DIR / self.prefix
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def python(self, role: str, module: str, *args: str) -> None:
        self.spawn(role, [sys.executable, "-m", module, *args])

    def wait_listening(self, role: str, port: int, timeout: float = 5.0) -> None:
        """Block until a TCP listener on port exists in that netns (helpers start asynchronously)."""
        suffix = f":{port:04X}"
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            proc = subprocess.run(["ip", "netns", "exec", self.namespaces[role], "cat", "/proc/net/tcp", "/proc/net/tcp6"],
                                  capture_output=True, text=True, timeout=5)
            rows = [line.split() for line in proc.stdout.splitlines()]
            if any(len(r) > 3 and r[1].endswith(suffix) and r[3] == "0A" for r in rows):
                return
            time.sleep(0.05)
        raise LabError(f"no listener on port {port} in {self.namespaces[role]} after {timeout:g} s")

    def teardown(self) -> None:
        for name in reversed(list(self.namespaces.values())):
            remove_namespace(name)
        self.namespaces.clear()
        restore_machine_sysctls(self.prefix)
        shutil.rmtree(LAB_RUN_DIR / self.prefix, ignore_errors=True)

    def _run(self, role: str, argv: list[str], stdin: str | None = None) -> None:
        try:
            proc = subprocess.run(["ip", "netns", "exec", self.namespaces[role], *argv], input=stdin,
                                  capture_output=True, text=True, timeout=10)
        except FileNotFoundError as exc:
            raise LabError(f"{argv[0]} is not installed: {exc}") from None
        except subprocess.TimeoutExpired:
            raise LabError(f"{' '.join(argv)} timed out in {self.namespaces[role]}") from None
        if proc.returncode != 0:
            raise LabError(f"{' '.join(argv)} failed in {self.namespaces[role]}: {proc.stderr.strip()}")

    @staticmethod
    def _index(ipr: Any, ifname: str) -> int:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise LabError(f"no interface {ifname}")
        return int(found[0])

