"""The local cluster against real etcd/kube-apiserver/kube-controller-manager processes."""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from datetime import datetime
from itertools import pairwise
from pathlib import Path

import pytest
import urllib3
from kubernetes import client as kclient
from kubernetes import config as kconfig
from kubernetes.client.exceptions import ApiException

from localcluster.bins import K8S_VERSION
from localcluster.cluster import Cluster
from localcluster.kube import ApiError, Client, Obj
from workerfleet_dev.harness import wait_for

pytestmark = pytest.mark.e2e

IMAGES = Path(__file__).parent / "images"


def pod(k8s: Client, ns: str, name: str) -> Obj:
    return k8s.get(f"/api/v1/namespaces/{ns}/pods/{name}")


def wait_pod(
    k8s: Client, ns: str, name: str, pred: Callable[[Obj], bool], *, timeout: float = 20.0
) -> Obj:
    """Poll a pod until pred holds; returns the pod as it was then."""
    seen: list[Obj] = []

    def check() -> bool:
        p = pod(k8s, ns, name)
        seen.append(p)
        return pred(p)

    try:
        wait_for(check, timeout, what=f"{ns}/{name}: {getattr(pred, '__name__', 'condition')}")
    except AssertionError as e:
        raise AssertionError(f"{e}; last status: {json.dumps(seen[-1].get('status'))}") from None
    return seen[-1]


