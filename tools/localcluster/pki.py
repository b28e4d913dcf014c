"""A throwaway CA and the certificates the control plane needs, made with the openssl CLI.

The openssl CLI keeps the package free of a compiled crypto dependency; EC P-256 keys make
the whole set in well under a second. Everything is regenerated per cluster start.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

# The apiserver's in-cluster Service IP is the first address of --service-cluster-ip-range.
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: KeyPair
    apiserver: KeyPair
    admin: KeyPair
    controller_manager: KeyPair
    # The apiserver's identity towards kubelets (logs, exec): only a real kubelet checks it.
    kubelet_client: KeyPair
    # RSA: service-account token signing (RS256 is what every client library verifies).
    sa_key: Path
    sa_pub: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _leaf(d: Path, name: str, subject: str, ext: str) -> KeyPair:
    key, csr, crt, cnf = (d / f"{name}.{s}" for s in ("key", "csr", "crt", "ext"))
    cnf.write_text(ext + "\n")
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", str(key), "-subj", subject, "-out", str(csr), cwd=d,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "30", "-sha256", "-extfile", str(cnf), "-out", str(crt),
        cwd=d,
    )  # fmt: skip
    csr.unlink()
    return KeyPair(crt, key)


def client_cert(d: Path, name: str, user: str, groups: tuple[str, ...] = ()) -> KeyPair:
    """A client certificate: CN is the user name, O entries are its groups (apiserver rules)."""
    subject = "".join(f"/O={g}" for g in groups) + f"/CN={user}"
    ext = "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth"
    return _leaf(d, name, subject, ext)


def serving_cert(d: Path, name: str, cn: str, sans: list[str]) -> KeyPair:
    """A TLS server certificate for `sans` (e.g. ["IP:10.0.0.1", "DNS:node-0"])."""
    ext = (
        f"subjectAltName={','.join(sans)}\nkeyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth"
    )
    return _leaf(d, name, f"/CN={cn}", ext)


def create(d: Path) -> Pki:
    d.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "30",
        "-subj", "/CN=workerfleet-localcluster-ca",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=d,
    )  # fmt: skip
    sans = ",".join(
        [
            "IP:127.0.0.1",
            f"IP:{SERVICE_IP}",
            "DNS:localhost",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
        ]
    )
    apiserver = _leaf(
        d,
        "apiserver",
        "/CN=kube-apiserver",
        f"subjectAltName={sans}\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth",
    )
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)
    return Pki(
        ca=KeyPair(d / "ca.crt", d / "ca.key"),
        apiserver=apiserver,
        admin=client_cert(d, "admin", "localcluster-admin", ("system:masters",)),
        controller_manager=client_cert(d, "kcm", "system:kube-controller-manager"),
        kubelet_client=client_cert(
            d, "apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)
        ),
        sa_key=d / "sa.key",
        sa_pub=d / "sa.pub",
    )
