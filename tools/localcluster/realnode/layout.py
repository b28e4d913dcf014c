"""Where one real node keeps everything it makes, by instance number, so a run that was
killed is found and cleaned by the next one, and two nodes (a test starting a second one
beside the session's) never touch each other's bridge, chain, cgroups or files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

BASE = Path("/var/lib/workerfleet-node")


@dataclass(frozen=True)
class Layout:
    index: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.index < 200:
            raise ValueError(f"node instance {self.index}: expected 0..199")

    @property
    def root(self) -> Path:
        return BASE / str(self.index)

    @property
    def lock(self) -> Path:
        return BASE / f".lock-{self.index}"

    @property
    def node_name(self) -> str:
        return f"realnode-{self.index}"

    @property
    def bridge(self) -> str:
        return f"wfnode{self.index}"

    @property
    def subnet(self) -> str:
        return f"10.213.{self.index}.0/24"

    @property
    def gateway(self) -> str:
        """This machine as the node's pods see it."""
        return f"10.213.{self.index}.1"

    @property
    def bridge_mac(self) -> str:
        """A fixed MAC for the bridge, from its address as the CNI bridge plugin derives one
        (0a:58 and the four octets). A Linux bridge whose MAC was never set takes the lowest
        MAC of its ports and changes it as pods come and go: every pod's ARP entry for the
        gateway then points at an address nobody answers, and their TCP to PostgreSQL stalls
        in retransmission for seconds, long enough to cost a worker its lease."""
        octets = [int(x) for x in self.gateway.split(".")]
        return ":".join(f"{b:02x}" for b in (0x0A, 0x58, *octets))

    @property
    def chain(self) -> str:
        return f"WORKERFLEET-NODE-{self.index}"

    @property
    def cgroup_root(self) -> str:
        return f"/workerfleet-node-{self.index}"


DEFAULT = Layout(0)
