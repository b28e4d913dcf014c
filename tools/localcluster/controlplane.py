"""etcd + kube-apiserver (TLS, Node,RBAC) + kube-controller-manager on loopback.

`ControlPlane` is a context manager; `start()`/`stop()` work too. Every file (PKI, etcd data,
kubeconfigs, logs) lives under one work dir, so a cluster is disposable.
"""

from __future__ import annotations

import base64
import json
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from localcluster import bins, pki, procs
from localcluster.kube import Client, Credentials
from localcluster.procs import Lifecycle

# Controllers the operator and the tests rely on; anything else (node lifecycle, scheduling
# via kube-scheduler, cloud) is either done by the node agent or not needed.
CONTROLLERS = (
    "job-controller",
    "garbage-collector-controller",
    "deployment-controller",
    "replicaset-controller",
    "statefulset-controller",
    "serviceaccount-token-controller",
    "serviceaccount-controller",
    "namespace-controller",
    "root-ca-certificate-publisher-controller",
    "endpoints-controller",
    "endpointslice-controller",
    "ttl-after-finished-controller",
    "cronjob-controller",
)
# With a real kubelet, the node lifecycle controller lifts the `not-ready` taint a new Node
# registers with (kube-scheduler places nothing on it before) and evicts from a dead one.
REAL_NODE_CONTROLLERS = (*CONTROLLERS, "node-lifecycle-controller")


def write_kubeconfig(
    path: Path, server: str, *, ca: Path, cert: Path, key: Path, user: str
) -> None:
    """A self-contained kubeconfig (data embedded) so it survives copying. JSON is valid YAML."""

    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "localcluster",
                "cluster": {"server": server, "certificate-authority-data": b64(ca)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {"client-certificate-data": b64(cert), "client-key-data": b64(key)},
            }
        ],
        "contexts": [
            {"name": "localcluster", "context": {"cluster": "localcluster", "user": user}}
        ],
        "current-context": "localcluster",
    }
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)


