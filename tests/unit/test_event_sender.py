"""The operator hands Events to a thread: in order, never blocking the reconcile, and a
bounded queue that drops rather than grows when the API server is away."""

from __future__ import annotations

import threading
from typing import Any

from workerfleet_operator.events import EventRecorder, EventSender


class SlowRecorder(EventRecorder):
    """Records what it was asked to post; blocks until `release` while `hold` is set."""

    def __init__(self) -> None:
        self.posted: list[str] = []
        self.release = threading.Event()
        self.hold = True

    def post(self, **event: Any) -> None:
        if self.hold:
            self.release.wait(10)
        self.posted.append(event["message"])


def event(message: str) -> dict[str, str]:
    return {"namespace": "ns", "name": "shop", "uid": "u", "type_": "Normal",
            "reason": "R", "message": message}  # fmt: skip


def test_events_are_posted_in_order_and_post_never_waits_for_the_server() -> None:
    recorder = SlowRecorder()
    sender = EventSender(recorder, max_queued=3)
    for i in range(5):  # the first is taken by the thread, three queue, one is dropped
        sender.post(**event(f"m{i}"))
    assert sender.dropped >= 1
    assert not sender.flush(0.1)  # the server is still "away"
    recorder.release.set()
    assert sender.flush(5)
    assert recorder.posted == sorted(recorder.posted)
    assert len(recorder.posted) + sender.dropped == 5
    recorder.hold = False
    sender.post(**event("after"))
    sender.close()
    assert recorder.posted[-1] == "after"
