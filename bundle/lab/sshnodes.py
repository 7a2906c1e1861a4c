"""Lab "nodes" reachable over real OpenSSH, for the fleet's tests and benchmark: a controller netns with a
bridge, and per node a netns on it running Debian's sshd on its own port with a throwaway host key, one client
key and an ssh_config naming every node. Nothing of the machine's own sshd or config is touched; teardown of
the Topology removes the netns, their processes and the run folder."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from bundle.lab.topology import Topology

SSH_PORT = 2222
_SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class SshNode:
    name: str
    last: int  # the node's address: SUBNET.last
    on_path: bool = True  # netbundle (this interpreter's venv) on the login PATH
    force_command: str | None = None  # sshd ForceCommand: a node that hangs ("sleep 600")
    user: str = "root"  # the account ssh logs in as (another: its `sudo -n` decides)


def start_ssh_nodes(t: Topology, nodes: list[SshNode], subnet: str = "10.244.60",
                    extra_hosts: dict[str, str] | None = None) -> Path:
    """The controller netns ("ctl", SUBNET.1 on br0) and every node; returns the ssh_config to use with -F.
    `extra_hosts` adds aliases pointing at addresses where nothing listens (an unreachable node)."""
    if not Path("/run/sshd").exists():
        raise RuntimeError("/run/sshd is missing (sshd's privilege-separation folder): create it first")
    venv_bin = str(Path(sys.executable).parent)
    t.add_netns("ctl")
    t.bridge("ctl", "br0")
    t.address("ctl", "br0", f"{subnet}.1/24")
    run = t.run_dir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(run / "client_key")], check=True)
    (run / "authorized_keys").write_text((run / "client_key.pub").read_text())
    for n in nodes:
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(run / f"hostkey-{n.name}")],
                       check=True)
        cfg = run / f"sshd-{n.name}.conf"
        cfg.write_text("\n".join([
            f"Port {SSH_PORT}", f"ListenAddress {subnet}.{n.last}", f"HostKey {run}/hostkey-{n.name}",
            f"AuthorizedKeysFile {run}/authorized_keys", "PermitRootLogin prohibit-password",
            "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            "MaxStartups 100:30:200", f"PidFile {run}/sshd-{n.name}.pid",
            f"SetEnv PATH={(venv_bin + ':') if n.on_path else ''}{_SYSTEM_PATH}", "LogLevel ERROR",
            *([f"ForceCommand {n.force_command}"] if n.force_command else []), ""]))
        t.add_netns(n.name)
        t.veth("ctl", f"v{n.last}", n.name, "eth0")
        t.enslave("ctl", f"v{n.last}", "br0")
        t.address(n.name, "eth0", f"{subnet}.{n.last}/24")
        t.spawn(n.name, ["/usr/sbin/sshd", "-D", "-f", str(cfg), "-E", str(run / f"{n.name}.log")])
    for n in nodes:
        t.wait_listening(n.name, SSH_PORT)
    ssh_config = run / "ssh_config"
    ssh_config.write_text("".join(f"Host {n.name}\n  HostName {subnet}.{n.last}\n"
                                  + (f"  User {n.user}\n" if n.user != "root" else "") for n in nodes)
                          + "".join(f"Host {alias}\n  HostName {addr}\n" for alias, addr in (extra_hosts or {}).items())
                          + f"Host *\n  Port {SSH_PORT}\n  User root\n  IdentityFile {run}/client_key\n"
                            "  IdentitiesOnly yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                            "  LogLevel ERROR\n")
    return ssh_config
