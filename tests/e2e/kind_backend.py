"""The e2e suite's cluster on kind instead of the local control plane: `make e2e-kind` sets
WORKERFLEET_E2E_BACKEND=kind and KUBECONFIG. Images are real and preloaded into kind, so the
image table is not used; the database URL (DATABASE_URL) is reachable from this machine and
from pods alike (a NodePort on the kind node's address).

Written for machines with Docker and kind; these development machines have neither, so this
path has never been run here (see the README)."""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path
from typing import Any, Protocol

import yaml

from localcluster.cluster import create_namespace
from localcluster.images import Image
from localcluster.kube import Client, Credentials


class ClusterLike(Protocol):
    """What the operator e2e tests need of a cluster: either backend provides it."""

    @property
    def kubeconfig(self) -> Path: ...

    @property
    def images(self) -> ImageAdder: ...

    def client(self) -> Client: ...

    def create_namespace(self, name: str, timeout: float = ...) -> None: ...


class ImageAdder(Protocol):
    def add(self, ref: str, image: Image) -> None: ...


class PrebuiltImages:
    """Images come from `kind load docker-image`; registering a command is meaningless."""

    def add(self, ref: str, image: Image) -> None:
        return None


class KindCluster:
    """The slice of localcluster.Cluster the e2e tests use."""

    def __init__(self, kubeconfig: Path) -> None:
        self._kubeconfig = kubeconfig
        self._images = PrebuiltImages()
        self._creds = self._credentials(yaml.safe_load(kubeconfig.read_text()))

    @staticmethod
    def _credentials(config: dict[str, Any]) -> Credentials:
        context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c for c in config["clusters"] if c["name"] == context["context"]["cluster"])
        user = next(u for u in config["users"] if u["name"] == context["context"]["user"])
        files = Path(tempfile.mkdtemp(prefix="kind-creds-"))
        paths = {}
        for name, data in (
            ("ca.crt", cluster["cluster"]["certificate-authority-data"]),
            ("client.crt", user["user"]["client-certificate-data"]),
            ("client.key", user["user"]["client-key-data"]),
        ):
            paths[name] = files / name
            paths[name].write_bytes(base64.b64decode(data))
            paths[name].chmod(0o600)
        return Credentials(
            server=cluster["cluster"]["server"],
            ca=paths["ca.crt"],
            cert=paths["client.crt"],
            key=paths["client.key"],
        )

    @property
    def kubeconfig(self) -> Path:
        return self._kubeconfig

    @property
    def images(self) -> PrebuiltImages:
        return self._images

    def client(self) -> Client:
        return Client(self._creds)

    def create_namespace(self, name: str, timeout: float = 60.0) -> None:
        create_namespace(self.client(), name, timeout)
