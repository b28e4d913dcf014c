"""Release 1 of the demo shop."""

from workerfleet_demo.shop import build

app = build("1", "v1")
