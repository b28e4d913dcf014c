"""deploy/ and crds/: every manifest parses, RBAC is exactly the least-privilege set, the
operator Deployment is locked down, and the example fleet is valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from fleet_worker.durations import parse_duration
from tests.unit.openapi_subset import apply_defaults, validate
from workerfleet_dev.deploy import kustomize_objects
from workerfleet_operator import crdgen
from workerfleet_operator.models import GROUP, PLURAL, VERSION, WorkerFleetSpec

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CRDS = ROOT / "crds"
NAMESPACE = "workerfleet-system"
SERVICE_ACCOUNT = "workerfleet-operator"

# The operator's whole reach into the cluster. Changing this set is a security decision:
# update it here together with deploy/rbac.yaml, and say why in the change.
EXPECTED_RULES: set[tuple[str, str, frozenset[str]]] = {
    (GROUP, PLURAL, frozenset({"get", "list", "watch", "patch", "update"})),
    (GROUP, f"{PLURAL}/status", frozenset({"get", "patch", "update"})),
    ("", "pods", frozenset({"get", "list", "watch", "create", "delete"})),
    ("batch", "jobs", frozenset({"get", "list", "watch", "create", "delete"})),
    ("", "secrets", frozenset({"get"})),
    ("", "events", frozenset({"create", "patch", "list"})),
    ("events.k8s.io", "events", frozenset({"create", "patch"})),
    ("apiextensions.k8s.io", "customresourcedefinitions", frozenset({"get", "list", "watch"})),
}


def _yaml_files() -> list[Path]:
    """Plain manifests; the Helm chart's templates are Go templates, tested through helm
    (tests/unit/test_helm_chart.py)."""
    files = [*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), *CRDS.rglob("*.yaml")]
    # The alert rules are a Prometheus rule file (tests/unit/test_monitoring.py); the
    # PrometheusRule object made of them is a manifest like the others.
    rule_file = DEPLOY / "monitoring" / "alerts.yaml"
    return sorted(f for f in files if DEPLOY / "helm" not in f.parents and f != rule_file)


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _objects(directory: Path) -> dict[tuple[str, str], dict[str, Any]]:
    return {(o["kind"], o["metadata"]["name"]): o for o in kustomize_objects(directory)}


@pytest.fixture(scope="module")
def base() -> dict[tuple[str, str], dict[str, Any]]:
    return _objects(DEPLOY)


@pytest.fixture(scope="module")
def example() -> dict[tuple[str, str], dict[str, Any]]:
    return _objects(DEPLOY / "example")


def test_every_yaml_file_parses_into_kubernetes_objects() -> None:
    files = _yaml_files()
    assert len(files) >= 9, files
    for path in files:
        docs = _docs(path)
        assert docs, f"{path} is empty"
        for doc in docs:
            assert {"apiVersion", "kind"} <= doc.keys(), path
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path


def test_every_manifest_is_part_of_a_kustomization() -> None:
    """A file nobody includes is a file nobody applies."""
    included: set[Path] = set()
    for kustomization in [*DEPLOY.rglob("kustomization.yaml"), CRDS / "kustomization.yaml"]:
        for entry in yaml.safe_load(kustomization.read_text())["resources"]:
            target = (kustomization.parent / entry).resolve()
            included |= {target / "kustomization.yaml"} if target.is_dir() else {target}
    for path in _yaml_files():
        # deploy/argocd patches Argo CD's own ConfigMap, in Argo CD's namespace: not ours.
        if path.name != "kustomization.yaml" and DEPLOY / "argocd" not in path.parents:
            assert path.resolve() in included, f"{path} is in no kustomization"


def test_base_holds_crd_namespace_rbac_and_operator(
    base: dict[tuple[str, str], dict[str, Any]],
) -> None:
    assert set(base) == {
        ("CustomResourceDefinition", f"{PLURAL}.{GROUP}"),
        ("Namespace", NAMESPACE),
        ("ServiceAccount", SERVICE_ACCOUNT),
        ("ClusterRole", "workerfleet-operator"),
        ("ClusterRoleBinding", "workerfleet-operator"),
        ("Role", "workerfleet-operator-leader-election"),
        ("RoleBinding", "workerfleet-operator-leader-election"),
        ("Deployment", "workerfleet-operator"),
    }
    # The base ships the generated CRD itself, not a copy.
    assert base[("CustomResourceDefinition", f"{PLURAL}.{GROUP}")] == crdgen.build_crd()
    for (kind, name), obj in base.items():
        if kind in {"ServiceAccount", "Deployment"}:
            assert obj["metadata"]["namespace"] == NAMESPACE, (kind, name)


def test_rbac_is_exactly_the_least_privilege_set(
    base: dict[tuple[str, str], dict[str, Any]],
) -> None:
    role = base[("ClusterRole", "workerfleet-operator")]
    granted: set[tuple[str, str, frozenset[str]]] = set()
    for rule in role["rules"]:
        # No wildcards, no resourceNames tricks, no non-resource URLs: each grant is explicit.
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"], rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.add((group, resource, frozenset(rule["verbs"])))
    assert granted == EXPECTED_RULES
    assert len(granted) == len(role["rules"]), "one rule per (group, resource), no duplicates"


def _grants(role: dict[str, Any]) -> set[tuple[str, str, frozenset[str]]]:
    return {
        (group, resource, frozenset(rule["verbs"]))
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
    }


@pytest.fixture(scope="module")
def namespaced() -> dict[tuple[str, str], dict[str, Any]]:
    return _objects(DEPLOY / "namespaced")


def test_namespaced_install_grants_the_same_rules_in_one_namespace(
    base: dict[tuple[str, str], dict[str, Any]],
    namespaced: dict[tuple[str, str], dict[str, Any]],
) -> None:
    watched = "workerfleet-apps"
    assert set(namespaced) == {
        ("CustomResourceDefinition", f"{PLURAL}.{GROUP}"),
        ("Namespace", NAMESPACE),
        ("Namespace", watched),
        ("ServiceAccount", SERVICE_ACCOUNT),
        ("Role", "workerfleet-operator"),
        ("RoleBinding", "workerfleet-operator"),
        ("ClusterRole", "workerfleet-operator-crds"),
        ("ClusterRoleBinding", "workerfleet-operator-crds"),
        ("Role", "workerfleet-operator-leader-election"),
        ("RoleBinding", "workerfleet-operator-leader-election"),
        ("Deployment", "workerfleet-operator"),
    }
    crds = (
        "apiextensions.k8s.io",
        "customresourcedefinitions",
        frozenset({"get", "list", "watch"}),
    )
    role = namespaced[("Role", "workerfleet-operator")]
    assert role["metadata"]["namespace"] == watched
    assert _grants(role) == EXPECTED_RULES - {crds}
    # Cluster-wide, only what Kopf needs to discover resources: reading CRDs.
    assert _grants(namespaced[("ClusterRole", "workerfleet-operator-crds")]) == {crds}
    binding = namespaced[("RoleBinding", "workerfleet-operator")]
    assert binding["metadata"]["namespace"] == watched
    assert binding["roleRef"]["kind"] == "Role"
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
    ]
    # The same operator Deployment, told to watch that namespace only: the two cannot drift.
    same = base[("Deployment", "workerfleet-operator")]
    confined = namespaced[("Deployment", "workerfleet-operator")]
    [container] = confined["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert "--all-namespaces" not in command and f"--namespace={watched}" in command
    expected = yaml.safe_load(
        yaml.safe_dump(same).replace("--all-namespaces", f"--namespace={watched}")
    )
    assert confined == expected


def test_binding_gives_the_role_to_the_operator_service_account(
    base: dict[tuple[str, str], dict[str, Any]],
) -> None:
    binding = base[("ClusterRoleBinding", "workerfleet-operator")]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": "workerfleet-operator",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
    ]


def test_operator_deployment(base: dict[tuple[str, str], dict[str, Any]]) -> None:
    deployment = base[("Deployment", "workerfleet-operator")]
    spec = deployment["spec"]
    # Replicas take turns on a Lease, so a rolling update may overlap them.
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "RollingUpdate"
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items()
    assert pod["serviceAccountName"] == SERVICE_ACCOUNT
    assert pod["securityContext"]["runAsNonRoot"] is True
    [container] = pod["containers"]
    assert container["image"] == "workerfleet-operator:0.1.0"
    command = container["command"]
    assert command[:2] == ["kopf", "run"]
    assert {"--standalone", "--all-namespaces"} <= set(command)
    assert command[command.index("-m") + 1] == "workerfleet_operator.handlers"
    assert "--liveness=http://0.0.0.0:8081/healthz" in command
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["metrics"] == 9090
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert ports.get(probe["port"], probe["port"]) == 8081
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    resources = container["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]
    # Database access is per fleet, from the fleet's Secret: nothing global here.
    env = {e["name"]: e for e in container.get("env", [])}
    assert not {n for n in env if "DATABASE" in n or n.startswith("PG")}
    # Metrics listen on the pod address, or Prometheus could not reach them.
    assert env["POD_IP"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # Leader election: the Lease in the pod's namespace, the pod's name as identity.
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_leader_election_may_touch_leases_in_its_namespace_only(
    base: dict[tuple[str, str], dict[str, Any]],
    namespaced: dict[tuple[str, str], dict[str, Any]],
) -> None:
    for install in (base, namespaced):
        role = install[("Role", "workerfleet-operator-leader-election")]
        assert role["metadata"]["namespace"] == NAMESPACE
        assert _grants(role) == {
            ("coordination.k8s.io", "leases", frozenset({"get", "create", "update"}))
        }
        binding = install[("RoleBinding", "workerfleet-operator-leader-election")]
        assert binding["roleRef"]["name"] == "workerfleet-operator-leader-election"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}
        ]


def test_operator_image_entrypoint_matches_the_deployment(
    base: dict[tuple[str, str], dict[str, Any]],
) -> None:
    dockerfile = (ROOT / "operator" / "Dockerfile").read_text()
    [container] = base[("Deployment", "workerfleet-operator")]["spec"]["template"]["spec"][
        "containers"
    ]
    entrypoint = next(
        line
        for line in dockerfile.replace("\\\n", " ").splitlines()
        if line.startswith("ENTRYPOINT")
    )
    assert yaml.safe_load(entrypoint.removeprefix("ENTRYPOINT")) == container["command"]
    assert "USER 10001" in dockerfile
    assert '"workerfleet[operator]"' in dockerfile


def test_example_fleet_secret_and_namespace(example: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert set(example) == {
        ("Namespace", "demo"),
        ("Secret", "demo-db"),
        ("WorkerFleet", "demo"),
    }
    fleet = example[("WorkerFleet", "demo")]
    secret = example[("Secret", "demo-db")]
    assert fleet["apiVersion"] == f"{GROUP}/{VERSION}"
    assert fleet["metadata"]["namespace"] == secret["metadata"]["namespace"] == "demo"
    spec = WorkerFleetSpec.model_validate(fleet["spec"])
    assert spec.version == "1"
    assert spec.image_ref == "workerfleet/demo-app:1"
    assert spec.app == "workerfleet_demo.app"
    assert spec.replicas == 3
    ref = spec.database.secret_ref
    assert ref.name == secret["metadata"]["name"]
    assert secret["stringData"][ref.key].startswith("postgresql://")


def test_example_fleet_passes_the_crd_schema_and_its_cel_rules(
    example: dict[tuple[str, str], dict[str, Any]],
) -> None:
    root = crdgen.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    fleet = apply_defaults(example[("WorkerFleet", "demo")], root)
    assert validate(fleet, root) == []
    spec = fleet["spec"]
    # The CEL rules, evaluated by hand on the defaulted object (the API server runs the real
    # ones; tests/e2e applies this fleet).
    assert parse_duration(spec["sweepThreshold"]) >= 2 * parse_duration(spec["heartbeatInterval"])
    assert spec["rollout"]["maxSurge"] > 0 or spec["rollout"]["maxUnavailable"] > 0


def test_only_a_namespaced_operator_turns_kopf_scanning_off() -> None:
    """Confined to named namespaces, Kopf must not try to list all of them (the namespaced
    RBAC forbids it, and Kopf retried for a minute before acting); cluster-wide it keeps
    scanning, so a CRD installed after the operator is still found."""
    from workerfleet_operator.handlers import confined_to_namespaces

    namespaced = _objects(DEPLOY / "namespaced")[("Deployment", "workerfleet-operator")]
    cluster_wide = _objects(DEPLOY)[("Deployment", "workerfleet-operator")]
    for deployment, confined in ((namespaced, True), (cluster_wide, False)):
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert confined_to_namespaces(container["command"]) is confined
    assert confined_to_namespaces(["kopf", "run", "-n", "a", "-m", "x"])
    assert not confined_to_namespaces(["kopf", "run", "-A", "-m", "x"])
