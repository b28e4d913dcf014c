"""`kubectl apply -k deploy/` without kubectl: the e2e suite and the demo install the
operator from the same manifests a user applies."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from localcluster.kube import ApiError, Client
from workerfleet_dev.harness import WaitTimeout, wait_for

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "workerfleet-system"
DEPLOYMENT = f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/workerfleet-operator"
WATCHED_PLACEHOLDER = "workerfleet-apps"  # deploy/namespaced/'s watched namespace
_PATHS = {
    "Namespace": "/api/v1/namespaces",
    "ServiceAccount": "/api/v1/namespaces/{ns}/serviceaccounts",
    "ClusterRole": "/apis/rbac.authorization.k8s.io/v1/clusterroles",
    "ClusterRoleBinding": "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
    "Role": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles",
    "RoleBinding": "/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings",
    "Deployment": "/apis/apps/v1/namespaces/{ns}/deployments",
}


def kustomize_objects(directory: Path) -> Iterator[dict[str, Any]]:
    """The objects `kubectl apply -k directory` creates: our kustomizations only list
    resources (no patches or transformers), so reading them in order is exact."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    for entry in kustomization["resources"]:
        target = (directory / entry).resolve()
        if target.is_dir():
            yield from kustomize_objects(target)
        else:
            # kustomize refuses plain files outside the kustomization root.
            if not target.is_relative_to(directory.resolve()):
                raise ValueError(f"{directory}: {entry} is outside the kustomization root")
            yield from (d for d in yaml.safe_load_all(target.read_text()) if d is not None)


def apply_deploy(client: Client, directory: str = "deploy", watched: str | None = None) -> None:
    """Create what the kustomization lists (the CRD is installed separately). For
    deploy/namespaced, `watched` replaces its placeholder namespace, as a user edits it."""
    for raw in kustomize_objects(ROOT / directory):
        if raw["kind"] == "CustomResourceDefinition":
            continue
        text = json.dumps(raw)
        obj = json.loads(text if watched is None else text.replace(WATCHED_PLACEHOLDER, watched))
        path = _PATHS[obj["kind"]].format(ns=obj["metadata"].get("namespace", ""))
        try:
            client.create(path, obj)
        except ApiError as exc:
            if exc.status != 409:
                raise


def operator_pods(client: Client) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = client.get(f"/api/v1/namespaces/{NAMESPACE}/pods")["items"]
    return [p for p in items if p["spec"].get("serviceAccountName") == "workerfleet-operator"]


def operator_ready(client: Client) -> bool:
    return any(
        any(c["type"] == "Ready" and c["status"] == "True"
            for c in (p.get("status") or {}).get("conditions", []))
        for p in operator_pods(client)
    )  # fmt: skip


def wait_operator_ready(client: Client, timeout: float = 120) -> None:
    try:
        wait_for(lambda: operator_ready(client), timeout, 0.5, "the operator pod Ready")
    except WaitTimeout as exc:
        states = [(p["metadata"]["name"], p.get("status")) for p in operator_pods(client)]
        raise WaitTimeout(f"{exc}: {states}") from None