def ready(p: Obj) -> bool:
    conds = (p.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def rfc3339(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may linger until init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def gone(k8s: Client, path: str) -> bool:
    try:
        k8s.get(path)
    except ApiError as e:
        return e.status == 404
    return False


def web_pod(name: str, **extra_spec: object) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": name}},
        "spec": {
            "terminationGracePeriodSeconds": 5,
            "containers": [
                {
                    "name": "web",
                    "image": "localcluster.test/web:1.0",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [
                        {"name": "PORT", "value": "8080"},
                        {
                            "name": "POD_IP",
                            "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}},
                        },
                        {
                            "name": "POD_NAME",
                            "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}},
                        },
                    ],
                    "readinessProbe": {
                        "httpGet": {"path": "/healthz", "port": "http"},
                        "periodSeconds": 1,
                    },
                }
            ],
            **extra_spec,
        },
    }


def http_get(ip: str, path: str) -> str:
    with urllib.request.urlopen(f"http://{ip}:8080{path}", timeout=5) as resp:
        return str(resp.read().decode())


def test_control_plane_serves_crds_with_tls_and_rbac(
    local_cluster: Cluster, k8s_client: Client
) -> None:
    k8s = k8s_client
    assert k8s.get("/version")["gitVersion"] == K8S_VERSION
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.e2e.workerfleet.dev"},
        "spec": {
            "group": "e2e.workerfleet.dev",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer"}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    k8s.create("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)

    def established() -> bool:
        obj = k8s.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/" + crd_name)
        conds = obj.get("status", {}).get("conditions") or []
        return any(c["type"] == "Established" and c["status"] == "True" for c in conds)

    crd_name = "widgets.e2e.workerfleet.dev"
    wait_for(established, 30, what="CRD Established")
    base = "/apis/e2e.workerfleet.dev/v1/namespaces/default/widgets"
    rv = wait_for(lambda: k8s.get(base)["metadata"]["resourceVersion"], 30, what="CRD served")
    k8s.create(base, {"apiVersion": "e2e.workerfleet.dev/v1", "kind": "Widget",
                      "metadata": {"name": "w1"}, "spec": {"size": 3}})  # fmt: skip
    events = k8s.watch(base, rv, timeout_s=10)
    first = next(events)
    assert first["type"] == "ADDED"
    assert first["object"]["metadata"]["name"] == "w1"
    assert first["object"]["spec"] == {"size": 3}

    # RBAC: without a client certificate you are system:anonymous and may do nothing; a
    # service account without bindings may not read secrets either.
    assert local_cluster.control_plane.pki is not None
    ca = str(local_cluster.control_plane.pki.ca.cert)
    anon = urllib3.PoolManager(ssl_context=ssl.create_default_context(cafile=ca))
    resp = anon.request("GET", local_cluster.control_plane.server + "/api/v1/secrets")
    assert (resp.status, "system:anonymous" in resp.data.decode()) == (403, True)
    token = k8s.create(
        "/api/v1/namespaces/default/serviceaccounts/default/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )["status"]["token"]
    resp = anon.request(
        "GET",
        local_cluster.control_plane.server + "/api/v1/secrets",
        headers={"Authorization": f"Bearer {token}"},
    )
    assert resp.status == 403
    assert "system:serviceaccount:default:default" in resp.data.decode()


def test_pod_probe_env_secrets_sigterm(
    local_cluster: Cluster, k8s_client: Client, kube_namespace: str
) -> None:
    k8s, ns = k8s_client, kube_namespace
    k8s.create(f"/api/v1/namespaces/{ns}/secrets", {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
        "stringData": {"password": "s3cret"},
    })  # fmt: skip
    k8s.create(f"/api/v1/namespaces/{ns}/configmaps", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
        "data": {"MODE": "fast", "LEVEL": "3"},
    })  # fmt: skip
    rbac = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}"
    k8s.create(f"/api/v1/namespaces/{ns}/serviceaccounts", {
        "apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "reader"},
    })  # fmt: skip
    k8s.create(f"{rbac}/roles", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "pod-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
    })  # fmt: skip
    k8s.create(f"{rbac}/rolebindings", {
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": "reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}],
    })  # fmt: skip
    spec = web_pod("web", serviceAccountName="reader")
    container = spec["spec"]["containers"][0]
    container["env"] += [
        {"name": "READY_AFTER", "value": "1.5"},
        {
            "name": "DB_PASSWORD",
            "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}},
        },
        {"name": "GREETING", "value": "hello $(POD_NAME)"},
        {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
    ]
    container["envFrom"] = [{"configMapRef": {"name": "settings"}, "prefix": "CFG_"}]

    t0 = time.monotonic()
    created = k8s.create(f"/api/v1/namespaces/{ns}/pods", spec)
    p = wait_pod(k8s, ns, "web", ready)
    # The app answers 503 for its first 1.5 s, so Ready must come after that, not at start.
    started = p["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    ready_at = next(c for c in p["status"]["conditions"] if c["type"] == "Ready")
    assert rfc3339(ready_at["lastTransitionTime"]) - rfc3339(started) >= 1
    print(f"pod creation to Ready: {time.monotonic() - t0:.2f}s (app warms up 1.5s)")

    ip = p["status"]["podIP"]
    assert ip.startswith("127.") and ip != "127.0.0.1"
    env = json.loads(http_get(ip, "/env"))
    assert env["POD_IP"] == ip
    assert env["POD_NAME"] == "web"
    assert env["NS"] == ns
    assert env["NODE"] == p["spec"]["nodeName"] == "localnode-0"
    assert env["UID"] == created["metadata"]["uid"]
    assert env["DB_PASSWORD"] == "s3cret"
    assert env["GREETING"] == "hello web"
    assert (env["CFG_MODE"], env["CFG_LEVEL"]) == ("fast", "3")

    # The in-cluster identity: the process gets KUBECONFIG with a bound token for its service
    # account (plus the standard token/ca.crt/namespace files); the kubernetes client loads
    # it and acts under that account's RBAC, which is how the operator will run as a pod.
    sa_dir = Path(env["LOCALCLUSTER_SERVICEACCOUNT_DIR"])
    assert (sa_dir / "namespace").read_text() == ns
    kubeconfig = json.loads(Path(env["KUBECONFIG"]).read_text())
    assert kubeconfig["users"][0]["user"]["token"] == (sa_dir / "token").read_text()
    assert kubeconfig["clusters"][0]["cluster"]["server"] == (
        f"https://{env['KUBERNETES_SERVICE_HOST']}:{env['KUBERNETES_SERVICE_PORT']}"
    )
    api = kclient.CoreV1Api(kconfig.new_client_from_config(config_file=env["KUBECONFIG"]))  # type: ignore[no-untyped-call]
    own = api.read_namespaced_pod("web", ns)
    assert own.status is not None and own.status.pod_ip == ip
    with pytest.raises(ApiException) as denied:
        api.list_namespaced_secret(ns)
    assert denied.value.status == 403
    assert f"system:serviceaccount:{ns}:reader" in str(denied.value.body)

    pid = int(p["status"]["containerStatuses"][0]["containerID"].removeprefix("localcluster://"))
    log_path = local_cluster.agent.log_path(ns, "web")
    t1 = time.monotonic()
    k8s.delete(f"/api/v1/namespaces/{ns}/pods/web")
    wait_for(lambda: gone(k8s, f"/api/v1/namespaces/{ns}/pods/web"), 15, what="pod removed")
    took = time.monotonic() - t1
    # Far below the 30 s grace that a process ignoring SIGTERM would be given.
    assert took < 15, f"pod removal took {took:.1f}s; the app exits at once on SIGTERM"
    assert not running(pid)
    logs = log_path.read_text()
    assert "got SIGTERM" in logs
    assert "exited cleanly" in logs


def test_sigkill_after_grace_period(k8s_client: Client, kube_namespace: str) -> None:
    k8s, ns = k8s_client, kube_namespace
    ignore_term = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
    )
    spec = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "stubborn"},
        "spec": {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "c",
                    "image": "localcluster.test/sleep",
                    "command": [sys.executable, "-c", ignore_term],
                }
            ],
        },
    }
    k8s.create(f"/api/v1/namespaces/{ns}/pods", spec)
    wait_for(lambda: ready(pod(k8s, ns, "stubborn")), 20, what="pod Ready")
    t0 = time.monotonic()
    k8s.delete(f"/api/v1/namespaces/{ns}/pods/stubborn")
    wait_for(lambda: gone(k8s, f"/api/v1/namespaces/{ns}/pods/stubborn"), 15, what="pod removed")
    took = time.monotonic() - t0
    assert 1.8 <= took < 12, f"SIGTERM is ignored, so removal waits the 2s grace; took {took:.1f}s"


