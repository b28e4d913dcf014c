"""Control plane + node agent together: what tests and the demo actually want."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from localcluster.controlplane import ControlPlane
from localcluster.images import ImageTable
from localcluster.kube import ApiError, Client
from localcluster.node import NodeAgent
from localcluster.procs import Lifecycle


class Cluster(Lifecycle):
    def __init__(
        self,
        workdir: Path,
        images: ImageTable | None = None,
        *,
        nodes: tuple[str, ...] = ("localnode-0",),
        backoff_initial: float = 10.0,
        backoff_max: float = 300.0,
    ) -> None:
        self.workdir = workdir
        self.images = images or ImageTable()
        self.control_plane = ControlPlane(workdir / "controlplane")
        self._nodes = nodes
        self._backoff = (backoff_initial, backoff_max)
        self._agent: NodeAgent | None = None

    @property
    def agent(self) -> NodeAgent:
        assert self._agent is not None, "cluster not started"
        return self._agent

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def client(self) -> Client:
        return self.control_plane.client()

    def start(self) -> None:
        self.control_plane.start()
        cp = self.control_plane
        assert cp.pki is not None
        self._agent = NodeAgent(
            cp.client(),
            self.images,
            self.workdir / "node",
            server=cp.server,
            ca_file=cp.pki.ca.cert,
            nodes=self._nodes,
            backoff_initial=self._backoff[0],
            backoff_max=self._backoff[1],
        )
        try:
            self._agent.start()
        except BaseException:
            self.control_plane.stop()
            raise

    def stop(self) -> None:
        # Pods first: their processes may still talk to the apiserver while stopping.
        if self._agent is not None:
            self._agent.stop()
        self.control_plane.stop()

    def create_namespace(self, name: str, timeout: float = 30.0) -> None:
        create_namespace(self.client(), name, timeout)


def create_namespace(client: Client, name: str, timeout: float = 30.0) -> None:
    """Create a namespace and wait for its `default` ServiceAccount (pods need it)."""
    client.create(
        "/api/v1/namespaces",
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
    )
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.get(f"/api/v1/namespaces/{name}/serviceaccounts/default")
            return
        except ApiError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def install_crd(client: Client, crd: dict[str, Any], timeout: float = 30.0) -> None:
    """Create a CustomResourceDefinition (or find it there) and wait until it is Established,
    so objects of the new kind can be created at once."""
    path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
    try:
        client.create(path, crd)
    except ApiError as exc:
        if exc.status != 409:
            raise
    deadline = time.monotonic() + timeout
    while True:
        obj = client.get(f"{path}/{crd['metadata']['name']}")
        conditions = (obj.get("status") or {}).get("conditions") or []
        if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {crd['metadata']['name']} not Established in {timeout}s")
        time.sleep(0.1)
