"""The one-line reason a worker process ended, where its supervisor looks for it: Kubernetes
reads the container's termination-message file (`/dev/termination-log`) into the pod's
status, so `kubectl describe` and the operator can say why a pod crash-loops."""

from __future__ import annotations

import os

DEFAULT_PATH = "/dev/termination-log"
MAX_BYTES = 4096  # what the kubelet keeps of a termination message


def write_termination_message(text: str) -> None:
    """Best effort: outside Kubernetes the file usually does not exist, and nothing here may
    turn an exit into a crash. Never pass anything secret (URLs are never in these texts)."""
    path = os.environ.get("FLEET_TERMINATION_LOG")
    if path is None:
        # The kubelet creates the file; never create one in a host's /dev.
        if not os.path.isfile(DEFAULT_PATH):
            return
        path = DEFAULT_PATH
    data = text.strip().encode("utf-8", "backslashreplace")[:MAX_BYTES]
    try:
        with open(path, "wb") as f:
            f.write(data + b"\n")
    except OSError:
        pass