def test_crashing_container_backs_off(k8s_client: Client, kube_namespace: str) -> None:
    k8s, ns = k8s_client, kube_namespace
    k8s.create(f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crasher"},
        "spec": {"containers": [{"name": "c", "image": "localcluster.test/crash"}]},
    })  # fmt: skip
    seen_backoff = False
    restart_times: dict[int, float] = {}
    delays: dict[float, None] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = pod(k8s, ns, "crasher").get("status", {}).get("containerStatuses") or []
        if status:
            cs = status[0]
            restart_times.setdefault(cs["restartCount"], time.monotonic())
            waiting = cs["state"].get("waiting", {})
            seen_backoff |= waiting.get("reason") == "CrashLoopBackOff"
            if m := re.match(r"back-off ([\d.]+)s restarting", waiting.get("message", "")):
                delays.setdefault(float(m[1]), None)  # in the order seen
            if cs["restartCount"] >= 4 and seen_backoff:
                assert cs["lastState"]["terminated"]["exitCode"] == 3
                assert cs["lastState"]["terminated"]["reason"] == "Error"
                break
        time.sleep(0.1)
    else:
        raise AssertionError(f"no crash loop: restarts seen at {restart_times}")
    assert pod(k8s, ns, "crasher")["status"]["phase"] == "Running"
    # Back-off doubles (1s, 2s, 4s with the test fixture's settings), as the agent reports it
    # (wall-clock gaps between restarts would also measure this machine's load). A poll may
    # miss a short state, so a seen delay is at least double the one seen before it.
    seen = list(delays)
    assert len(seen) >= 2 and all(b in (2 * a, 4 * a) for a, b in pairwise(seen)), seen


