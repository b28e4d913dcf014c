"""The pods and Jobs the operator creates, from the spec alone."""

from __future__ import annotations

from typing import Any

import pytest

from workerfleet_operator.builders import migration_job, revision, worker_args, worker_pod
from workerfleet_operator.models import WorkerFleetSpec

TEMPLATE: dict[str, Any] = {
    "imagePullSecrets": [{"name": "registry"}],
    "serviceAccountName": "shop-worker",
    "securityContext": {"runAsUser": 10001, "fsGroup": 10001},
    "containerSecurityContext": {"readOnlyRootFilesystem": True},
    "nodeSelector": {"pool": "workers"},
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "jobs"}],
    "affinity": {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": []}},
    "resources": {"limits": {"memory": "256Mi"}},
    "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
    "priorityClassName": "batch",
}


def spec(**overrides: Any) -> WorkerFleetSpec:
    data: dict[str, Any] = {
        "version": "2",
        "image": "registry.example.com/shop",
        "database": {"secretRef": {"name": "db"}},
        "app": "shop.tasks",
        "template": TEMPLATE,
    }
    data.update(overrides)
    return WorkerFleetSpec.model_validate(data)


def job_pod(s: WorkerFleetSpec) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    job = migration_job("shop", "uid", s, "0123456789abcdef", "app/0002")
    pod = job["spec"]["template"]["spec"]
    return job, pod, pod["containers"][0]


def test_the_migration_job_runs_where_and_as_the_workers_do() -> None:
    """On a private registry, in a restricted namespace or on tainted nodes, a Job without
    the template's settings never starts and the fleet waits forever."""
    _, pod, container = job_pod(spec())
    assert pod["imagePullSecrets"] == [{"name": "registry"}]
    assert pod["serviceAccountName"] == "shop-worker"
    assert pod["nodeSelector"] == {"pool": "workers"}
    assert pod["tolerations"] == TEMPLATE["tolerations"]
    assert pod["affinity"] == TEMPLATE["affinity"]
    assert pod["priorityClassName"] == "batch"
    assert pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"] == {"limits": {"memory": "256Mi"}}
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in container["env"]


def test_the_migration_job_has_a_deadline_and_a_retry_limit() -> None:
    job, _, _ = job_pod(spec())
    assert job["spec"]["activeDeadlineSeconds"] == 1800
    assert job["spec"]["backoffLimit"] == 1
    job, _, _ = job_pod(spec(migrationJob={"activeDeadlineSeconds": 7200, "backoffLimit": 3}))
    assert job["spec"]["activeDeadlineSeconds"] == 7200
    assert job["spec"]["backoffLimit"] == 3


def test_pods_are_locked_down_unless_the_template_says_otherwise() -> None:
    bare = spec(template={})
    pods = [
        worker_pod("shop", "uid", bare, "0123456789abcdef", "shop")["spec"],
        job_pod(bare)[1],
    ]
    for pod in pods:
        assert pod["securityContext"] == {
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        }
        assert pod["automountServiceAccountToken"] is False
        assert pod["containers"][0]["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        }
    # What the template sets is kept, over the defaults it names.
    custom = spec(
        template={
            "securityContext": {"runAsNonRoot": False, "runAsUser": 0},
            "containerSecurityContext": {"capabilities": {"drop": ["NET_RAW"]}},
            "automountServiceAccountToken": True,
        }
    )
    pod = worker_pod("shop", "uid", custom, "0123456789abcdef", "shop")["spec"]
    assert pod["securityContext"]["runAsUser"] == 0 and not pod["securityContext"]["runAsNonRoot"]
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["NET_RAW"]},
    }
    assert pod["automountServiceAccountToken"] is True


def test_numeric_quantities_become_strings() -> None:
    """YAML users write `cpu: 1` (int-or-string in Kubernetes); the client wants strings."""
    s = spec(template={"resources": {"limits": {"cpu": 1, "memory": "64Mi"},
                                     "requests": {"cpu": 0.5}}})  # fmt: skip
    container = worker_pod("shop", "uid", s, "0123456789abcdef", "shop")["spec"]["containers"][0]
    assert container["resources"] == {"limits": {"cpu": "1", "memory": "64Mi"},
                                      "requests": {"cpu": "0.5"}}  # fmt: skip


@pytest.mark.parametrize(
    ("field", "unset", "value", "flag"),
    [
        ("localQueueSize", 0, 500, "--local-queue-size"),
        ("keepHistory", None, "168h", "--keep-history"),
    ],
)
def test_an_optional_worker_setting_reaches_the_worker_only_when_set(
    field: str, unset: object, value: object, flag: str
) -> None:
    """Unset, the pods are what they were before the field existed, so an operator upgrade
    does not change every fleet's revision and roll all their pods."""
    default = spec()
    assert flag not in worker_args("shop", default, "ns")
    args = worker_args("shop", spec(**{field: value}), "ns")
    assert args[args.index(flag) + 1] == str(value)
    assert revision("shop", spec(**{field: unset}), "ns") == revision("shop", default, "ns")
    assert revision("shop", spec(**{field: value}), "ns") != revision("shop", default, "ns")
