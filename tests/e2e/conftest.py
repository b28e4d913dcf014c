"""e2e fixtures: a session-wide cluster on one of three backends (docs/localcluster.md):

- `process` (default, `make test`): the local control plane and its node agent, which runs
  each container as a process of this machine;
- `node` (`make e2e-node`): the same control plane with kube-scheduler and a real kubelet,
  containerd and runc; images built from the project's Dockerfiles, pods on a bridge;
- `kind` (`make e2e-kind`): a kind cluster, where Docker and kind exist.

Set by WORKERFLEET_E2E_BACKEND. The same operator tests run on all three.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster.images import Image, ImageTable
from localcluster.kube import Client
from localcluster.realnode import network
from localcluster.realnode.cluster import RealNodeCluster
from localcluster.testing import k8s_client, kube_namespace, running_cluster, serving
from tests.conftest import postgres_url
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
BACKENDS = ("process", "node", "kind")
BACKEND = os.environ.get("WORKERFLEET_E2E_BACKEND", "process")
if BACKEND not in BACKENDS:
    raise pytest.UsageError(f"WORKERFLEET_E2E_BACKEND={BACKEND!r}: expected one of {BACKENDS}")

# test_localcluster.py tests the process agent itself; node/ tests what only a real node has.
collect_ignore = ["node"] if BACKEND == "process" else ["test_localcluster.py"]
if BACKEND == "kind":
    collect_ignore.append("node")


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
    """The cluster of the selected backend, for the whole session."""
    if BACKEND == "kind":
        yield KindCluster(Path(os.environ["KUBECONFIG"]))
    elif BACKEND == "node":
        yield from real_node(tmp_path_factory)
    else:
        yield from running_cluster(tmp_path_factory, localcluster_images)


def real_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNodeCluster]:
    from workerfleet_dev.images import node_archive

    archive = node_archive(["e2e"])
    yield from serving(
        RealNodeCluster(tmp_path_factory.mktemp("realnode"), image_archives=[archive])
    )


@pytest.fixture(scope="session")
def database_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """On the real node PostgreSQL also listens on the pod bridge, and the URL names that
    address: the tests, the operator and the pods then all use the same URL."""
    if BACKEND == "node":
        request.getfixturevalue("local_cluster")  # the bridge must exist first
        yield from postgres_url(also_listen=network.GATEWAY, trust_cidr=network.SUBNET)
    else:
        yield from postgres_url()


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