def test_unknown_image_is_reported(k8s_client: Client, kube_namespace: str) -> None:
    k8s, ns = k8s_client, kube_namespace
    k8s.create(f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nope"},
        "spec": {"containers": [{"name": "c", "image": "example.com/not-in-table:1"}]},
    })  # fmt: skip

    def image_pull_error(p: Obj) -> bool:
        statuses = p.get("status", {}).get("containerStatuses") or []
        return bool(statuses) and statuses[0]["state"].get("waiting", {}).get("reason") == (
            "ErrImagePull"
        )

    p = wait_pod(k8s, ns, "nope", image_pull_error, timeout=15)
    w = p["status"]["containerStatuses"][0]["state"]["waiting"]
    assert "example.com/not-in-table:1" in w["message"]
    assert pod(k8s, ns, "nope")["status"]["phase"] == "Pending"


def test_job_runs_to_completion(
    local_cluster: Cluster, k8s_client: Client, kube_namespace: str
) -> None:
    k8s, ns = k8s_client, kube_namespace
    k8s.create(f"/apis/batch/v1/namespaces/{ns}/jobs", {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "once"},
        "spec": {"completions": 2, "parallelism": 2, "backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": "localcluster.test/job"}],
        }}},
    })  # fmt: skip

    def complete() -> Obj | None:
        job = k8s.get(f"/apis/batch/v1/namespaces/{ns}/jobs/once")
        conds = job.get("status", {}).get("conditions") or []
        done = any(c["type"] == "Complete" and c["status"] == "True" for c in conds)
        return job if done else None

    job = wait_for(complete, 30, what="Job Complete")
    assert job["status"]["succeeded"] == 2
    pods = k8s.get(
        f"/api/v1/namespaces/{ns}/pods",
    )["items"]
    assert len(pods) == 2
    for p in pods:
        assert p["status"]["phase"] == "Succeeded"
        term = p["status"]["containerStatuses"][0]["state"]["terminated"]
        assert (term["exitCode"], term["reason"]) == (0, "Completed")
        name = p["metadata"]["name"]
        assert f"job pod {name} done" in local_cluster.agent.logs(ns, name)


