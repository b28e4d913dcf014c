"""Peer job queues measured beside fleet-worker: Graphile Worker (npm), pgqueuer and
procrastinate (PyPI), installed into ~/.cache/workerfleet/peers/, never into the project.

    python -m bench.peers [--url URL] [--jobs N] [--single M] [--peers a,b] [--json PATH]

    from bench.peers import install_all, run_peer
    install_all()                    # {"graphile-worker": "0.18.0", ...}
    run_peer("pgqueuer", url, jobs=20_000, single=2_000)   # list[PeerResult]
"""

from __future__ import annotations

from bench.peers.harness import (
    MEASURES,
    CpuSampler,
    PeerResult,
    postgres_cpu_sampler,
    tree_cpu_seconds,
)
from bench.peers.install import install_all
from bench.peers.peers import PEERS, measure_peer

__all__ = [
    "MEASURES",
    "PEERS",
    "CpuSampler",
    "PeerResult",
    "install_all",
    "postgres_cpu_sampler",
    "run_all",
    "run_peer",
]


def run_peer(
    name: str,
    url: str,
    jobs: int = 20_000,
    single: int = 2_000,
    *,
    latency_jobs: int = 500,
    db_cpu: CpuSampler | None = None,
) -> list[PeerResult]:
    """Every measure of one peer against the server at `url` (a fresh database per
    measurement). `db_cpu`, when given, returns the server's cumulative CPU seconds and is
    read around each processing window (None: worker CPU only)."""
    if name not in PEERS:
        raise KeyError(f"unknown peer {name!r}; known: {', '.join(PEERS)}")
    peer = PEERS[name]()
    peer.install()
    return measure_peer(peer, url, jobs, single, latency_jobs=latency_jobs, db_cpu=db_cpu)


def run_all(
    url: str,
    pg_pid: int | None = None,
    jobs: int = 20_000,
    single: int = 2_000,
    latency_jobs: int = 500,
) -> list[PeerResult]:
    """Every peer, in PEERS order. `pg_pid` is the postmaster's pid when the caller knows it
    (its process tree's CPU is then reported per 10k jobs); None finds it from `url` when
    the server runs on this machine."""
    db_cpu: CpuSampler | None
    if pg_pid is not None:
        postmaster = pg_pid
        db_cpu = lambda: tree_cpu_seconds(postmaster)  # noqa: E731
    else:
        db_cpu = postgres_cpu_sampler(url)
    results: list[PeerResult] = []
    for name in PEERS:
        results += run_peer(name, url, jobs, single, latency_jobs=latency_jobs, db_cpu=db_cpu)
    return results
