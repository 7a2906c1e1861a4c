"""A simulator of the Job controller and the kubelet, for the loopback API server (tests/kubeapi.py). It is NOT
a kubelet: it makes each Job's pod, and "runs" the pod's container by running the container's command and args
on this machine inside the lab netns that plays the pod's node (`ip netns exec`), its stdout and stderr becoming
the pod's log stream, its exit the container's terminated state. What it does not do: pull images, enforce the
securityContext (capabilities, read-only root), mount volumes, or kill at activeDeadlineSeconds — the image
test (tests/test_image.py) runs the real image the way the Job asks. The API calls the coordinator makes and the
manifests it sends are the real ones; these are checked against the client's models in the tests."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.kubeapi import FakeApi, LogStream


@dataclass
class Kubelet:
    api: FakeApi
    netns: dict[str, str]  # node name -> the lab netns playing it; a node not here has no kubelet: pods stay Pending
    path: str  # PATH inside the "container"
    pull_fails: set[str] = field(default_factory=set)  # nodes whose image pull fails (no route to the registry)
    evict: set[str] = field(default_factory=set)  # nodes that evict the pod a moment after it starts
    jobs_seen: list[dict[str, Any]] = field(default_factory=list)  # every Job as it was created
    _procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Kubelet:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        for proc in self._procs.values():
            _kill(proc)

    def running(self) -> list[str]:
        """Pods whose container is still running: what a deleted Job must not leave behind."""
        return [name for name, proc in self._procs.items() if proc.poll() is None]

    def _loop(self) -> None:
        while not self._stop.is_set():
            jobs = {o["metadata"]["name"]: o for o in self.api.of("jobs")}
            pods = {o["metadata"]["labels"].get("job-name"): o for o in self.api.of("pods")
                    if "job-name" in o["metadata"].get("labels", {})}
            for name, job in jobs.items():
                if name not in pods and name not in self._procs and not any(j["metadata"]["name"] == name
                                                                            for j in self.jobs_seen):
                    self.jobs_seen.append(job)
                    self._create_pod(job)
            for pod_name, proc in list(self._procs.items()):  # the Job is gone (deleted): so is its pod
                job = pod_name.rsplit("-", 1)[0]
                if job not in jobs and proc.poll() is None:
                    _kill(proc)
            time.sleep(0.1)

    def _create_pod(self, job: dict[str, Any]) -> None:
        template = job["spec"]["template"]
        name = f"{job['metadata']['name']}-x7k2p"
        ns = job["metadata"]["namespace"]
        labels = {**template["metadata"].get("labels", {}), "job-name": job["metadata"]["name"],
                  "batch.kubernetes.io/job-name": job["metadata"]["name"],
                  "controller-uid": job["metadata"]["uid"]}
        pod = {"kind": "Pod", "apiVersion": "v1",
               "metadata": {"name": name, "namespace": ns, "labels": labels, "uid": job["metadata"]["uid"][::-1],
                            "annotations": template["metadata"].get("annotations", {})},
               "spec": template["spec"], "status": {"phase": "Pending"}}
        self.api.add("pods", pod)
        node = template["spec"]["nodeName"]
        if node not in self.netns:
            return  # no kubelet there: Pending, no status, as with a node that is gone
        container = template["spec"]["containers"][0]
        if node in self.pull_fails:
            self._set(pod, "Pending", {"waiting": {"reason": "ImagePullBackOff",
                                                   "message": f'Back-off pulling image "{container["image"]}"'}})
            return
        stream = LogStream()
        self.api.streams[(ns, name)] = stream
        proc = subprocess.Popen(["ip", "netns", "exec", self.netns[node], *container["command"], *container["args"]],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={"PATH": self.path, "HOME": "/root"}, start_new_session=True)
        self._procs[name] = proc
        self._set(pod, "Running", {"running": {"startedAt": _now()}})
        threading.Thread(target=self._run, args=(pod, proc, stream, node in self.evict), daemon=True).start()

    def _run(self, pod: dict[str, Any], proc: subprocess.Popen[bytes], stream: LogStream, evict: bool) -> None:
        if evict:
            threading.Timer(1.0, _kill, args=(proc,)).start()
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read1(1 << 16), b""):  # type: ignore[union-attr]
            stream.write(chunk)
        code = proc.wait()
        proc.stdout.close()
        if evict:
            self._set(pod, "Failed", {"terminated": {"exitCode": 137, "reason": "Error"}},
                      reason="Evicted", message="The node was low on resource: memory.")
        else:
            self._set(pod, "Succeeded" if code == 0 else "Failed",
                      {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}})
        stream.close()

    def _set(self, pod: dict[str, Any], phase: str, state: dict[str, Any], **extra: str) -> None:
        with self.api.lock:
            pod["status"] = {"phase": phase, **extra, "containerStatuses": [{
                "name": pod["spec"]["containers"][0]["name"], "image": pod["spec"]["containers"][0]["image"],
                "imageID": "", "ready": phase == "Running", "restartCount": 0, "state": state}]}


def _kill(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