def test_deleting_owner_garbage_collects_pods(k8s_client: Client, kube_namespace: str) -> None:
    k8s, ns = k8s_client, kube_namespace
    k8s.create(f"/apis/apps/v1/namespaces/{ns}/deployments", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sleepers"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "sleepers"}},
                 "template": {"metadata": {"labels": {"app": "sleepers"}}, "spec": {
                     "containers": [{"name": "s", "image": "localcluster.test/sleep"}]}}},
    })  # fmt: skip

    def pods() -> list[Obj]:
        items: list[Obj] = k8s.get(f"/api/v1/namespaces/{ns}/pods")["items"]
        return items

    wait_for(
        lambda: len(pods()) == 2 and all(ready(p) for p in pods()), 30, what="2 ready replicas"
    )
    deploy = k8s.get(f"/apis/apps/v1/namespaces/{ns}/deployments/sleepers")
    assert deploy["status"].get("readyReplicas") == 2 or wait_for(
        lambda: (
            k8s.get(f"/apis/apps/v1/namespaces/{ns}/deployments/sleepers")["status"].get(
                "readyReplicas"
            )
            == 2
        ),
        15,
        what="deployment readyReplicas",
    )
    pids = [
        int(p["status"]["containerStatuses"][0]["containerID"].removeprefix("localcluster://"))
        for p in pods()
    ]
    k8s.delete(
        f"/apis/apps/v1/namespaces/{ns}/deployments/sleepers",
        {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"},
    )
    wait_for(lambda: not pods(), 30, what="pods garbage-collected")
    assert not k8s.get(f"/apis/apps/v1/namespaces/{ns}/replicasets")["items"]
    assert not any(running(pid) for pid in pids)


def test_same_port_on_different_loopback_addresses(k8s_client: Client, kube_namespace: str) -> None:
    k8s, ns = k8s_client, kube_namespace
    for name in ("left", "right"):
        k8s.create(f"/api/v1/namespaces/{ns}/pods", web_pod(name))
    ips = {}
    for name in ("left", "right"):
        p = wait_pod(k8s, ns, name, ready)
        ips[name] = p["status"]["podIP"]
    assert ips["left"] != ips["right"]
    for name, ip in ips.items():
        assert http_get(ip, "/") == name


def test_cli_up_kubeconfig_down(tmp_path: Path) -> None:
    """The CLI the demo uses: the real `kubernetes` client talks to it; down leaves nothing."""
    state = tmp_path / "state"
    cli = [sys.executable, "-m", "localcluster", "--state-dir", str(state)]
    env = dict(os.environ)
    up = subprocess.run(
        [*cli, "up", "--images", str(IMAGES / "images.yaml")],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    try:
        kubeconfig = subprocess.run(
            [*cli, "kubeconfig"], capture_output=True, text=True, check=True, env=env
        ).stdout.strip()
        assert kubeconfig == up.stdout.strip()
        api = kclient.CoreV1Api(kconfig.new_client_from_config(config_file=kubeconfig))  # type: ignore[no-untyped-call]
        nodes = api.list_node().items
        assert [n.metadata.name for n in nodes if n.metadata] == ["localnode-0"]
        status = nodes[0].status
        assert status is not None and status.conditions
        assert any(c.type == "Ready" and c.status == "True" for c in status.conditions)
        recorded = json.loads((state / "state.json").read_text())
        pids = [recorded["pid"], *recorded["processes"].values()]
        assert len(pids) == 4
    finally:
        down = subprocess.run([*cli, "down"], capture_output=True, text=True, env=env, check=False)
    assert down.returncode == 0, down.stderr
    assert not any(running(pid) for pid in pids)
    assert not (state / "state.json").exists()


def test_init_container_exec_probe_and_liveness_restart(
    local_cluster: Cluster, k8s_client: Client, kube_namespace: str
) -> None:
    """Init containers run first; an exec readiness probe gates Ready; a failing liveness
    probe gets the container killed and restarted."""
    k8s, ns = k8s_client, kube_namespace
    # HOME is the pod's own directory, shared by its containers (and its probes).
    k8s.create(f"/api/v1/namespaces/{ns}/pods", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probed"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "initContainers": [{
                "name": "init", "image": "localcluster.test/sleep",
                "command": ["/bin/sh", "-c", "echo init ran; touch $HOME/initialized"],
            }],
            "containers": [{
                "name": "main", "image": "localcluster.test/sleep",
                # Healthy for two seconds, then it marks itself dead.
                "command": ["/bin/sh", "-c", "test -f $HOME/initialized && echo saw init; "
                            "rm -f $HOME/dead; (sleep 2; touch $HOME/dead) & exec sleep 600"],
                "readinessProbe": {"exec": {"command": ["test", "-f", "$(MARKER)"]},
                                   "periodSeconds": 1},
                "livenessProbe": {"exec": {"command": ["/bin/sh", "-c", "test ! -f $HOME/dead"]},
                                  "periodSeconds": 1, "failureThreshold": 2},
                "env": [{"name": "MARKER", "value": "$(HOME)/initialized"}],
            }],
        },
    })  # fmt: skip
    p = wait_pod(k8s, ns, "probed", ready)
    assert p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
    assert "init ran" in local_cluster.agent.logs(ns, "probed", "init")
    assert "saw init" in local_cluster.agent.logs(ns, "probed", "main")

    def restarted(p: Obj) -> bool:
        return bool(p["status"]["containerStatuses"][0]["restartCount"] >= 1)

    p = wait_pod(k8s, ns, "probed", restarted, timeout=20)
    last = p["status"]["containerStatuses"][0]["lastState"]["terminated"]
    assert last["exitCode"] == 143  # SIGTERM, as a container runtime reports it
    assert "liveness probe failed" in last["message"]
