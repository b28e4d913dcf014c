"""Event aggregation against a real API server: a fleet stuck in one state posts a handful
of Event objects whose counts grow, not one object per reconcile."""

from __future__ import annotations

from collections import Counter

from kubernetes import client, config

from tests.e2e.kind_backend import ClusterLike
from workerfleet_operator.events import MAX_DISTINCT, EventRecorder, EventSender


def test_repeats_become_counts_and_similar_messages_fold(
    local_cluster: ClusterLike, kube_namespace: str
) -> None:
    api = config.new_client_from_config(str(local_cluster.kubeconfig))  # type: ignore[no-untyped-call]
    recorder = EventSender(EventRecorder(client.CoreV1Api(api)))  # as the operator posts
    post = {"namespace": kube_namespace, "name": "shop", "uid": "u-1", "type_": "Warning"}
    for _ in range(30):
        recorder.post(**post, reason="MigrationFailed", message="Job shop-migrate failed")
    for left in range(20):
        recorder.post(**post, reason="Waiting", message=f"forced in {600 - left}s")
    assert recorder.flush(30)
    recorder.close()
    items = client.CoreV1Api(api).list_namespaced_event(kube_namespace).items
    objects = Counter(e.reason for e in items)
    counts: Counter[str] = Counter()
    for e in items:
        counts[str(e.reason)] += int(e.count or 0)
    assert objects["MigrationFailed"] == 1 and counts["MigrationFailed"] == 30
    # Distinct messages of one reason: the first few as they are, the rest folded into one.
    assert objects["Waiting"] == MAX_DISTINCT + 1 and counts["Waiting"] == 20
    [folded] = [str(e.message) for e in items if "(combined from similar" in str(e.message)]
    assert folded.endswith("forced in 581s")  # the latest one
