"""The real node itself (`make e2e-node` only): it is a real Node, and a run that is killed
leaves nothing the next start cannot clean, while stopping leaves nothing at all. A second
node (instance 1) runs beside the session's so the session is not disturbed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from localcluster.realnode import cleanup
from localcluster.realnode.cluster import RealNodeCluster
from localcluster.realnode.layout import Layout
from tests.e2e.kind_backend import ClusterLike
from workerfleet_dev.harness import WaitTimeout, wait_for
from workerfleet_dev.images import WORKER_IMAGE

pytestmark = pytest.mark.e2e

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "web"},
    "spec": {
        "securityContext": {"runAsNonRoot": True},
        "containers": [
            {
                "name": "web",
                "image": WORKER_IMAGE,
                "command": ["python3", "-m", "http.server", "8000"],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8000}, "periodSeconds": 1},
            }
        ],
    },
}


def _wait_ready(cluster: RealNodeCluster, ns: str, timeout: float = 60) -> None:
    client = cluster.client()
    seen: list[Any] = []

    def ready() -> bool:
        seen[:] = [client.get(f"/api/v1/namespaces/{ns}/pods/web").get("status") or {}]
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in seen[0].get("conditions") or [])  # fmt: skip

    try:
        wait_for(ready, timeout, 0.3, "pod web Ready")
    except WaitTimeout as exc:
        raise WaitTimeout(f"{exc}; its status: {seen[0] if seen else None}") from None


def test_the_node_is_a_real_kubelet_on_containerd(local_cluster: ClusterLike) -> None:
    assert isinstance(local_cluster, RealNodeCluster)
    node = local_cluster.client().get(f"/api/v1/nodes/{local_cluster.node_name}")
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.34.4"
    assert info["containerRuntimeVersion"].startswith("containerd://1.")
    addresses = {a["type"]: a["address"] for a in node["status"]["addresses"]}
    assert addresses["InternalIP"] == local_cluster.address


_KILLED_RUN = """
import sys, time
from pathlib import Path
from localcluster.realnode.cluster import RealNodeCluster
cluster = RealNodeCluster(Path(sys.argv[1]), image_archives=[Path(sys.argv[2])], instance=1)
cluster.start()
cluster.create_namespace("t")
cluster.client().create("/api/v1/namespaces/t/pods", {pod!r})
from tests.e2e.node.test_realnode import _wait_ready
_wait_ready(cluster, "t")
print("ready", flush=True)
time.sleep(3600)
"""


def _bridge_mac(bridge: str) -> str:
    return Path(f"/sys/class/net/{bridge}/address").read_text().strip()


def _port_macs(bridge: str) -> list[str]:
    ports = Path(f"/sys/class/net/{bridge}/brif").iterdir()
    return sorted(Path(f"/sys/class/net/{p.name}/address").read_text().strip() for p in ports)


def test_the_gateway_keeps_its_mac_while_pods_come_and_go(
    local_cluster: ClusterLike, kube_namespace: str
) -> None:
    """A bridge whose MAC was never set takes its lowest port's and changes with the pods;
    every pod's cached ARP entry for the gateway then goes nowhere, and their connections
    to PostgreSQL stall in TCP retransmission (seen in CI: 2-4 s without a heartbeat, a
    fenced worker, jobs given back and run twice)."""
    assert isinstance(local_cluster, RealNodeCluster)
    lay = local_cluster.layout
    client = local_cluster.client()
    before = _bridge_mac(lay.bridge)
    names = [f"churn-{i}" for i in range(4)]
    for name in names:
        pod = {**POD, "metadata": {"name": name}}
        client.create(f"/api/v1/namespaces/{kube_namespace}/pods", pod)
    seen = set()

    def all_running() -> bool:
        seen.add(_bridge_mac(lay.bridge))
        pods = [client.get(f"/api/v1/namespaces/{kube_namespace}/pods/{n}") for n in names]
        return all((p.get("status") or {}).get("phase") == "Running" for p in pods)

    wait_for(all_running, 90, 0.2, "the churn pods Running")
    ports = _port_macs(lay.bridge)
    assert len(ports) >= len(names)
    for name in names:
        client.delete(f"/api/v1/namespaces/{kube_namespace}/pods/{name}")
    seen.add(_bridge_mac(lay.bridge))
    assert seen == {before}, f"the bridge MAC changed as pods came and went: {seen}"
    assert before == lay.bridge_mac, f"bridge MAC {before} was not set by us"


def test_a_killed_run_is_cleaned_by_the_next_start_and_stop_leaves_nothing(
    local_cluster: ClusterLike, tmp_path: Path
) -> None:
    assert isinstance(local_cluster, RealNodeCluster)
    lay = Layout(1)
    [archive] = local_cluster.archives  # the images the session's node imported
    script = textwrap.dedent(_KILLED_RUN).format(pod=POD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path / "killed"), str(archive)],
        stdout=subprocess.PIPE, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().decode().strip() == "ready", "the first run did not start"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(1)
    left = cleanup.leftovers(lay)
    # The container outlives the run (shims are reparented), with its mounts and the bridge.
    assert any(x.startswith("mount ") for x in left), left
    assert f"bridge {lay.bridge}" in left, left

    second = RealNodeCluster(tmp_path / "next", image_archives=[archive], instance=1)
    second.start()
    try:
        second.create_namespace("t")
        second.client().create("/api/v1/namespaces/t/pods", POD)
        _wait_ready(second, "t")
    finally:
        second.stop()
    assert cleanup.leftovers(lay) == []
