"""The image the Kubernetes engine's Jobs run, built here from the repository's Containerfile with no registry:
a Debian bookworm rootfs made by mmdebstrap (Debian's packages are reachable), imported into podman, the
Containerfile built on it with the wheels of this checkout (`--network none`: the build needs no index), then
run the way the Job runs it — its command and args, host network, host PIDs, ALL capabilities dropped but the
Job's, read-only root with /tmp writable, no privilege escalation, the host's /run/netns — against a lab netns.
Its log (stdout and stderr, as the kubelet keeps them) must hold a frame that decodes to a valid bundle of that
netns. podman's storage lives in the test's own folder and is removed after it."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from bundle import __version__
from bundle.archive import read_bundle
from bundle.collect.kubefleet import KubeFleet, decode_frame, job_manifest
from bundle.lab.topology import Topology
from tests.conftest import REPO

pytestmark = [pytest.mark.privileged, pytest.mark.slow]
IMAGE = f"localhost/netbundle:{__version__}"


def _podman_flags(job: dict) -> list[str]:
    """podman run flags for what the Job's pod spec asks of the node."""
    spec = job["spec"]["template"]["spec"]
    [c] = spec["containers"]
    sc = c["securityContext"]
    flags = ["--user", str(sc["runAsUser"]), "--cap-drop", ",".join(sc["capabilities"]["drop"]),
             "--cap-add", ",".join(sc["capabilities"]["add"])]
    flags += ["--network", "host"] if spec["hostNetwork"] else []
    flags += ["--pid", "host"] if spec["hostPID"] else []
    flags += ["--read-only"] if sc["readOnlyRootFilesystem"] else []
    flags += ["--security-opt", "no-new-privileges"] if not sc["allowPrivilegeEscalation"] else []
    volumes = {v["name"]: v for v in spec["volumes"]}
    for m in c["volumeMounts"]:
        v = volumes[m["name"]]
        if "emptyDir" in v:
            flags += ["--tmpfs", m["mountPath"]]
        else:
            opts = ["ro"] if m.get("readOnly") else []
            opts += ["rslave"] if m.get("mountPropagation") == "HostToContainer" else []
            flags += ["-v", f"{v['hostPath']['path']}:{m['mountPath']}:{','.join(opts)}"]
    return flags


def test_the_containerfile_image_runs_as_the_job_and_gives_a_valid_bundle(wheelhouse):
    for tool in ("mmdebstrap", "podman", "runc"):
        assert shutil.which(tool), f"{tool} missing (make test installs it)"
    packages = re.search(r'ARG PACKAGES="([^"]+)"', (REPO / "Containerfile").read_text()).group(1).split()
    work = Path(tempfile.mkdtemp(prefix="nbt-image-", dir="/var/tmp"))
    podman = ["podman", "--root", str(work / "storage"), "--runroot", str(work / "run"), "--storage-driver", "vfs",
              "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
    t = Topology(f"nbt-img-{abs(hash(work)) % 100000}")
    try:
        ctx = work / "ctx"
        (ctx / "dist").mkdir(parents=True)
        shutil.copy(REPO / "Containerfile", ctx / "Containerfile")
        shutil.copytree(wheelhouse, ctx / "dist" / "image")
        rootfs = work / "rootfs.tar"
        # no documentation, manual pages or locales: a smaller rootfs for vfs to copy at every layer
        made = subprocess.run(["mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(packages)}",
                               "--dpkgopt=path-exclude=/usr/share/doc/*", "--dpkgopt=path-exclude=/usr/share/man/*",
                               "--dpkgopt=path-exclude=/usr/share/locale/*", "--format=tar", "bookworm",
                               str(rootfs)], capture_output=True, text=True, timeout=600)
        assert made.returncode == 0, made.stderr[-2000:]
        subprocess.run([*podman, "import", "-q", str(rootfs), "localhost/nbt-debian:bookworm"], check=True,
                       capture_output=True, timeout=300)
        rootfs.unlink()
        built = subprocess.run([*podman, "build", "-q", "--network", "none", "--build-arg",
                                "BASE=localhost/nbt-debian:bookworm", "-t", IMAGE, "-f", str(ctx / "Containerfile"),
                                str(ctx)], capture_output=True, text=True, timeout=600)
        assert built.returncode == 0, built.stderr[-3000:]

        # a "node" netns with a listener the bundle must show, owner process and all (hostPID, SYS_PTRACE)
        t.add_netns("node")
        t.address("node", "lo", "10.244.61.1/32")
        t.python("node", "bundle.lab.listener", "--port", "8080", "--send", "64")
        t.wait_listening("node", 8080)
        fleet = KubeFleet(nodes=("node-a",), run_id="0badcafe", image=IMAGE,
                          collect_args=("--netns", t.namespaces["node"], "--slice", "route", "--slice", "sockets",
                                        "--passive", "--timeout", "20"))
        job = job_manifest(fleet, "node-a", 0)
        [c] = job["spec"]["template"]["spec"]["containers"]
        assert c["image"] == IMAGE
        ran = subprocess.run([*podman, "run", "--rm", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096",
                              *_podman_flags(job), c["image"], *c["command"], *c["args"]],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=180)
        assert ran.returncode == 0, ran.stdout[-3000:]
        out = io.BytesIO()
        frame = decode_frame([ran.stdout], out, 1 << 30)
        assert frame.complete, (frame.error, list(frame.other))
        path = work / "node.tar.zst"
        path.write_bytes(out.getvalue())
        b = read_bundle(path)  # every member's SHA-256, the trailer
        [vantage] = [v for v in b.manifest.vantages if v.kind == "netns_name"]
        assert vantage.entered and vantage.privileges is not None
        assert set(vantage.privileges.capabilities) == {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN",
                                                        "CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"}
        listeners = [s for s in b.sockets(vantage.id).listeners if s.lport == 8080]
        # its owner is a process of the host, seen through hostPID with SYS_PTRACE: the netns's own process
        pids = subprocess.run(["ip", "netns", "pids", t.namespaces["node"]], capture_output=True, text=True).stdout
        assert listeners and {o.pid for s in listeners for o in s.owners} == {int(p) for p in pids.split()}, listeners
        assert "10.244.61.1" in {a.address for a in b.route(vantage.id).addresses}
    finally:
        t.teardown()
        subprocess.run([*podman, "rmi", "-a", "-f"], capture_output=True, timeout=120)
        shutil.rmtree(work, ignore_errors=True)
