"""The control plane plus a real node: kube-scheduler, containerd and a kubelet registered as
a Node, pods on a bridge of this machine. One per machine (a file lock says so); `start`
first removes whatever a killed run left, `stop` removes everything it made."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from localcluster import bins
from localcluster.cluster import create_namespace
from localcluster.controlplane import REAL_NODE_CONTROLLERS, ControlPlane
from localcluster.images import Image
from localcluster.kube import ApiError, Client
from localcluster.procs import Lifecycle
from localcluster.realnode import cleanup, network, prereqs
from localcluster.realnode.containerd import Containerd
from localcluster.realnode.images import PAUSE_IMAGE
from localcluster.realnode.kubelet import Kubelet, Scheduler
from localcluster.realnode.layout import Layout


class NodeImages:
    """The e2e suite registers image commands for the process agent; on a real node the
    image must instead already be in containerd's store, and a missing one is an error."""

    def __init__(self, runtime: Containerd) -> None:
        self._runtime = runtime

    def add(self, ref: str, image: Image) -> None:
        refs = self._runtime.image_refs()
        if _normalize(ref) not in refs:
            raise LookupError(f"image {ref} is not in the node's image store (have: {refs})")


def _normalize(ref: str) -> str:
    """The name containerd stores for a short reference, as the kubelet resolves it."""
    first = ref.split("/", 1)[0]
    if "/" not in ref:
        ref = f"docker.io/library/{ref}"
    elif "." not in first and ":" not in first and first != "localhost":
        ref = f"docker.io/{ref}"
    return ref if ":" in ref.rsplit("/", 1)[-1] else f"{ref}:latest"


class RealNodeCluster(Lifecycle):
    def __init__(
        self, workdir: Path, *, image_archives: Sequence[Path] = (), instance: int = 0
    ) -> None:
        self.workdir = workdir
        self.archives = tuple(image_archives)
        self.layout = Layout(instance)
        self.root = self.layout.root
        self.control_plane = ControlPlane(
            workdir / "controlplane", controllers=REAL_NODE_CONTROLLERS
        )
        self.node_name = self.layout.node_name
        self._lock: IO[str] | None = None
        self.runtime: Containerd | None = None
        self.kubelet: Kubelet | None = None
        self.scheduler: Scheduler | None = None
        self.timings: dict[str, float] = {}

    # -- what the e2e suite uses (tests/e2e/kind_backend.ClusterLike) ---------------------
    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def images(self) -> NodeImages:
        assert self.runtime is not None, "cluster not started"
        return NodeImages(self.runtime)

    @property
    def address(self) -> str:
        """This machine as pods see it (PostgreSQL for pods listens here)."""
        return self.layout.gateway

    def client(self) -> Client:
        return self.control_plane.client()

    def create_namespace(self, name: str, timeout: float = 30.0) -> None:
        create_namespace(self.client(), name, timeout)

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> None:
        tools = prereqs.check()
        node_bins = bins.ensure_node()
        t0 = time.monotonic()
        self._lock = _take_lock(self.layout.lock)
        try:
            cleanup.cleanup(self.layout)
            self.root.mkdir(parents=True)
            cp = self.control_plane
            cp.start()
            assert cp.pki is not None
            pki_dir = cp.pki.ca.cert.parent  # node certificates beside the cluster's own
            self._mark("control plane", t0)
            cni_conf = self.root / "cni" / "net.d"
            network.setup(self.layout, cni_conf, self.root / "cni" / "ipam", cp.apiserver_port)
            self.runtime = Containerd(
                tools, self.root, cni_conf=cni_conf, sandbox_image=PAUSE_IMAGE
            )
            self.runtime.start()
            for archive in self.archives:
                self.runtime.import_images(archive)
            if _normalize(PAUSE_IMAGE) not in self.runtime.image_refs():
                raise RuntimeError(f"no sandbox image {PAUSE_IMAGE} among the image archives")
            self._mark("containerd and images", t0)
            self.scheduler = Scheduler(
                node_bins["kube-scheduler"], self.root, server=cp.server, ca_pki=cp.pki,
                pki_dir=pki_dir,
            )  # fmt: skip
            self.scheduler.start()
            self.kubelet = Kubelet(
                node_bins["kubelet"], self.root, node_name=self.node_name, server=cp.server,
                ca_pki=cp.pki, pki_dir=pki_dir, runtime_endpoint=self.runtime.endpoint,
                address=self.layout.gateway, cgroup_root=self.layout.cgroup_root,
            )  # fmt: skip
            self.kubelet.start()
            self._wait_node_ready(timeout)
            self._mark("node Ready", t0)
        except BaseException:
            self.stop()
            raise

    def _mark(self, what: str, t0: float) -> None:
        self.timings[what] = round(time.monotonic() - t0, 2)

    def _wait_node_ready(self, timeout: float) -> None:
        """Ready, and schedulable: the not-ready taint the kubelet registers with is gone."""
        client = self.client()
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            assert self.kubelet is not None
            if not self.kubelet.running():
                raise RuntimeError(
                    f"kubelet exited; see {self.kubelet.log}:\n{_tail(self.kubelet.log)}"
                )
            try:
                last = client.get(f"/api/v1/nodes/{self.node_name}")
            except ApiError:
                time.sleep(0.3)
                continue
            ready = any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in last.get("status", {}).get("conditions", [])
            )
            taints = [t["key"] for t in last.get("spec", {}).get("taints") or []]
            if ready and not taints:
                return
            time.sleep(0.3)
        conditions = (last or {}).get("status", {}).get("conditions")
        raise TimeoutError(f"node {self.node_name} not Ready in {timeout}s: {conditions}")

    def stop(self) -> None:
        for part in (self.kubelet, self.scheduler, self.runtime):
            if part is not None:
                with contextlib.suppress(Exception):
                    part.stop()
        self.kubelet = self.scheduler = self.runtime = None
        try:
            cleanup.cleanup(self.layout)
        finally:
            self.control_plane.stop()
            if self._lock is not None:
                self._lock.close()
                self._lock = None


def _take_lock(path: Path) -> IO[str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("w")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RuntimeError(f"another real node runs on this machine (lock {path})") from None
    return f


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except FileNotFoundError:
        return ""