class ControlPlane(Lifecycle):
    def __init__(
        self,
        workdir: Path | None = None,
        binaries: bins.Binaries | None = None,
        *,
        controllers: tuple[str, ...] = CONTROLLERS,
    ) -> None:
        self._own_workdir = workdir is None
        self.controllers = controllers
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix="localcluster-"))
        self.binaries = binaries
        self.etcd: subprocess.Popen[bytes] | None = None
        self.apiserver: subprocess.Popen[bytes] | None = None
        self.controller_manager: subprocess.Popen[bytes] | None = None
        self.apiserver_port = 0
        self.pki: pki.Pki | None = None
        self.startup_seconds = 0.0

    # -- public surface -------------------------------------------------------------------
    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def pids(self) -> dict[str, int]:
        procs_ = {
            "etcd": self.etcd,
            "kube-apiserver": self.apiserver,
            "kube-controller-manager": self.controller_manager,
        }
        return {name: p.pid for name, p in procs_.items() if p is not None}

    def admin_credentials(self) -> Credentials:
        assert self.pki is not None, "control plane not started"
        return Credentials(self.server, self.pki.ca.cert, self.pki.admin.cert, self.pki.admin.key)

    def client(self) -> Client:
        return Client(self.admin_credentials())

    def start(self, timeout: float = 60.0) -> None:
        t0 = time.monotonic()
        binaries = self.binaries or bins.ensure()
        try:
            self.pki = pki.create(self.workdir / "pki")
            self._start_etcd(binaries, timeout)
            self._start_apiserver(binaries, timeout)
            write_kubeconfig(
                self.kubeconfig,
                self.server,
                ca=self.pki.ca.cert,
                cert=self.pki.admin.cert,
                key=self.pki.admin.key,
                user="admin",
            )
            self._start_controller_manager(binaries)
            self._wait_default_service_account(timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0

    def stop(self) -> None:
        # Reverse order: controllers first, etcd last, so nothing logs storms about etcd.
        # Short grace: the apiserver's graceful drain takes ~10 s and protects nothing here
        # (the cluster is disposable), while every test session pays for it.
        for proc in (self.controller_manager, self.apiserver, self.etcd):
            if proc is not None:
                procs.stop(proc.pid, grace=1.0)
                proc.wait()
        self.controller_manager = self.apiserver = self.etcd = None
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- the three processes --------------------------------------------------------------
    def _start_etcd(self, binaries: bins.Binaries, timeout: float) -> None:
        client_port, peer_port = procs.free_port(), procs.free_port()
        self.etcd_url = f"http://127.0.0.1:{client_port}"
        # Plain HTTP like envtest: etcd only listens on loopback and only the apiserver talks
        # to it. TLS matters on the apiserver, which every client (and pod) uses.
        self.etcd = procs.start(
            [
                str(binaries.etcd),
                "--name=localcluster",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=localcluster=http://127.0.0.1:{peer_port}",
                # Tests create and delete a lot; fsync per write only costs time here.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
            self.log_dir / "etcd.log",
        )
        self._wait_http(self.etcd, f"{self.etcd_url}/health", None, timeout, "etcd")

    def _start_apiserver(self, binaries: bins.Binaries, timeout: float) -> None:
        assert self.pki is not None
        p = self.pki
        self.apiserver_port = procs.free_port()
        self.apiserver = procs.start(
            [
                str(binaries.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--tls-cert-file={p.apiserver.cert}",
                f"--tls-private-key-file={p.apiserver.key}",
                f"--client-ca-file={p.ca.cert}",
                f"--kubelet-client-certificate={p.kubelet_client.cert}",
                f"--kubelet-client-key={p.kubelet_client.key}",
                "--authorization-mode=Node,RBAC",
                f"--service-account-key-file={p.sa_pub}",
                f"--service-account-signing-key-file={p.sa_key}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={pki.SERVICE_CIDR}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                "--allow-privileged=true",
                "--profiling=false",
                "--v=1",
            ],
            self.log_dir / "kube-apiserver.log",
        )
        self._wait_http(self.apiserver, f"{self.server}/readyz", p, timeout, "kube-apiserver")

    def _start_controller_manager(self, binaries: bins.Binaries) -> None:
        assert self.pki is not None
        p = self.pki
        kcfg = self.workdir / "controller-manager.kubeconfig"
        write_kubeconfig(
            kcfg,
            self.server,
            ca=p.ca.cert,
            cert=p.controller_manager.cert,
            key=p.controller_manager.key,
            user="system:kube-controller-manager",
        )
        self.controller_manager = procs.start(
            [
                str(binaries.kube_controller_manager),
                f"--kubeconfig={kcfg}",
                f"--authentication-kubeconfig={kcfg}",
                f"--authorization-kubeconfig={kcfg}",
                "--bind-address=127.0.0.1",
                f"--secure-port={procs.free_port()}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                f"--controllers={','.join(self.controllers)}",
                # Each controller acts as its own service account, under the RBAC roles the
                # apiserver bootstraps, like a real cluster.
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={p.sa_key}",
                f"--root-ca-file={p.ca.cert}",
                "--leader-elect=false",
                "--profiling=false",
                "--v=1",
            ],
            self.log_dir / "kube-controller-manager.log",
        )

    # -- readiness ------------------------------------------------------------------------
    def _wait_http(
        self,
        proc: subprocess.Popen[bytes],
        url: str,
        p: pki.Pki | None,
        timeout: float,
        what: str,
    ) -> None:
        ctx: ssl.SSLContext | None = None
        if p is not None:
            ctx = ssl.create_default_context(cafile=str(p.ca.cert))
            ctx.load_cert_chain(str(p.admin.cert), str(p.admin.key))
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{what} exited ({proc.returncode}); see {self.log_dir}")
            try:
                with urllib.request.urlopen(url, timeout=2, context=ctx) as resp:  # noqa: S310
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError) as e:
                last = str(e)
            time.sleep(0.1)
        raise TimeoutError(f"{what} not healthy after {timeout}s ({last}); see {self.log_dir}")

    def _wait_default_service_account(self, timeout: float) -> None:
        """Pods are rejected until their namespace's `default` ServiceAccount exists."""
        client = self.client()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.controller_manager is not None
            if self.controller_manager.poll() is not None:
                raise RuntimeError(f"kube-controller-manager exited; see {self.log_dir}")
            try:
                client.get("/api/v1/namespaces/default/serviceaccounts/default")
                return
            except Exception:  # not there yet, whatever the reason
                time.sleep(0.1)
        raise TimeoutError("default ServiceAccount never appeared (controller-manager down?)")
