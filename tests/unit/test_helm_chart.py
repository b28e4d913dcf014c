"""The Helm chart (deploy/helm/workerfleet-operator), with the real helm (built from the Go
module proxy): it lints, and its defaults render exactly what `kubectl apply -k deploy/`
installs (the namespaced values what deploy/namespaced/ does), so the two installs cannot
drift apart. The e2e suite installs it and rolls a fleet out under it."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from workerfleet_dev.deploy import kustomize_objects
from workerfleet_dev.gotools import HELM, ensure

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "workerfleet-operator"
NAMESPACE = "workerfleet-system"
HELM_ONLY_LABELS = {"app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart"}
NAMESPACED = ["--set", "rbac.scope=namespaced", "--set", "rbac.watchNamespaces={workerfleet-apps}"]


@pytest.fixture(scope="module")
def helm() -> Path:
    return ensure(HELM)


def run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], capture_output=True, text=True, timeout=120,
                          check=False)  # fmt: skip


def render(helm: Path, *values: str) -> list[dict[str, Any]]:
    out = run_helm(helm, "template", "wfo", str(CHART), "--namespace", NAMESPACE,
                   "--include-crds", *values)  # fmt: skip
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def keyed(objects: list[dict[str, Any]]) -> dict[tuple[str, str, str], dict[str, Any]]:
    """By kind, namespace and name; without Helm's own labels and without Namespaces
    (Helm installs into the release namespace: `--create-namespace`)."""
    out = {}
    for obj in objects:
        if obj["kind"] == "Namespace":
            continue
        labels = obj["metadata"].get("labels")
        if labels:
            for key in HELM_ONLY_LABELS:
                labels.pop(key, None)
        meta = obj["metadata"]
        out[(obj["kind"], meta.get("namespace", ""), meta["name"])] = obj
    return out


def test_the_chart_lints(helm: Path) -> None:
    for values in ([], NAMESPACED, ["--set", "metrics.podMonitor.enabled=true"]):
        out = run_helm(helm, "lint", str(CHART), "--strict", *values)
        assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize(("values", "install"), [([], "deploy"), (NAMESPACED, "deploy/namespaced")])
def test_the_defaults_render_what_kustomize_installs(
    helm: Path, values: list[str], install: str
) -> None:
    chart = keyed(render(helm, *values))
    kustomize = keyed(list(kustomize_objects(ROOT / install)))
    assert sorted(chart) == sorted(kustomize)
    for key, obj in kustomize.items():
        assert chart[key] == obj, key


def test_the_charts_crd_is_the_generated_one() -> None:
    generated = (ROOT / "crds" / "workerfleet.yaml").read_text()
    assert (CHART / "crds" / "workerfleet.yaml").read_text() == generated, "run make crds"


def test_a_wrong_scope_is_refused_with_what_to_set(helm: Path) -> None:
    out = run_helm(helm, "template", "wfo", str(CHART), "--set", "rbac.scope=everywhere")
    assert out.returncode != 0 and "rbac.scope must be cluster or namespaced" in out.stderr
    out = run_helm(helm, "template", "wfo", str(CHART), "--set", "rbac.scope=namespaced")
    assert out.returncode != 0 and "rbac.watchNamespaces" in out.stderr


def test_monitoring_objects_are_optional(helm: Path) -> None:
    kinds = {o["kind"] for o in render(helm)}
    assert not kinds & {"PodMonitor", "ServiceMonitor", "Service"}
    on = render(helm, "--set", "metrics.podMonitor.enabled=true",
                "--set", "metrics.serviceMonitor.enabled=true")  # fmt: skip
    by_kind = {o["kind"]: o for o in on}
    endpoint = by_kind["PodMonitor"]["spec"]["podMetricsEndpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
    assert by_kind["Service"]["spec"]["ports"][0]["targetPort"] == "metrics"
    assert by_kind["ServiceMonitor"]["spec"]["endpoints"][0]["port"] == "metrics"
    # Another metrics port reaches the operator, not only the container's port list.
    moved = {o["kind"]: o for o in render(helm, "--set", "metrics.port=9100")}
    container = moved["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "WORKERFLEET_METRICS_PORT", "value": "9100"} in container["env"]
