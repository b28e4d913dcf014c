"""pytest fixtures for a session-wide local cluster.

Use from a conftest.py::

    from localcluster.testing import k8s_client, kube_namespace, local_cluster  # noqa: F401

    @pytest.fixture(scope="session")
    def localcluster_images() -> ImageTable:   # override to teach the node agent images
        return ImageTable({"example.com/app:1": Image(command=[sys.executable, "app.py"])})
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest

from localcluster.cluster import Cluster
from localcluster.images import ImageTable
from localcluster.kube import Client


@pytest.fixture(scope="session")
def localcluster_images() -> ImageTable:
    """Override in a conftest to map images to commands; tests may also `.add()` later."""
    return ImageTable()


@pytest.fixture(scope="session")
def local_cluster(
    tmp_path_factory: pytest.TempPathFactory, localcluster_images: ImageTable
) -> Iterator[Cluster]:
    """A running control plane + node agent for the whole session; KUBECONFIG points at it."""
    yield from running_cluster(tmp_path_factory, localcluster_images)


def running_cluster(
    tmp_path_factory: pytest.TempPathFactory, images: ImageTable
) -> Iterator[Cluster]:
    """The `local_cluster` fixture's body, for conftests that wrap it."""
    # Short back-off keeps crash-loop tests quick; the kubelet's 10s start is the CLI default.
    cluster = Cluster(
        tmp_path_factory.mktemp("localcluster"),
        images,
        backoff_initial=1.0,
        backoff_max=10.0,
    )
    yield from serving(cluster)


class _Serving(Protocol):
    @property
    def kubeconfig(self) -> Path: ...

    def start(self) -> object: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=_Serving)


def serving(cluster: S) -> Iterator[S]:
    """Start a cluster, point KUBECONFIG at it while it serves, stop it afterwards."""
    cluster.start()
    old = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    try:
        yield cluster
    finally:
        if old is None:
            os.environ.pop("KUBECONFIG", None)
        else:
            os.environ["KUBECONFIG"] = old
        cluster.stop()


@pytest.fixture(scope="session")
def k8s_client(local_cluster: Cluster) -> Client:
    """An admin client (system:masters) for the session cluster."""
    return local_cluster.client()


@pytest.fixture
def kube_namespace(local_cluster: Cluster) -> str:
    """A fresh namespace per test, ready for pods. Left behind: the cluster is disposable."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    local_cluster.create_namespace(name)
    return name
