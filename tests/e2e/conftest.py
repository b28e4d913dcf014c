"""e2e fixtures: a session-wide local cluster (see docs/localcluster.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from localcluster.images import Image, ImageTable
from localcluster.testing import k8s_client, kube_namespace, local_cluster

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
