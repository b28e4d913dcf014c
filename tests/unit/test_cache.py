"""The operator's read cache: pure bookkeeping, driven by a scripted list function."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from workerfleet_operator.builders import LABEL_COMPONENT, LABEL_FLEET
from workerfleet_operator.cache import ChildCache

NS, FLEET = "ns", "shop"


def pod(name: str, rv: int, component: str = "worker", fleet: str = FLEET) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name, "namespace": NS, "resourceVersion": str(rv),
            "labels": {LABEL_FLEET: fleet, LABEL_COMPONENT: component},
        }
    }  # fmt: skip


class Server:
    """What the API server would list: objects and the list's resourceVersion."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, Any]] = {}
        self.rv = 0
        self.lists = 0

    def list(self, kind: str, namespace: str, selector: str) -> dict[str, Any]:
        self.lists += 1
        items = list(self.pods.values()) if kind == "pods" else []
        return {"metadata": {"resourceVersion": str(self.rv)}, "items": items}


def names(cache: ChildCache) -> list[str]:
    return sorted(p["metadata"]["name"] for p in cache.objects("pods", NS, FLEET, "worker"))


def test_a_fleet_is_listed_once_then_served_from_events() -> None:
    server, now = Server(), [0.0]
    server.pods["a"], server.rv = pod("a", 5), 5
    cache = ChildCache(server.list, prime_every_s=600, clock=lambda: now[0])
    assert names(cache) == ["a"] and server.lists == 2  # pods and jobs, once
    cache.apply_event("pods", "ADDED", pod("b", 6))
    cache.apply_event("pods", "DELETED", pod("a", 7))
    assert names(cache) == ["b"] and server.lists == 2
    now[0] = 601.0  # a relisting watch misses deletions: list again now and then
    server.pods = {"c": pod("c", 9)}
    server.rv = 9
    assert names(cache) == ["c"] and server.lists == 4


def test_an_object_written_after_the_list_survives_the_list() -> None:
    server = Server()
    server.rv = 10
    cache = ChildCache(server.list, prime_every_s=600)
    cache.wrote("pods", NS, FLEET, pod("new", 11))  # created by us, list taken at rv 10
    cache.invalidate(NS, FLEET)
    assert names(cache) == ["new"]


def test_an_older_copy_never_replaces_a_newer_one() -> None:
    cache = ChildCache(Server().list)
    cache.apply_event("pods", "MODIFIED", pod("a", 8))
    stale = pod("a", 3)
    stale["metadata"]["labels"][LABEL_COMPONENT] = "migration"
    cache.apply_event("pods", "MODIFIED", stale)
    assert names(cache) == ["a"]


def test_deleting_marks_terminating_until_the_watch_says_gone() -> None:
    server = Server()
    server.pods["a"], server.rv = pod("a", 1), 1
    cache = ChildCache(server.list)
    names(cache)
    cache.deleting("pods", NS, FLEET, "a")
    [obj] = cache.objects("pods", NS, FLEET, "worker")
    assert obj["metadata"]["deletionTimestamp"]


def test_without_a_watch_every_read_lists() -> None:
    server = Server()
    cache = ChildCache(server.list, prime_every_s=0)
    names(cache)
    names(cache)
    assert server.lists == 4


events = st.lists(
    st.tuples(st.sampled_from(["ADDED", "MODIFIED", "DELETED"]), st.sampled_from("abc"),
              st.integers(1, 50)),
    max_size=30,
)  # fmt: skip


@given(events)
def test_the_cache_equals_the_newest_state_of_every_object(script: list[Any]) -> None:
    """Events in resourceVersion order (as a watch delivers them) leave exactly the objects
    whose last event was not a deletion."""
    cache = ChildCache(Server().list)
    names(cache)  # primed on an empty list
    last: dict[str, str] = {}
    for rv, (kind, name, _) in enumerate(script, start=1):
        cache.apply_event("pods", kind, pod(name, rv))
        last[name] = kind
    assert names(cache) == sorted(n for n, k in last.items() if k != "DELETED")
