"""The protocol's fixed points, shared by the runtime, the migrator and the operator. No
I/O and no psycopg here, so the operator's pure planner can import it."""

from __future__ import annotations

# The core migrations a worker needs before it can register a pool: core/0001 creates the
# pools table, core/0002 the lease columns registration writes. A fresh database gets them
# first (self mode applies them; the operator runs them as a Job in external mode).
CORE_PROTOCOL = "core/0002"
LEASES = "core/0002"  # from here on, pools carry their own heartbeat interval and threshold

LIVE_STATES = ("starting", "waiting-for-schema", "active", "draining")
TERMINAL_STATES = ("stopped", "dead", "evicted")
