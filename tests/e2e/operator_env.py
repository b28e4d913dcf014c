"""The operator's e2e environment: the CRD, a real operator process (kopf), app images that
the node agent runs as `fleet-worker` processes, and helpers to read fleets and pools."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import yaml
from psycopg import sql

from localcluster.cluster import install_crd
from localcluster.images import Image
from localcluster.kube import ApiError, Client
from tests.conftest import APPS_DIR
from tests.e2e.kind_backend import ClusterLike
from workerfleet_dev import harness
from workerfleet_dev.harness import wait_for

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
CRD_FILE = ROOT / "crds" / "workerfleet.yaml"
FLEETS = "/apis/workerfleet.dev/v1alpha1/namespaces/{ns}/workerfleets"
IMAGE = "workerfleet.test/app"
T = TypeVar("T")

# Fast timings so a rollout takes seconds: the protocol is the same at any scale.
FAST_SPEC: dict[str, Any] = {
    "heartbeatInterval": "500ms",
    "sweepInterval": "1s",
    "sweepThreshold": "5s",
    "gracefulShutdownTimeout": "5s",
    "maxMigrationWaitTime": "10m",
    "concurrency": 4,
}


def wait_until(cond: Callable[[], T | None], timeout: float = 60, what: str = "condition") -> T:
    """`wait_for` at a pace that does not flood the apiserver."""
    return wait_for(cond, timeout=timeout, interval=0.2, what=what)


def install_workerfleet_crd(client: Client) -> None:
    install_crd(client, yaml.safe_load(CRD_FILE.read_text()))


def register_app_images(cluster: ClusterLike, root: Path) -> None:
    """`workerfleet.test/app:N` runs fleet_test_apps.vN under the module name the fleet's
    spec.app names (`fleet_e2e_app`); `:crash` fails at import, like a broken release."""
    versions = {"1": "v1", "2": "v2", "3": "v3"}
    for tag, module in versions.items():
        d = root / f"app-{tag}"
        d.mkdir(parents=True, exist_ok=True)
        (d / "fleet_e2e_app.py").write_text(f"from fleet_test_apps.{module} import app\n")
        cluster.images.add(f"{IMAGE}:{tag}", _image(d))
    crash = root / "app-crash"
    crash.mkdir(parents=True, exist_ok=True)
    (crash / "fleet_e2e_app.py").write_text("raise RuntimeError('this release is broken')\n")
    cluster.images.add(f"{IMAGE}:crash", _image(crash))


def _image(app_dir: Path) -> Image:
    return Image(
        command=[str(VENV_BIN / "fleet-worker")],
        env={
            "PYTHONPATH": f"{app_dir}:{APPS_DIR}",
            "PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin",
        },
    )


class OperatorProcess(harness.OperatorProcess):
    """The operator as the e2e suite runs it: a fast reconcile interval, its log and its
    leader-election identity named after it (kept across restarts)."""

    def __init__(self, kubeconfig: Path, log_dir: Path, name: str = "operator") -> None:
        self.log_dir, self.name = log_dir, name
        super().__init__(kubeconfig, log_dir / f"{name}.log", env={
            "WORKERFLEET_RECONCILE_INTERVAL": "0.5",
            "WORKERFLEET_LEADER_IDENTITY": f"e2e-{name}",
        })  # fmt: skip


class FleetEnv:
    """One test's fleet: namespace, Secret, schema, and readers for status and pools."""

    def __init__(self, client: Client, namespace: str, database_url: str, schema: str) -> None:
        self.client, self.ns, self.url, self.schema = client, namespace, database_url, schema
        self.name = "shop"
        client.create(
            f"/api/v1/namespaces/{namespace}/secrets",
            {"apiVersion": "v1", "kind": "Secret",
             "metadata": {"name": "db"}, "stringData": {"url": database_url}},
        )  # fmt: skip

    @property
    def path(self) -> str:
        return FLEETS.format(ns=self.ns) + f"/{self.name}"

    def apply(self, version: str, replicas: int = 2, **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": "workerfleet.dev/v1alpha1",
            "kind": "WorkerFleet",
            "metadata": {"name": self.name},
            "spec": {
                "version": version,
                "image": IMAGE,
                "replicas": replicas,
                "database": {"secretRef": {"name": "db"}},
                "schema": self.schema,
                "app": "fleet_e2e_app",
                **FAST_SPEC,
                **spec,
            },
        }
        return self.client.create(FLEETS.format(ns=self.ns), body)

    def delete(self, timeout: float = 60) -> bool:
        """Delete the fleet; True once it is gone (its finalizer drains the pods first)."""
        try:
            self.client.delete(self.path)
        except ApiError as exc:
            if exc.status == 404:
                return True
            raise

        def gone() -> bool:
            try:
                self.client.get(self.path)
            except ApiError as exc:
                if exc.status == 404:
                    return True
                raise
            return False

        try:
            return wait_for(gone, timeout, 0.3, "the fleet deleted")
        except harness.WaitTimeout:
            return False

    def patch_spec(self, **spec: Any) -> dict[str, Any]:
        return self.client.merge_patch(self.path, {"spec": spec})

    def get(self) -> dict[str, Any]:
        return self.client.get(self.path)

    def condition(self, type_: str) -> dict[str, Any] | None:
        status = self.get().get("status") or {}
        return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)

    def ready(self, version: str) -> bool:
        fleet = self.get()
        status = fleet.get("status") or {}
        cond = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
        return bool(
            cond
            and cond["status"] == "True"
            and cond["observedGeneration"] == fleet["metadata"]["generation"]
            and status.get("currentVersion") == version
        )

    def wait_ready(self, version: str, timeout: float = 90) -> None:
        wait_until(lambda: self.ready(version), timeout, f"fleet Ready at version {version}")

    def pods(self) -> list[dict[str, Any]]:
        items = self.client.get(
            f"/api/v1/namespaces/{self.ns}/pods?labelSelector=workerfleet.dev%2Ffleet%3D{self.name}"
        )["items"]
        return [p for p in items if p["metadata"]["labels"].get(
            "app.kubernetes.io/component") == "worker"]  # fmt: skip

    def events(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.client.get(f"/api/v1/namespaces/{self.ns}/events")[
            "items"
        ]
        return items

    def reasons_once_posted(self, reason: str, timeout: float = 15) -> list[str]:
        """The reasons of the fleet's Events once one with `reason` is there: the operator
        posts Events from a thread of its own, just after the status that goes with them."""

        def posted() -> list[str] | None:
            reasons = [str(e["reason"]) for e in self.events()]
            return reasons if reason in reasons else None

        return wait_until(posted, timeout, f"a {reason} Event")

    def jobs(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.client.get(f"/apis/batch/v1/namespaces/{self.ns}/jobs")[
            "items"
        ]
        return items

    def q(self, template: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True) as conn:
            query = sql.SQL(template).format(s=sql.Identifier(self.schema))
            try:
                return conn.execute(query, params or []).fetchall()
            except psycopg.errors.UndefinedTable:
                return []


def new_schema() -> str:
    return f"e2e_{uuid.uuid4().hex[:10]}"


def register_operator_image(cluster: ClusterLike) -> None:
    """`workerfleet-operator:0.1.0` is this checkout's operator: the Deployment's own
    command (`kopf run ...`) runs with the venv on PATH."""
    cluster.images.add(
        "workerfleet-operator:0.1.0",
        Image(command=[str(VENV_BIN / "kopf")],
              env={"PATH": f"{VENV_BIN}:/usr/local/bin:/usr/bin:/bin"}),
    )  # fmt: skip
