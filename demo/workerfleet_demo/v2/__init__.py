"""Release 2 of the demo shop."""

from workerfleet_demo.shop import build

app = build("2", "v2")
