"""The kubelet and kube-scheduler of the control plane's release, built by localcluster.bins.

The kubelet authenticates as `system:node:<name>` (the Node authorizer and NodeRestriction
then limit it to its own pods' objects, as in a real cluster), serves on the pod bridge's
gateway address with a certificate from the cluster CA, and keeps every file (pod volumes,
logs, checkpoints) under one root directory and every cgroup under one cgroup root, so
stopping it leaves nothing behind. Image garbage collection is off: no image it deleted
could ever be pulled back here.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from localcluster import pki, procs
from localcluster.controlplane import write_kubeconfig
from localcluster.procs import Lifecycle


def kubelet_config(
    *,
    endpoint: str,
    address: str,
    port: int,
    ca: Path,
    serving: pki.KeyPair,
    logs_dir: Path,
    cgroup_root: str,
) -> dict[str, object]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "containerRuntimeEndpoint": endpoint,
        "address": address,
        "port": port,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "tlsCertFile": str(serving.cert),
        "tlsPrivateKeyFile": str(serving.key),
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "failSwapOn": False,
        "podLogsDir": str(logs_dir),
        "makeIPTablesUtilChains": False,
        "resolvConf": "/etc/resolv.conf",
        "clusterDomain": "cluster.local",
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "imageMinimumGCAge": "87600h",
        # Disk and memory on a shared development machine are not the node's to guard.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "serializeImagePulls": False,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "shutdownGracePeriod": "0s",
        "syncFrequency": "10s",
        "fileCheckFrequency": "0s",
        "nodeStatusUpdateFrequency": "2s",
        "protectKernelDefaults": False,
    }


class Kubelet(Lifecycle):
    def __init__(
        self,
        binary: Path,
        root: Path,
        *,
        node_name: str,
        server: str,
        ca_pki: pki.Pki,
        pki_dir: Path,
        runtime_endpoint: str,
        address: str,
        cgroup_root: str,
    ) -> None:
        self.binary = binary
        self.cgroup_root = cgroup_root
        self.root = root
        self.node_name = node_name
        self.server = server
        self.pki = ca_pki
        self.pki_dir = pki_dir
        self.runtime_endpoint = runtime_endpoint
        self.address = address
        self.log = root / "logs" / "kubelet.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def root_dir(self) -> Path:
        return self.root / "kubelet"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        for sub in ("kubelet", "pod-logs"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        ensure_cgroup_root(self.cgroup_root)
        client = pki.client_cert(
            self.pki_dir, "kubelet", f"system:node:{self.node_name}", ("system:nodes",)
        )
        serving = pki.serving_cert(
            self.pki_dir, "kubelet-serving", self.node_name,
            [f"IP:{self.address}", f"DNS:{self.node_name}"],
        )  # fmt: skip
        kubeconfig = self.root / "kubelet.kubeconfig"
        write_kubeconfig(
            kubeconfig, self.server, ca=self.pki.ca.cert, cert=client.cert, key=client.key,
            user=f"system:node:{self.node_name}",
        )  # fmt: skip
        config = self.root / "kubelet-config.json"
        config.write_text(
            json.dumps(
                kubelet_config(
                    endpoint=self.runtime_endpoint,
                    address=self.address,
                    port=procs.free_port(),
                    ca=self.pki.ca.cert,
                    serving=serving,
                    logs_dir=self.root / "pod-logs",
                    cgroup_root=self.cgroup_root,
                ),
                indent=2,
            )
        )
        self._proc = procs.start(
            [
                str(self.binary),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.root_dir}",
                f"--cert-dir={self.root / 'kubelet-certs'}",
                f"--hostname-override={self.node_name}",
                f"--node-ip={self.address}",
                "--v=1",
            ],
            self.log,
        )

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self) -> None:
        if self._proc is not None:
            procs.stop(self._proc.pid, grace=10)
            self._proc.wait()
            self._proc = None


class Scheduler(Lifecycle):
    """kube-scheduler as `system:kube-scheduler` (its bootstrap RBAC role), no leader election."""

    def __init__(self, binary: Path, root: Path, *, server: str, ca_pki: pki.Pki,
                 pki_dir: Path) -> None:  # fmt: skip
        self.binary, self.root, self.server, self.pki, self.pki_dir = (
            binary, root, server, ca_pki, pki_dir,
        )  # fmt: skip
        self.log = root / "logs" / "kube-scheduler.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def start(self) -> None:
        cert = pki.client_cert(self.pki_dir, "scheduler", "system:kube-scheduler")
        kubeconfig = self.root / "scheduler.kubeconfig"
        write_kubeconfig(
            kubeconfig, self.server, ca=self.pki.ca.cert, cert=cert.cert, key=cert.key,
            user="system:kube-scheduler",
        )  # fmt: skip
        self._proc = procs.start(
            [
                str(self.binary),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                f"--secure-port={procs.free_port()}",
                f"--cert-dir={self.root / 'scheduler-certs'}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
            self.log,
        )

    def stop(self) -> None:
        if self._proc is not None:
            procs.stop(self._proc.pid, grace=5)
            self._proc.wait()
            self._proc = None


def cgroup_dirs(cgroup_root: str) -> list[Path]:
    """Our cgroup root in every v1 hierarchy (or the one v2 tree)."""
    base = Path("/sys/fs/cgroup")
    name = cgroup_root.strip("/")
    if (base / "cgroup.controllers").exists():
        return [base / name]
    return [d / name for d in base.iterdir() if d.is_dir() and not d.is_symlink()]


def ensure_cgroup_root(cgroup_root: str) -> None:
    for d in cgroup_dirs(cgroup_root):
        d.mkdir(exist_ok=True)
        # A new v1 cpuset starts with no CPUs and no memory nodes: no process could join it.
        for name in ("cpuset.cpus", "cpuset.mems"):
            own, parent = d / name, d.parent / name
            if own.exists() and not own.read_text().strip():
                own.write_text(parent.read_text())
