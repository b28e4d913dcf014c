"""e2e fixtures: a session-wide local cluster (see docs/localcluster.md)."""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.images import Image, ImageTable
from localcluster.kube import Client
from localcluster.testing import k8s_client, kube_namespace, running_cluster
from tests.e2e import kind_backend
from tests.e2e.kind_backend import ClusterLike, KindCluster
from tests.e2e.operator_env import (
    FleetEnv,
    OperatorProcess,
    install_workerfleet_crd,
    new_schema,
    register_app_images,
)

__all__ = ["k8s_client", "kube_namespace", "local_cluster", "localcluster_images"]

IMAGES = Path(__file__).parent / "images"


@pytest.fixture(scope="session")
def localcluster_images() -> ImageTable:
    py = sys.executable
    return ImageTable(
        {
            "localcluster.test/web": Image(command=[py, str(IMAGES / "web.py")]),
            "localcluster.test/crash": Image(
                command=[py, "-c", "import sys; print('about to crash'); sys.exit(3)"]
            ),
            "localcluster.test/job": Image(
                command=[py, "-c", "import os; print('job pod', os.environ['HOSTNAME'], 'done')"]
            ),
            "localcluster.test/sleep": Image(command=[py, "-c", "import time; time.sleep(3600)"]),
        }
    )


@pytest.fixture(scope="session")
def local_cluster(
    tmp_path_factory: pytest.TempPathFactory, localcluster_images: ImageTable
) -> Iterator[ClusterLike]:
    """The local control plane and node agent, or a kind cluster under `make e2e-kind`."""
    if kind_backend.enabled():
        yield KindCluster(Path(os.environ["KUBECONFIG"]))
        return
    yield from running_cluster(tmp_path_factory, localcluster_images)


@pytest.fixture(scope="module")
def operator(
    local_cluster: ClusterLike, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator as a `kopf run` process, one per test module (modules may stop and
    restart it); app images `workerfleet.test/app:N` registered with the node agent."""
    install_workerfleet_crd(local_cluster.client())
    root = tmp_path_factory.mktemp("operator")
    register_app_images(local_cluster, root)
    op = OperatorProcess(local_cluster.kubeconfig, root)
    op.start()
    yield op
    op.stop()


@pytest.fixture
def fleet(
    operator: OperatorProcess, k8s_client: Client, kube_namespace: str, database_url: str
) -> Iterator[FleetEnv]:
    """A fresh namespace, database Secret and schema for one `shop` fleet. Deleted after
    the test so its worker processes do not load the machine for the tests that follow."""
    env = FleetEnv(k8s_client, kube_namespace, database_url, new_schema())
    yield env
    if not env.delete(timeout=60):
        warnings.warn(f"fleet {env.ns}/{env.name} still present 60s after delete", stacklevel=1)
