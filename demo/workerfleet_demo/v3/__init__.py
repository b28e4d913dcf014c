"""Release 3 of the demo shop."""

from workerfleet_demo.shop import build

app = build("3", "v3")
